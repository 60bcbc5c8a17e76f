"""Level indices <-> codebook indices: exact int64 mixed-radix packing, with index groups.

The codebook index of level indices ``k_i`` is ``sum_i k_i * B_i`` with ``B_i = prod_{j<i} L_j``
(little endian, as vector-quantize-pytorch and the official iFSQ code). With index groups the
``d`` dimensions are split into consecutive groups, each packed with its own basis.

Packing is exact for every codebook up to ``2**63 - 1`` codes: it multiplies and adds in float32
when every group has at most ``2**24`` codes (all partial sums are then exact integers), in
float64 up to ``2**53``, and in int64 beyond. Nothing is ever rounded through a float. It uses
elementwise products and sums, never a matmul: a matmul's float32 precision is a global setting
(TF32, bf16 and autocast modes round it) that packing cannot rely on.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils._python_dispatch import _disable_current_modes

from .contexts import cached, functorch_active, tracing

__all__ = ["IndexPlan", "INT64_MAX", "plan_from_groups"]

INT64_MAX = 2**63 - 1
# Index dtypes accepted by decoding (unsigned types wider than uint8 lack the integer ops decoding needs).
INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
FLOAT32_EXACT_INTEGERS = 2**24  # float32 holds every integer up to this
FLOAT64_EXACT_INTEGERS = 2**53


class IndexPlan:
    """How the ``d`` level indices of one codebook become ``G`` int64 indices.

    Args:
        levels: ``L_i`` per dimension, length ``d``.
        groups: sizes of consecutive dimension groups (sum ``d``); ``None`` is one group.
        check_int64: raise if a group's codebook does not fit in int64.
    """

    def __init__(self, levels: Sequence[int], groups: Sequence[int] | None = None, check_int64: bool = True):
        self.levels = tuple(levels)
        d = len(self.levels)
        if groups is None:
            groups = (d,)
        if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence) or not all(
            isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in groups
        ):
            raise ValueError(f"index_groups must be a list of positive integers, got {groups!r}")
        if sum(groups) != d:
            raise ValueError(f"index_groups must add up to the codebook dimension {d} (len(levels)), got {list(groups)} (sum {sum(groups)})")
        self.groups = tuple(groups)
        self.group_slices = []
        self.group_sizes = []
        basis = []
        start = 0
        for g in self.groups:
            group_levels = self.levels[start:start + g]
            b = 1
            for level in group_levels:
                basis.append(b)
                b *= level
            self.group_sizes.append(b)
            self.group_slices.append(slice(start, start + g))
            start += g
        self.basis = tuple(basis)
        self._group_of_dim = [gi for gi, g in enumerate(self.groups) for _ in range(g)]
        self.max_group_size = max(self.group_sizes)
        if check_int64 and self.max_group_size > INT64_MAX:
            raise ValueError(
                f"a codebook of {self.max_group_size} codes (levels {list(self.levels)}, index_groups "
                f"{list(self.groups)}) does not fit in int64 indices (at most 2**63 - 1); split it with "
                "index_groups=[...] or pass return_indices=False"
            )
        # The (d, G) matrix whose product with level indices gives the group indices.
        self._weights = torch.zeros(d, len(self.groups), dtype=torch.float64)
        for gi, sl in enumerate(self.group_slices):
            for i in range(sl.start, sl.stop):
                self._weights[i, gi] = float(self.basis[i])
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def pack_dtype(self) -> torch.dtype:
        """The narrowest dtype in which packing is exact: every partial sum an integer it holds."""
        if self.max_group_size <= FLOAT32_EXACT_INTEGERS:
            return torch.float32
        if self.max_group_size <= FLOAT64_EXACT_INTEGERS:
            return torch.float64
        return torch.int64

    def _tensor(self, what: str, device: torch.device, dtype: torch.dtype) -> Tensor:
        def make() -> Tensor:
            if what == "weights":
                value = self._weights
            else:
                value = torch.tensor(self.basis if what == "basis" else self.levels, dtype=torch.int64)
            return value.to(device=device, dtype=dtype)

        return cached(self._cache, (what, torch.device(device), dtype), make)

    def pack(self, level_indices: Tensor) -> Tensor:
        """``(..., d)`` level indices (integers, or floats holding exact integers) -> ``(..., G)`` int64."""
        groups = self.horner(level_indices.to(self.pack_dtype))
        return torch.stack(groups, dim=-1).to(torch.int64)

    def horner(self, values: Tensor) -> list[Tensor]:
        """Each group's ``sum_i values_i * B_i`` of ``values (..., d)``, as ``G`` tensors ``(...)`` in
        ``values``' dtype, by Horner's rule over the group's columns: ``v_0 + L_0 (v_1 + L_1 (v_2 + ...))``.
        Exact while every group's values stay within the dtype's integers (:attr:`pack_dtype`); the
        values may be negative (the fused path packs ``k - L // 2`` and adds the offset after)."""
        out = []
        for sl in self.group_slices:
            acc = values[..., sl.stop - 1]
            for i in range(sl.stop - 2, sl.start - 1, -1):
                acc = torch.add(values[..., i], acc, alpha=self.levels[i])
            out.append(acc)
        return out

    def unpack(self, indices: Tensor) -> Tensor:
        """``(..., G)`` int64 indices -> ``(..., d)`` int64 level indices."""
        # each dimension's group index, by a constant gather (static shapes: traceable with fake tensors)
        per_dim = indices if self.num_groups == 1 else indices[..., self._group_of_dim]
        if self.num_groups == 1:
            per_dim = per_dim.expand(*indices.shape[:-1], len(self.levels))
        basis = self._tensor("basis", indices.device, torch.int64)
        levels = self._tensor("levels", indices.device, torch.int64)
        return torch.div(per_dim, basis, rounding_mode="floor") % levels

    @staticmethod
    def check_dtype(indices: Tensor, name: str = "indices") -> None:
        """Raises ``TypeError`` unless ``indices`` is an integer tensor."""
        if not isinstance(indices, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(indices).__name__}")
        if indices.dtype not in INDEX_DTYPES:
            raise TypeError(f"{name} must be an integer tensor ({', '.join(map(str, INDEX_DTYPES))}), got {indices.dtype}")

    def check_range(self, indices: Tensor, name: str = "indices") -> None:
        """Raises ``ValueError`` unless every index of ``indices (..., G)`` is in its group's range."""
        if indices.numel() == 0 or tracing() or functorch_active():  # no values to check while tracing
            return
        low = int(indices.min())
        if low < 0:
            raise ValueError(f"{name} must be >= 0, got {low}")
        for gi in range(self.num_groups):
            high = int(indices[..., gi].max())
            if high >= self.group_sizes[gi]:
                raise ValueError(
                    f"{name} out of range: got {high}, but the codebook"
                    + (f" of group {gi}" if self.num_groups > 1 else "")
                    + f" has {self.group_sizes[gi]} codes (valid: 0 .. {self.group_sizes[gi] - 1})"
                )


@functools.lru_cache(maxsize=256)
def plan_from_groups(levels: tuple[int, ...], groups: tuple[int, ...]) -> IndexPlan:
    """The index plan of ``levels`` split into ``groups`` (cached; as the registered ops rebuild it)."""
    with _disable_current_modes(), torch.device("cpu"):
        return IndexPlan(levels, groups)

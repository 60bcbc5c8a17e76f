"""The three bin layouts (DESIGN §1): bounded value ``y = f(.)`` -> level index -> code.

A layout turns ``y`` in ``[-1, 1]`` into an integer level index ``k`` in ``[0, L)`` and maps
``k`` to its code in ``[-1, 1]``. All constants are float32 tensors computed with the same
operations as vector-quantize-pytorch (so that codes match it bit for bit), cast to the
compute dtype (float32, or float64 for float64 inputs) when used.

``"round"``      ``k = round(f(z + shift) * half_l - offset) + L // 2``, ``code = (k - L//2) / (L//2)``
``"symmetric"``  ``k = floor((L - 1) * (f(z) + 1) / 2 + 0.5)``,          ``code = k * (2 / (L-1)) - 1``
``"equal"``      ``k = min(floor((f(z) + 1) * L / 2), L - 1)``,          ``code = (2k + 1) / L - 1``

Level indices are carried as floats holding exact integers (cheaper than integer tensors on
the hot path); ``[0, L)`` is enforced with ``fmax/fmin``, which also sends NaN to level 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .activations import Activation

__all__ = ["LAYOUTS", "BinLayout", "check_levels"]

LAYOUTS = ("round", "symmetric", "equal")


def check_levels(levels: Sequence[int], name: str = "levels") -> tuple[int, ...]:
    """Validates a list of level counts and returns it as a tuple of ints."""
    if isinstance(levels, torch.Tensor):
        levels = levels.tolist()
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence):
        raise TypeError(f"{name} must be a list of integers >= 2, got {type(levels).__name__}")
    if len(levels) == 0:
        raise ValueError(f"{name} must be a non-empty list of integers >= 2, got {list(levels)}")
    out = []
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, int):
            raise TypeError(f"{name} must hold integers, got {level!r} ({type(level).__name__})")
        if level < 2:
            raise ValueError(f"every entry of {name} must be >= 2, got {list(levels)}")
        out.append(int(level))
    return tuple(out)


class BinLayout:
    """Bin geometry of one codebook of ``d = len(levels)`` dimensions.

    Args:
        levels: number of levels ``L_i`` per dimension.
        kind: ``"round"``, ``"symmetric"`` or ``"equal"``.
        activation: the bound ``f``.
        eps: widens the ``"round"`` layout's range by ``(1 + eps)``; ignored by the others.

    Attributes (per-dimension float32 tensors of shape ``(d,)``): ``scale`` and ``bias`` give
    the value before rounding, ``u = (y + pre_add) * scale + bias``; ``shift`` is added to
    ``z`` before ``f`` (non-zero only for even ``L`` in ``"round"``); ``slope`` is
    ``d code / d y`` for the straight-through gradient.
    """

    def __init__(self, levels: Sequence[int], kind: str, activation: Activation, eps: float):
        self.levels = check_levels(levels)
        if kind not in LAYOUTS:
            raise ValueError(f"bins must be one of {LAYOUTS}, got {kind!r}")
        if not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        self.kind, self.activation, self.eps = kind, activation, float(eps)
        L = torch.tensor(self.levels, dtype=torch.int32)
        self.num_levels = L
        zeros = torch.zeros(len(self.levels))
        if kind == "round":
            if 2 in self.levels:
                raise ValueError(
                    f'levels={list(self.levels)}: L = 2 is degenerate in the "round" layout (its codes would '
                    'be {-1, 0}); use bins="symmetric" (preserve_symmetry=True) or bins="equal", or L >= 3'
                )
            half_l = (L - 1) * (1 + self.eps) / 2
            offset = torch.where(L % 2 == 0, 0.5, 0.0)
            self.pre_add = 0.0
            self.scale, self.bias = half_l, -offset
            self.shift = activation.inverse(offset / half_l).to(torch.float32)
            self.half_width = L // 2
            self.slope = half_l / self.half_width
            # First and last index before clamping, at y = -1 and y = +1 (the value is monotone in y).
            ends = torch.round(torch.stack([-half_l, half_l]) - offset) + self.half_width
        elif kind == "symmetric":
            self.pre_add = 1.0
            self.scale, self.bias = (L - 1) / 2, torch.full_like(zeros, 0.5)
            self.shift = zeros
            self.code_step = 2.0 / (L - 1)
            self.slope = self.code_step * (L - 1) / 2
            ends = torch.floor(torch.stack([zeros, 2 * self.scale]) + self.bias)
        else:
            self.pre_add = 1.0
            self.scale, self.bias = L / 2, zeros
            self.shift = zeros
            self.slope = torch.ones_like(zeros)
            ends = None  # y = 1 lands on L itself: this layout always clamps its top end.
        self.has_shift = bool(self.shift.ne(0).any())
        # Whether k can leave [0, L) for |y| <= 1 (a large eps, a custom activation, or "equal").
        in_range = ends is not None and bool((ends[0] >= 0).all() and (ends[1] <= L - 1).all())
        self.needs_clamp = not in_range or activation.name is None
        self._cache: dict[tuple[torch.device, torch.dtype], dict[str, Tensor]] = {}

    def constants(self, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        """The per-dimension constants as ``(d,)`` tensors of ``dtype`` on ``device`` (cached)."""
        key = (torch.device(device), dtype)
        if key not in self._cache:
            names = {"scale": self.scale, "bias": self.bias, "shift": self.shift, "slope": self.slope,
                     "top": self.num_levels - 1, "levels": self.num_levels}
            if self.kind == "round":
                names["half_width"] = self.half_width
            if self.kind == "symmetric":
                names["code_step"] = self.code_step
            self._cache[key] = {k: v.to(device=device, dtype=dtype) for k, v in names.items()}
        return self._cache[key]

    # --- the reference semantics, one readable function each -------------------------------

    def bound(self, z: Tensor) -> Tensor:
        """``y = f(z + shift)``: ``(..., d) -> (..., d)``."""
        if self.has_shift:
            z = z + self.constants(z.device, z.dtype)["shift"]
        return self.activation(z)

    def level_index(self, y: Tensor) -> Tensor:
        """Bounded value -> level index ``k`` in ``[0, L)`` as exact-integer floats, ``(..., d)``."""
        c = self.constants(y.device, y.dtype)
        if self.kind == "round":
            k = torch.round(y * c["scale"] + c["bias"]) + c["half_width"]
        else:
            k = torch.floor((y + 1) * c["scale"] + c["bias"])
        return torch.fmin(torch.fmax(k, torch.zeros_like(k)), c["top"])

    def code(self, k: Tensor) -> Tensor:
        """Level index (exact-integer float) -> code in ``[-1, 1]``, ``(..., d)``."""
        c = self.constants(k.device, k.dtype)
        if self.kind == "round":
            return (k - c["half_width"]) / c["half_width"]
        if self.kind == "symmetric":
            return k * c["code_step"] - 1
        return (2 * k + 1) / c["levels"] - 1

    def code_to_level(self, codes: Tensor) -> Tensor:
        """Code -> level index of the nearest level, as int64, ``(..., d)``."""
        c = self.constants(codes.device, codes.dtype)
        if self.kind == "round":
            k = torch.round(codes * c["half_width"]) + c["half_width"]
        elif self.kind == "symmetric":
            k = torch.round((codes + 1) / c["code_step"])
        else:
            k = torch.round(((codes + 1) * c["levels"] - 1) / 2)
        return torch.clamp(k, min=torch.zeros_like(c["top"]), max=c["top"]).long()

    def __repr__(self) -> str:
        return f"BinLayout(levels={list(self.levels)}, kind={self.kind!r}, activation={self.activation!r}, eps={self.eps})"

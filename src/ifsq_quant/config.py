"""``FSQConfig``: every choice an FSQ module is built from, checked in one place."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .activations import Activation, get_activation
from .bins import LAYOUTS, check_levels
from .checks import integer, number
from .kernels import BACKENDS
from .spec import FSQSpec

__all__ = ["FSQConfig"]

ActivationArgument = str | Activation | Callable[[Tensor], Tensor]


@dataclasses.dataclass(frozen=True)
class FSQConfig:
    """The arguments of an FSQ module, validated and normalized when built.

    Fields are :class:`~ifsq_quant.FSQ`'s arguments of the same names (see its docstring), in
    their resolved form: ``activation`` an :class:`~ifsq_quant.activations.Activation`, ``bins``
    a layout name, ``keep_num_codebooks_dim`` a bool, tuples for sequences; ``shift``,
    ``grid_scale`` and ``grid_steps`` are the layout options of :class:`~ifsq_quant.bins.BinLayout`
    (the ``"round"`` layout's shift function, the ``"grid"`` layout's half width and steps); ``spec``
    is the :class:`~ifsq_quant.spec.FSQSpec` of the semantics reproduced (the package's own by default).
    Every check raises ``TypeError``/``ValueError`` naming the argument.
    """

    levels: Sequence[int]
    dim: int | None = None
    num_codebooks: int = 1
    keep_num_codebooks_dim: bool | None = None
    channel_first: bool = False
    projection_has_bias: bool = True
    return_indices: bool = True
    force_quantization_f32: bool = True
    allowed_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)
    noise_dropout: float = 0.0
    orthogonal_rotation: bool = False
    materialize_codebook: bool = True
    activation: ActivationArgument = "tanh"
    bins: str = "round"
    eps: float = 1e-3
    shift: str = "inverse"
    grid_scale: float = 1.0
    grid_steps: Sequence[float] | None = None
    index_groups: Sequence[int] | None = None
    track_usage: bool = False
    backend: str = "auto"
    spec: FSQSpec = FSQSpec()

    def __post_init__(self):
        def resolve(name: str, value) -> None:
            object.__setattr__(self, name, value)

        resolve("levels", check_levels(self.levels))
        resolve("num_codebooks", integer(self.num_codebooks, "num_codebooks"))
        effective = len(self.levels) * self.num_codebooks
        resolve("dim", effective if self.dim is None else integer(self.dim, "dim"))
        if self.keep_num_codebooks_dim is None:
            resolve("keep_num_codebooks_dim", self.num_codebooks > 1)
        if self.num_codebooks > 1 and not self.keep_num_codebooks_dim:
            raise ValueError("keep_num_codebooks_dim=False needs num_codebooks=1: several codebooks need their own index axis")
        allowed = (self.allowed_dtypes,) if isinstance(self.allowed_dtypes, torch.dtype) else self.allowed_dtypes
        if not isinstance(allowed, (tuple, list, set, frozenset)) or not all(isinstance(t, torch.dtype) for t in allowed):
            raise TypeError(f"allowed_dtypes must be a tuple of torch dtypes such as (torch.float32, torch.float64), got {allowed!r}")
        resolve("allowed_dtypes", tuple(allowed))
        resolve("noise_dropout", number(self.noise_dropout, "noise_dropout", 0.0, 1.0))
        resolve("activation", get_activation(self.activation))
        if self.bins not in LAYOUTS:
            raise ValueError(f"bins must be one of {LAYOUTS}, got {self.bins!r}")
        if self.bins == "round" and 2 in self.levels:
            raise ValueError(
                f'levels={list(self.levels)}: L = 2 is degenerate in the "round" layout (its codes would '
                'be {-1, 0}); use bins="symmetric" (preserve_symmetry=True) or bins="equal", or L >= 3'
            )
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)):
            raise TypeError(f"eps must be a number >= 0, got {self.eps!r} ({type(self.eps).__name__})")
        resolve("eps", float(self.eps))  # its range is checked by the layout
        if self.index_groups is not None:
            if isinstance(self.index_groups, (str, bytes)) or not hasattr(self.index_groups, "__iter__"):
                raise TypeError(f"index_groups must be a list of positive integers, got {self.index_groups!r}")
            resolve("index_groups", tuple(integer(g, "index_groups") for g in self.index_groups))
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    @property
    def effective_codebook_dim(self) -> int:
        return len(self.levels) * self.num_codebooks

"""The three bin layouts (`docs/design.md`, section 2): bounded value ``y = f(.)`` -> level index -> code.

A layout turns ``y`` in ``[-1, 1]`` into an integer level index ``k`` in ``[0, L)`` and maps
``k`` to its code in ``[-1, 1]``. All constants are float32 tensors computed with the same
operations as vector-quantize-pytorch (so that codes match it bit for bit), cast to the
compute dtype (float32, or float64 for float64 inputs) when used.

``"round"``      ``k = round(f(z + shift) * half_l - offset) + L // 2``, ``code = (k - L//2) / (L//2)``
``"symmetric"``  ``k = floor((L - 1) * (f(z) + 1) / 2 + 0.5)``,          ``code = k * (2 / (L-1)) - 1``
``"equal"``      ``k = min(floor((f(z) + 1) * L / 2), L - 1)``,          ``code = (2k + 1) / L - 1``
``"grid"``       ``k = round((f(z) + s) / step)``,                        ``code = k * step - s``

``"grid"`` is the ``L``-point grid over ``[-s, s]`` with both ends, even ``L`` too, rounded half to
even (stable-audio-tools' ``DitheredFSQ``); ``step`` is ``2 s / (L - 1)`` as that code computes it
(``reciprocal(L - 1) * 2s`` in float32) or as given. ``"round"`` takes a negative ``eps`` (the range
shrinks by ``1 + eps``, as NeMo's ``(1 - eps)``) and ``shift="tan"``, the centring shift of even
``L`` as Google's reference code computes it (``tan(offset / half_l)``, not ``f^-1``).
``constants_dtype=torch.float64`` computes the float64 constants in float64 instead of casting the
float32 ones (code whose constants follow a float64 default dtype, NeMo's).

Level indices are carried as floats holding exact integers (cheaper than integer tensors on
the hot path); ``[0, L)`` is enforced with a clamp, and NaN goes to level 0.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor
from torch.utils._python_dispatch import _disable_current_modes

from .activations import KERNEL_NAMES, Activation, kernel_activation
from .contexts import cached
from .indexing import FLOAT32_EXACT_INTEGERS, FLOAT64_EXACT_INTEGERS

__all__ = ["LAYOUTS", "SHIFTS", "ROUND_KERNEL", "SYMMETRIC_KERNEL", "EQUAL_KERNEL", "GRID_KERNEL", "BinLayout", "check_levels",
           "layout_from_key", "compute_dtype"]

# Kernel ids of the layouts: every fused kernel selects a layout's code by this number.
ROUND_KERNEL, SYMMETRIC_KERNEL, EQUAL_KERNEL, GRID_KERNEL = range(4)
LAYOUT_KERNELS = {"round": ROUND_KERNEL, "symmetric": SYMMETRIC_KERNEL, "equal": EQUAL_KERNEL, "grid": GRID_KERNEL}
LAYOUTS = tuple(LAYOUT_KERNELS)
SHIFTS = ("inverse", "tan")  # the "round" layout's centring shift of even L: f^-1(offset / half_l), or tan(.)


def check_levels(levels: Sequence[int], name: str = "levels") -> tuple[int, ...]:
    """Validates a list of level counts and returns it as a tuple of ints."""
    if hasattr(levels, "tolist") and not isinstance(levels, (list, tuple)):  # a tensor or a numpy array
        levels = levels.tolist()
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence):
        raise TypeError(f"{name} must be a list of integers >= 2, got {type(levels).__name__}")
    if len(levels) == 0:
        raise ValueError(f"{name} must be a non-empty list of integers >= 2, got {list(levels)}")
    out = []
    for level in levels:
        if isinstance(level, bool) or not hasattr(level, "__index__"):  # int, numpy integers
            raise TypeError(f"{name} must hold integers, got {level!r} ({type(level).__name__})")
        level = operator.index(level)
        if level < 2:
            raise ValueError(f"every entry of {name} must be >= 2, got {list(levels)}")
        out.append(int(level))
    return tuple(out)


def compute_dtype(dtype: torch.dtype, layout: BinLayout | None = None) -> torch.dtype:
    """The dtype quantization computes in for ``dtype`` values: float64 stays, everything else
    float32, except float64 for a ``layout`` with levels float32 cannot hold (``L > 2**24``)."""
    return torch.float64 if dtype == torch.float64 or (layout is not None and layout.needs_float64) else torch.float32


class BinLayout:
    """Bin geometry of one codebook of ``d = len(levels)`` dimensions.

    Args:
        levels: number of levels ``L_i`` per dimension.
        kind: ``"round"``, ``"symmetric"``, ``"equal"`` or ``"grid"``.
        activation: the bound ``f``.
        eps: scales the ``"round"`` layout's range by ``(1 + eps)``, ``eps > -1`` (negative shrinks it);
            ignored by the others.
        shift: the ``"round"`` layout's shift of even levels, ``"inverse"`` (``f^-1``) or ``"tan"``.
        grid_scale: ``s`` of the ``"grid"`` layout, the grid's half width.
        grid_steps: the ``"grid"`` layout's step per dimension (default ``reciprocal(L - 1) * 2s`` in float32).
        constants_dtype: ``torch.float32`` (the constants are computed in float32 and cast to the compute
            dtype) or ``torch.float64`` (the float64 constants are computed in float64, for code whose
            constants follow a float64 default dtype). Not part of :attr:`key`: such a layout runs on the
            reference kernel.

    Attributes (per-dimension float32 tensors of shape ``(d,)``): ``scale`` and ``bias`` give
    the value before rounding, ``u = (y + pre_add) * scale + bias``; ``shift`` is added to
    ``z`` before ``f`` (non-zero only for even ``L`` in ``"round"``); ``slope`` is
    ``d code / d y`` for the straight-through gradient.
    """

    # The float32 constants (``_geometry``'s entries), set as attributes in ``__init__``.
    scale: Tensor
    bias: Tensor
    shift: Tensor
    slope: Tensor
    top: Tensor
    half_width: Tensor  # "round" only
    code_step: Tensor  # "symmetric" and "grid" only

    def __init__(self, levels: Sequence[int], kind: str, activation: Activation, eps: float, shift: str = "inverse",
                 grid_scale: float = 1.0, grid_steps: Sequence[float] | None = None, constants_dtype: torch.dtype = torch.float32):
        self.levels = check_levels(levels)
        if kind not in LAYOUTS:
            raise ValueError(f"bins must be one of {LAYOUTS}, got {kind!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > -1 or not math.isfinite(float(eps)):
            raise ValueError(f"eps must be a finite number > -1 (>= 0 widens the range, < 0 shrinks it), got {eps!r}")
        if shift not in SHIFTS:
            raise ValueError(f"shift must be one of {SHIFTS}, got {shift!r}")
        if isinstance(grid_scale, bool) or not isinstance(grid_scale, (int, float)) or not (0 < grid_scale < math.inf):
            raise ValueError(f"grid_scale must be a positive finite number, got {grid_scale!r}")
        if grid_steps is not None:
            grid_steps = tuple(float(step) for step in grid_steps)
            if len(grid_steps) != len(self.levels) or not all(0 < step < math.inf for step in grid_steps):
                raise ValueError(f"grid_steps must be {len(self.levels)} positive finite numbers (one per level count), got {grid_steps}")
        if constants_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"constants_dtype must be torch.float32 or torch.float64, got {constants_dtype!r}")
        self.shift_kind, self.grid_scale, self.grid_steps = shift, float(grid_scale), grid_steps
        self.constants_dtype = constants_dtype
        if max(self.levels) > FLOAT64_EXACT_INTEGERS:
            raise ValueError(f"levels must be at most 2**53 = {FLOAT64_EXACT_INTEGERS} (beyond, even float64 has no integer "
                             f"resolution), got {max(self.levels)}")
        if kind == "round" and (max(self.levels) - 1) * (1 + float(eps)) / 2 >= FLOAT64_EXACT_INTEGERS:
            raise ValueError(f"eps={eps!r} with levels up to {max(self.levels)} puts the values before rounding beyond "
                             "2**53, where even float64 has no integer resolution; use a smaller eps")
        self.kind, self.activation, self.eps = kind, activation, float(eps)
        self.kernel_id = LAYOUT_KERNELS[kind]
        # vector-quantize-pytorch computes this layout op for op in a bf16/fp16 input's own dtype
        # when it does not upcast it (kernels.quantize); the others promote to float32 first.
        # (The "grid" layout's constants come as Python floats: tables for float32 and float64 from them.)
        self.quantizes_half_in_input_dtype = kind == "symmetric" and max(self.levels) <= FLOAT32_EXACT_INTEGERS
        self.num_levels = torch.tensor(self.levels, dtype=torch.int64)
        # float32 constants, computed with vector-quantize-pytorch's operations (so codes match it
        # bit for bit, in float64 too); float64 ones only where float32 cannot hold every level.
        geometry = self._geometry(torch.float32)
        self._tables = {torch.float32: geometry}
        # float32 cannot hold every level: the quantizer computes in float64 (``compute_dtype``)
        self.needs_float64 = max(self.levels) > FLOAT32_EXACT_INTEGERS
        if self.needs_float64 or kind == "grid" or constants_dtype == torch.float64:
            self._tables[torch.float64] = self._geometry(torch.float64)
        for name, value in geometry.items():
            setattr(self, name, value)
        self.pre_add = 0.0 if kind in ("round", "grid") else 1.0
        self.has_shift = bool(self.shift.ne(0).any())
        # Whether k can leave [0, L) for |y| <= 1 (a large eps, a custom activation, or "equal").
        L = self.num_levels
        if kind == "round":  # first and last index before clamping, at y = -1 and y = +1
            ends = torch.round(torch.stack([-self.scale, self.scale]) + self.bias) + self.half_width
        elif kind == "symmetric":
            ends = torch.floor(torch.stack([torch.zeros_like(self.scale), 2 * self.scale]) + self.bias)
        else:
            ends = None  # "equal": y = 1 lands on L itself; "grid": any s < 1 or an unbounded f leaves the grid
        in_range = ends is not None and bool((ends[0] >= 0).all() and (ends[1] <= L - 1).all())
        self.needs_clamp = not in_range or activation.kernel_id is None
        self._cache: dict[tuple[torch.device, torch.dtype], dict[str, Tensor]] = {}

    def _geometry(self, dtype: torch.dtype) -> dict[str, Tensor]:
        """``scale``, ``bias``, ``shift``, ``slope``, ``top`` (and ``half_width`` / ``code_step``) as ``(d,)``
        tensors of ``dtype``, computed in ``dtype``."""
        L = self.num_levels.to(dtype)
        zeros = torch.zeros_like(L)
        # L - 1 rounded down where ``dtype`` cannot hold it, so that the clamp never makes an index >= L
        # (computed here, once, so that no traced or exported graph holds this arithmetic)
        top = (self.num_levels - 1).to(dtype)
        top = torch.where(top.double() > (self.num_levels - 1).double(), torch.nextafter(top, zeros), top)
        if self.kind == "round":
            half_l = (L - 1) * (1 + self.eps) / 2
            offset = torch.where(self.num_levels % 2 == 0, 0.5, 0.0).to(dtype)
            half_width = (self.num_levels // 2).to(dtype)
            shift = torch.tan(offset / half_l) if self.shift_kind == "tan" else self.activation.inverse(offset / half_l)
            return {"scale": half_l, "bias": -offset, "shift": shift.to(dtype),
                    "half_width": half_width, "slope": half_l / half_width, "top": top}
        if self.kind == "grid":  # u = (y + s) / step, code = k * step - s; "scale" is the divisor
            with torch.device("cpu"):
                steps = (torch.tensor(self.grid_steps, dtype=dtype) if self.grid_steps is not None else
                         ((self.num_levels - 1).to(torch.float32).reciprocal() * (2 * self.grid_scale)).to(dtype))
            return {"scale": steps, "bias": torch.full_like(zeros, self.grid_scale), "shift": zeros, "code_step": steps,
                    "slope": torch.ones_like(zeros), "top": top}
        if self.kind == "symmetric":
            code_step = 2.0 / (L - 1)
            return {"scale": (L - 1) / 2, "bias": torch.full_like(zeros, 0.5), "shift": zeros,
                    "code_step": code_step, "slope": code_step * (L - 1) / 2, "top": top}
        return {"scale": L / 2, "bias": zeros, "shift": zeros, "slope": torch.ones_like(zeros), "top": top}

    @property
    def fused(self) -> bool:
        """Whether the fused kernels implement this layout: every bound with a kernel id, constants computed in
        float32 (the registered ops rebuild the layout from :attr:`key`)."""
        return self.activation.kernel_id is not None and self.constants_dtype == torch.float32

    @property
    def key(self) -> tuple:
        """The plain values that define a fused layout, as the registered ops take them: ``(levels, kind,
        activation, activation_scale, eps, shift, grid_scale, grid_steps)`` (see :func:`layout_from_key`)."""
        kernel_id = cast(int, self.activation.kernel_id)  # a fused layout's bound has one
        return (list(self.levels), self.kind, KERNEL_NAMES[kernel_id], self.activation.kernel_scale, self.eps,
                self.shift_kind, self.grid_scale, list(self.grid_steps or []))

    def constants(self, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        """The per-dimension constants as ``(d,)`` tensors of ``dtype`` on ``device`` (cached)."""
        table = self._tables.get(dtype, self._tables[torch.float32])
        names = dict(table, levels=self.num_levels)
        return cached(self._cache, (torch.device(device), dtype),
                      lambda: {k: v.to(device=device, dtype=dtype) for k, v in names.items()})

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
        elif self.kind == "grid":
            k = torch.round((y + c["bias"]) / c["scale"])
        else:
            k = torch.floor((y + 1) * c["scale"] + c["bias"])
        # clamp + where rather than fmax/fmin (same result, NaN -> 0): exportable to ONNX.
        return torch.where(torch.isnan(k), 0.0, torch.clamp(k, torch.zeros_like(c["top"]), c["top"]))

    def code(self, k: Tensor) -> Tensor:
        """Level index (exact-integer float) -> code in ``[-1, 1]`` (``[-s, s]`` for ``"grid"``), ``(..., d)``."""
        c = self.constants(k.device, k.dtype)
        if self.kind == "round":
            return (k - c["half_width"]) / c["half_width"]
        if self.kind == "symmetric":
            return k * c["code_step"] - 1
        if self.kind == "grid":
            return k * c["code_step"] - c["bias"]
        return (2 * k + 1) / c["levels"] - 1

    def level_value(self, codes: Tensor) -> Tensor:
        """Code -> level index as an unrounded float (the inverse of :meth:`code`), ``(..., d)``;
        vector-quantize-pytorch's ``_scale_and_shift``."""
        c = self.constants(codes.device, codes.dtype)
        if self.kind == "round":
            return codes * c["half_width"] + c["half_width"]
        if self.kind == "symmetric":
            return (codes + 1.0) / c["code_step"]
        if self.kind == "grid":
            return (codes + c["bias"]) / c["code_step"]
        return ((codes + 1.0) * c["levels"] - 1.0) / 2

    def code_to_level(self, codes: Tensor) -> Tensor:
        """Code -> level index of the nearest level, as int64, ``(..., d)``."""
        c = self.constants(codes.device, codes.dtype)
        if self.kind == "round":
            k = torch.round(codes * c["half_width"]) + c["half_width"]
        elif self.kind == "symmetric":
            k = torch.round((codes + 1) / c["code_step"])
        elif self.kind == "grid":
            k = torch.round((codes + c["bias"]) / c["code_step"])
        else:
            k = torch.round(((codes + 1) * c["levels"] - 1) / 2)
        return torch.clamp(k, min=torch.zeros_like(c["top"]), max=c["top"]).long()

    def __repr__(self) -> str:
        return f"BinLayout(levels={list(self.levels)}, kind={self.kind!r}, activation={self.activation!r}, eps={self.eps})"


@functools.lru_cache(maxsize=256)
def _layout_from_key(levels: tuple[int, ...], kind: str, activation: str, activation_scale: float, eps: float, shift: str,
                     grid_scale: float, grid_steps: tuple[float, ...]) -> BinLayout:
    # Host-side tables: built from real CPU tensors even while a registered op's body is traced.
    with _disable_current_modes(), torch.device("cpu"):
        return BinLayout(levels, kind, kernel_activation(activation, activation_scale), eps, shift, grid_scale, grid_steps or None)


def layout_from_key(levels, kind: str, activation: str, activation_scale: float, eps: float, shift: str = "inverse",
                    grid_scale: float = 1.0, grid_steps=()) -> BinLayout:
    """The fused layout of :attr:`BinLayout.key`'s values (cached; arguments checked as a user's)."""
    return _layout_from_key(check_levels(levels), kind, activation, float(activation_scale), float(eps), shift,
                            float(grid_scale), tuple(float(step) for step in grid_steps))

"""Fused PyTorch path: the default on CPU (and on CUDA without Triton).

Same results as :mod:`.reference`, computed with in-place operations on blocks of rows that
stay in cache, so that the input is read once and codes, indices and (when a gradient is
needed) the straight-through derivative are each written once. The backward is one multiply.
The block loop and its NaN test are not traceable, so under ``torch.compile`` the reference
path runs instead (Inductor fuses it by itself).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..bins import BinLayout
from ..indexing import IndexPlan
from . import reference

__all__ = ["quantize", "supports"]

FUSED_ACTIVATIONS = ("tanh", "sigmoid", "erf", "clamp")
BLOCK_ELEMENTS = 1 << 16  # elements per block: 256 KiB of float32, several live at once in L2


def supports(layout: BinLayout) -> bool:
    return layout.activation.name in FUSED_ACTIVATIONS


def _bound_into(name: str, x: Tensor, y: Tensor, deriv: Tensor | None, slope: Tensor) -> None:
    """``y = f(x)`` (``x`` may be ``y``); ``deriv = slope * f'(x)`` when given. Same operations
    as :mod:`..activations`, so that the values match the reference bit for bit."""
    if name == "erf" and deriv is not None:
        torch.mul(x, x, out=deriv)
        deriv.mul_(-0.5).exp_().mul_(slope * math.sqrt(2 / math.pi))
    if name == "clamp" and deriv is not None:
        torch.abs(x, out=deriv)
        deriv.le_(1).mul_(slope)
    if name == "tanh":
        torch.tanh(x, out=y)
    elif name == "sigmoid":
        torch.mul(x, 1.6, out=y)
        y.sigmoid_().mul_(2).sub_(1)
    elif name == "erf":
        torch.mul(x, math.sqrt(0.5), out=y)
        y.erf_()
    else:
        torch.clamp(x, -1.0, 1.0, out=y)
    if name in ("tanh", "sigmoid") and deriv is not None:
        # tanh' = 1 - y^2; (2 sigmoid(1.6 z) - 1)' = 0.8 (1 - y^2), folded into the slope.
        torch.mul(y, y, out=deriv)
        deriv.sub_(1).mul_(-slope if name == "tanh" else -0.8 * slope)


class _Block:
    """Constants of one call, in the compute dtype on the input's device."""

    def __init__(self, layout: BinLayout, plan: IndexPlan | None, z: Tensor):
        c = layout.constants(z.device, z.dtype)
        self.layout, self.c = layout, c
        self.has_bias = bool(c["bias"].ne(0).any())
        self.lowest = -c["half_width"] if layout.kind == "round" else torch.zeros_like(c["top"])
        self.highest = c["top"] - c["half_width"] if layout.kind == "round" else c["top"]
        self.plan = plan
        if plan is not None:
            self.pack_dtype = plan.pack_dtype(z.device)
            if self.pack_dtype != torch.int64:
                self.weights = plan._tensor("weights", z.device, self.pack_dtype)
                # "round" carries r = k - L//2; fold the L//2 back in as one constant row.
                self.pack_offset = (c["half_width"].to(self.pack_dtype) @ self.weights
                                    if layout.kind == "round" else None)

    def levels(self, y: Tensor) -> None:
        """Bounded values -> level values in place (``r = k - L//2`` for "round", else ``k``)."""
        c, kind = self.c, self.layout.kind
        if kind == "round":
            y.mul_(c["scale"])
            if self.has_bias:
                y.add_(c["bias"])
            y.round_()
        else:
            y.add_(1).mul_(c["scale"])
            if kind == "symmetric":
                y.add_(0.5)
            y.floor_()
        if self.layout.needs_clamp or bool(y.isnan().any()):
            torch.fmax(y, self.lowest, out=y)  # also sends NaN to level 0, as the reference
        if self.layout.needs_clamp or kind == "equal":
            torch.fmin(y, self.highest, out=y)

    def codes(self, r: Tensor, out: Tensor) -> None:
        c, kind = self.c, self.layout.kind
        if kind == "round":
            torch.div(r, c["half_width"], out=out)
        elif kind == "symmetric":
            torch.mul(r, c["code_step"], out=out)
            out.sub_(1)
        else:
            torch.mul(r, 2, out=out)
            out.add_(1).div_(c["levels"]).sub_(1)

    def level_indices(self, r: Tensor, out: Tensor) -> None:
        if self.layout.kind == "round":
            torch.add(r, self.c["half_width"], out=out)
        else:
            out.copy_(r)

    def pack(self, r: Tensor, out: Tensor) -> None:
        if self.pack_dtype == torch.int64:
            k = r.to(torch.int64)
            if self.layout.kind == "round":
                k += self.c["half_width"].to(torch.int64)
            out.copy_(self.plan.pack(k))
            return
        packed = r.to(self.pack_dtype) @ self.weights
        if self.pack_offset is not None:
            packed += self.pack_offset
        out.copy_(packed)


def _forward(z: Tensor, layout: BinLayout, plan: IndexPlan | None, need_levels: bool, need_grad: bool):
    m, d = z.shape
    block = _Block(layout, plan, z)
    codes = torch.empty_like(z)
    indices = torch.empty(m, plan.num_groups, dtype=torch.int64, device=z.device) if plan is not None else None
    levels = torch.empty_like(z) if need_levels else None
    deriv = torch.empty_like(z) if need_grad else None
    rows = max(1, BLOCK_ELEMENTS // d)
    scratch = torch.empty(min(rows, m), d, dtype=z.dtype, device=z.device)
    name, slope = layout.activation.name, block.c["slope"]
    for start in range(0, m, rows):
        sl = slice(start, min(start + rows, m))
        x = z[sl]
        y = scratch[: x.shape[0]]
        if layout.has_shift:
            torch.add(x, block.c["shift"], out=y)
            x = y
        _bound_into(name, x, y, deriv[sl] if deriv is not None else None, slope)
        block.levels(y)
        block.codes(y, codes[sl])
        if levels is not None:
            block.level_indices(y, levels[sl])
        if indices is not None:
            block.pack(y, indices[sl])
    return codes, indices, levels, deriv


class _FusedQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, layout: BinLayout, plan: IndexPlan | None, need_levels: bool):
        codes, indices, levels, deriv = _forward(z, layout, plan, need_levels, ctx.needs_input_grad[0])
        ctx.save_for_backward(deriv)
        for t in (indices, levels):
            if t is not None:
                ctx.mark_non_differentiable(t)
        return codes, indices, levels

    @staticmethod
    def backward(ctx, grad_codes: Tensor, *_):
        (deriv,) = ctx.saved_tensors
        return grad_codes * deriv, None, None, None


def quantize(z: Tensor, layout: BinLayout, plan: IndexPlan | None, need_levels: bool = False):
    """``z (M, d)`` float32/float64 -> ``(codes (M, d), indices (M, G) | None, level indices | None)``."""
    if torch.compiler.is_compiling():
        codes, level_indices = reference.quantize(z, layout)
        return codes, plan.pack(level_indices) if plan is not None else None, level_indices if need_levels else None
    return _FusedQuantize.apply(z.contiguous(), layout, plan, need_levels)

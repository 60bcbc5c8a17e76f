"""The fused kernels as one registered PyTorch operator: ``torch.ops.ifsq_quant.quantize``.

Registering the kernel (``torch.library.custom_op``) makes it one opaque node with a fake
implementation and an autograd formula, so that ``torch.compile`` (no graph break; the fused
kernel runs inside the compiled graph), ``torch.export``, ``FakeTensorMode`` and
``inference_mode`` all see the same op, whichever implementation it is handed (``impl``): the
fused CPU path (``"torch"``), or the Triton interpreter's kernels (``"triton"``). The compiled
Triton kernels (CUDA) have their own, traceable op (:mod:`.triton_ops`); which one runs is decided
by :func:`ifsq_quant.kernels.implementation` alone.

The op takes only tensors and plain values, checked like any user input; the layout and the index
plan are rebuilt from them (and cached). Outputs that were not asked for are empty tensors.

Gradient. The forward of the fused CPU path writes ``deriv = slope * f'(z + shift)`` (0 at NaN
inputs), and the backward is ``grad * deriv``. When the backward itself is differentiated
(``create_graph=True``, double backward), the same derivative is computed from ``z`` with
differentiable PyTorch operations instead, so second derivatives include the ``f''`` term. The
Triton path does not save the derivative; it recomputes it from ``z`` with its backward kernel.
At a NaN input every path gives a zero gradient.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.utils._python_dispatch import _disable_current_modes

from ..activations import get_activation
from ..bins import LAYOUTS, BinLayout, check_levels
from ..contexts import tracing
from ..indexing import IndexPlan
from . import torch_fused

__all__ = ["quantize", "straight_through_grad", "OP_IMPLEMENTATIONS"]

OP_IMPLEMENTATIONS = ("torch", "triton")  # what the op runs: the fused CPU path, the interpreted Triton kernels


@functools.lru_cache(maxsize=256)
def _layout(levels: tuple[int, ...], kind: str, activation: str, eps: float) -> BinLayout:
    # Host-side tables: built from real CPU tensors even when the op's body is being traced.
    with _disable_current_modes():
        return BinLayout(levels, kind, get_activation(activation), eps)


@functools.lru_cache(maxsize=256)
def _plan(levels: tuple[int, ...], groups: tuple[int, ...]) -> IndexPlan:
    with _disable_current_modes():
        return IndexPlan(levels, groups)


def op_arguments(layout: BinLayout, plan: IndexPlan | None) -> tuple:
    """``layout`` and ``plan`` as the ops' plain arguments: ``levels, kind, activation, eps, groups, pack``
    (the inverse of :func:`_layout` and :func:`_plan`)."""
    groups = list(plan.groups) if plan is not None else [len(layout.levels)]
    return list(layout.levels), layout.kind, layout.activation.name, layout.eps, groups, plan is not None


def _empty(z: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    return z.new_empty((0,), dtype=dtype or z.dtype)


def _check_op_arguments(z: Tensor, levels, kind: str, activation: str, eps, groups, impl: str) -> None:
    """The op's arguments, checked as a user's: each error names the argument."""
    if not isinstance(z, Tensor) or z.ndim != 2 or not z.dtype.is_floating_point:
        raise ValueError(f"z must be a floating (M, d) tensor, got {getattr(z, 'dtype', type(z).__name__)} of shape "
                         f"{tuple(getattr(z, 'shape', ()))}")
    if z.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"z must be float32 or float64 (the compute dtypes), got {z.dtype}")
    check_levels(levels)
    if len(levels) != z.shape[1]:
        raise ValueError(f"levels has {len(levels)} entries but z has {z.shape[1]} columns (one per level count)")
    if kind not in LAYOUTS:
        raise ValueError(f"kind must be one of {LAYOUTS}, got {kind!r}")
    if get_activation(activation).kernel_id is None:
        raise ValueError(f"activation must name a bound with a fused kernel, got {activation!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    if not isinstance(groups, (list, tuple)) or sum(groups) != len(levels):
        raise ValueError(f"groups must add up to len(levels) = {len(levels)}, got {groups!r}")
    if impl not in OP_IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {OP_IMPLEMENTATIONS}, got {impl!r}")


@torch.library.custom_op("ifsq_quant::quantize", mutates_args=())
def _quantize_op(z: Tensor, levels: list[int], kind: str, activation: str, eps: float, groups: list[int],
                 pack: bool, need_levels: bool, need_deriv: bool, impl: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``z (M, d)`` -> ``codes (M, d)``, ``indices (M, G)`` int64, ``level indices (M, d)``,
    ``deriv (M, d)`` (each of the last three empty unless asked for)."""
    _check_op_arguments(z, levels, kind, activation, eps, groups, impl)
    layout = _layout(tuple(levels), kind, activation, eps)
    plan = _plan(tuple(levels), tuple(groups)) if pack else None
    if impl == "triton":
        from . import triton_kernels

        codes, indices, level_indices = triton_kernels.forward(z, layout, plan, need_levels)
        deriv = None
    else:
        codes, indices, level_indices, deriv = torch_fused.forward(z, layout, plan, need_levels, need_deriv)
    return (codes, _empty(z, torch.int64) if indices is None else indices,
            _empty(z) if level_indices is None else level_indices, _empty(z) if deriv is None else deriv)


@_quantize_op.register_fake
def _(z, levels, kind, activation, eps, groups, pack, need_levels, need_deriv, impl):
    _check_op_arguments(z, levels, kind, activation, eps, groups, impl)
    m, d = z.shape
    indices = z.new_empty((m, len(groups)), dtype=torch.int64) if pack else _empty(z, torch.int64)
    return (torch.empty_like(z), indices, torch.empty_like(z) if need_levels else _empty(z),
            torch.empty_like(z) if need_deriv else _empty(z))


def straight_through_grad(grad: Tensor, z: Tensor, layout: BinLayout) -> Tensor:
    """``grad * slope * f'(z + shift)`` (zero at NaN inputs) in differentiable PyTorch operations."""
    c = layout.constants(z.device, z.dtype)
    nan = torch.isnan(z)
    x = torch.where(nan, 0.0, z)  # the derivative at 0, not at NaN: its own derivative stays finite too
    x = x + c["shift"] if layout.has_shift else x
    return torch.where(nan, 0.0, grad * (layout.activation.derivative(x) * c["slope"]))


def _setup_context(ctx, inputs, output):
    z, levels, kind, activation, eps, *_rest, impl = inputs
    ctx.layout_key, ctx.impl = (tuple(levels), kind, activation, eps), impl
    ctx.save_for_backward(z, output[3])


def _backward(ctx, grad_codes, *_unused):
    z, deriv = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a gradient that can itself be differentiated
        grad = straight_through_grad(grad_codes, z, _layout(*ctx.layout_key))
    elif deriv.shape == z.shape:
        grad = grad_codes * deriv
    elif ctx.impl == "triton" and not tracing():
        from . import triton_kernels

        grad = triton_kernels.backward(grad_codes, z, _layout(*ctx.layout_key))
    else:
        grad = straight_through_grad(grad_codes, z, _layout(*ctx.layout_key))
    return (grad,) + (None,) * 9


_quantize_op.register_autograd(_backward, setup_context=_setup_context)


def quantize(z: Tensor, layout: BinLayout, plan: IndexPlan | None, impl: str, need_levels: bool = False):
    """``z (M, d)`` float32/float64 -> ``(codes (M, d), indices (M, G) | None, level indices | None)``
    through the registered op; ``impl`` is ``"torch"`` (fused PyTorch) or ``"triton_interpreted"``
    (the Triton kernels under the interpreter), as :func:`ifsq_quant.kernels.implementation` chose."""
    op_impl = "triton" if impl == "triton_interpreted" else impl
    need_deriv = op_impl == "torch" and z.requires_grad and torch.is_grad_enabled()
    codes, indices, level_indices, _ = _quantize_op(z.contiguous(), *op_arguments(layout, plan), need_levels, need_deriv, op_impl)
    return codes, indices if plan is not None else None, level_indices if need_levels else None

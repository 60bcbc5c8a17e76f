"""The fused kernels as one registered PyTorch operator: ``torch.ops.ifsq_quant.quantize``.

Registering the kernel (``torch.library.custom_op``) makes it one opaque node with a fake
implementation and an autograd formula, so that ``torch.compile`` (no graph break; the fused
kernel runs inside the compiled graph), ``torch.export``, ``FakeTensorMode`` and
``inference_mode`` all see the same op, whichever implementation runs inside it: the fused CPU
path, or the Triton interpreter's kernels. The compiled Triton kernels (CUDA) have their own,
traceable op (:mod:`.triton_ops`).

The op takes only tensors and plain values; the layout and the index plan are rebuilt from
them (and cached). Outputs that were not asked for are empty tensors.

Gradient. The forward of the fused CPU path writes ``deriv = slope * f'(z + shift)``, and the
backward is ``grad * deriv``. When the backward itself is differentiated (``create_graph=True``,
double backward), the same derivative is computed from ``z`` with differentiable PyTorch
operations instead, so second derivatives include the ``f''`` term. The Triton path does not
save the derivative; it recomputes it from ``z`` with its backward kernel.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.utils._python_dispatch import _disable_current_modes

from ..activations import get_activation
from ..bins import BinLayout
from ..contexts import tracing
from ..indexing import IndexPlan
from . import torch_fused

__all__ = ["quantize", "straight_through_grad"]


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


@torch.library.custom_op("ifsq_quant::quantize", mutates_args=())
def _quantize_op(z: Tensor, levels: list[int], kind: str, activation: str, eps: float, groups: list[int],
                 pack: bool, need_levels: bool, need_deriv: bool, impl: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``z (M, d)`` -> ``codes (M, d)``, ``indices (M, G)`` int64, ``level indices (M, d)``,
    ``deriv (M, d)`` (each of the last three empty unless asked for)."""
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
    m, d = z.shape
    indices = z.new_empty((m, len(groups)), dtype=torch.int64) if pack else _empty(z, torch.int64)
    return (torch.empty_like(z), indices, torch.empty_like(z) if need_levels else _empty(z),
            torch.empty_like(z) if need_deriv else _empty(z))


def straight_through_grad(grad: Tensor, z: Tensor, layout: BinLayout) -> Tensor:
    """``grad * slope * f'(z + shift)`` (zero at NaN inputs) in differentiable PyTorch operations."""
    c = layout.constants(z.device, z.dtype)
    x = z + c["shift"] if layout.has_shift else z
    return torch.where(torch.isnan(z), 0.0, grad * (layout.activation.derivative(x) * c["slope"]))


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
    through the registered op; ``impl`` is ``"torch"`` (fused PyTorch) or ``"triton"``.

    Compiled Triton kernels (CUDA) run as the traceable ``triton_op`` of :mod:`.triton_ops`; the
    interpreter's kernels (``TRITON_INTERPRET=1``) run inside this module's opaque op."""
    if impl == "triton":
        from . import triton_support

        if not triton_support.interpreting():
            from . import triton_ops

            return triton_ops.quantize(z, layout, plan, need_levels)
    need_deriv = impl != "triton" and z.requires_grad and torch.is_grad_enabled()
    codes, indices, level_indices, _ = _quantize_op(z.contiguous(), *op_arguments(layout, plan), need_levels, need_deriv, impl)
    return codes, indices if plan is not None else None, level_indices if need_levels else None

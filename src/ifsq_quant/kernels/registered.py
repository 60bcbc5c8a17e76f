"""The fused kernels as one registered PyTorch operator: ``torch.ops.ifsq_quant.quantize``.

Registering the kernel (``torch.library.custom_op``) makes it one opaque node with a fake
implementation and an autograd formula, so that ``torch.compile`` (no graph break; the fused
kernel runs inside the compiled graph), ``torch.export``, ``FakeTensorMode`` and
``inference_mode`` all see the same op, whichever implementation it is handed (``impl``): the
fused CPU path (``"fused"``), or the Triton interpreter's kernels (``"triton_interpreted"``). The
compiled Triton kernels (CUDA) have their own, traceable op (:mod:`.triton_ops`); which one runs is
decided by :func:`ifsq_quant.kernels.choose` alone.

The op takes only tensors and plain values: the layout's :attr:`~ifsq_quant.bins.BinLayout.key`
and the index groups, from which the layout and the index plan are rebuilt (cached, and checked
as a user's arguments). Outputs that were not asked for are empty tensors.

Gradient. The forward of the fused CPU path writes ``deriv = slope * f'(z + shift)`` (0 at NaN
inputs), and the backward is ``grad * deriv``. When the backward itself is differentiated
(``create_graph=True``, double backward), the same derivative is computed from ``z`` with
differentiable PyTorch operations instead, so second derivatives include the ``f''`` term. The
Triton path does not save the derivative; it recomputes it from ``z`` with its backward kernel.
At a NaN input every path gives a zero gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..bins import LAYOUTS, BinLayout, layout_from_key
from ..contexts import tracing
from ..indexing import IndexPlan, plan_from_groups
from . import torch_fused

__all__ = ["quantize", "op_arguments", "straight_through_grad", "empty"]

OP_IMPLEMENTATIONS = ("fused", "triton_interpreted")  # values of kernels.Implementation this op runs


def op_arguments(layout: BinLayout, plan: IndexPlan | None) -> tuple:
    """``layout`` and ``plan`` as the ops' plain arguments: the layout's key (``levels, kind, activation,
    activation_scale, eps, shift, grid_scale, grid_steps``), ``groups, pack`` (rebuilt by
    :func:`layout_from_key` and :func:`plan_from_groups`)."""
    groups = list(plan.groups) if plan is not None else [len(layout.levels)]
    return (*layout.key, groups, plan is not None)


def empty(z: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """The placeholder for an output that was not asked for."""
    return z.new_empty((0,), dtype=dtype or z.dtype)


def _check_z(z: Tensor, levels) -> None:
    if not isinstance(z, Tensor) or z.ndim != 2 or not z.dtype.is_floating_point:
        raise ValueError(f"z must be a floating (M, d) tensor, got {getattr(z, 'dtype', type(z).__name__)} of shape "
                         f"{tuple(getattr(z, 'shape', ()))}")
    if z.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"z must be float32 or float64 (the compute dtypes), got {z.dtype}")
    if len(levels) != z.shape[1]:
        raise ValueError(f"levels has {len(levels)} entries but z has {z.shape[1]} columns (one per level count)")


def _rebuild(z: Tensor, levels, kind, activation, activation_scale, eps, shift, grid_scale, grid_steps, groups, pack,
             impl) -> tuple[BinLayout, IndexPlan | None]:
    """The op's layout and plan, its arguments checked as a user's: each error names the argument."""
    if impl not in OP_IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {OP_IMPLEMENTATIONS}, got {impl!r}")
    if kind not in LAYOUTS:
        raise ValueError(f"kind must be one of {LAYOUTS}, got {kind!r}")
    layout = layout_from_key(levels, kind, activation, activation_scale, eps, shift, grid_scale, grid_steps)
    _check_z(z, levels)
    if not isinstance(groups, (list, tuple)) or sum(groups) != len(levels):
        raise ValueError(f"groups must add up to len(levels) = {len(levels)}, got {groups!r}")
    return layout, plan_from_groups(layout.levels, tuple(groups)) if pack else None


@torch.library.custom_op("ifsq_quant::quantize", mutates_args=())
def _quantize_op(z: Tensor, levels: list[int], kind: str, activation: str, activation_scale: float, eps: float, shift: str,
                 grid_scale: float, grid_steps: list[float], groups: list[int], pack: bool, need_levels: bool, need_deriv: bool,
                 impl: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``z (M, d)`` -> ``codes (M, d)``, ``indices (M, G)`` int64, ``level indices (M, d)``,
    ``deriv (M, d)`` (each of the last three empty unless asked for)."""
    layout, plan = _rebuild(z, levels, kind, activation, activation_scale, eps, shift, grid_scale, grid_steps, groups, pack, impl)
    if impl == "triton_interpreted":
        from . import triton_kernels

        codes, indices, level_indices = triton_kernels.forward(z, layout, plan, need_levels)
        deriv = None
    else:
        codes, indices, level_indices, deriv = torch_fused.forward(z, layout, plan, need_levels, need_deriv)
    return (codes, empty(z, torch.int64) if indices is None else indices,
            empty(z) if level_indices is None else level_indices, empty(z) if deriv is None else deriv)


@_quantize_op.register_fake
def _(z, levels, kind, activation, activation_scale, eps, shift, grid_scale, grid_steps, groups, pack, need_levels, need_deriv, impl):
    _rebuild(z, levels, kind, activation, activation_scale, eps, shift, grid_scale, grid_steps, groups, pack, impl)
    m, d = z.shape
    indices = z.new_empty((m, len(groups)), dtype=torch.int64) if pack else empty(z, torch.int64)
    return (torch.empty_like(z), indices, torch.empty_like(z) if need_levels else empty(z),
            torch.empty_like(z) if need_deriv else empty(z))


def straight_through_grad(grad: Tensor, z: Tensor, layout: BinLayout) -> Tensor:
    """``grad * slope * f'(z + shift)`` (zero at NaN inputs) in differentiable PyTorch operations."""
    c = layout.constants(z.device, z.dtype)
    nan = torch.isnan(z)
    x = torch.where(nan, 0.0, z)  # the derivative at 0, not at NaN: its own derivative stays finite too
    x = x + c["shift"] if layout.has_shift else x
    return torch.where(nan, 0.0, grad * (layout.activation.derivative(x) * c["slope"]))


def _setup_context(ctx, inputs, output):
    z, *layout_key = inputs[:9]
    ctx.layout_key, ctx.impl = layout_key, inputs[-1]
    ctx.save_for_backward(z, output[3])


def _backward(ctx, grad_codes, *_unused):
    z, deriv = ctx.saved_tensors
    layout = layout_from_key(*ctx.layout_key)
    if torch.is_grad_enabled():  # create_graph=True: a gradient that can itself be differentiated
        grad = straight_through_grad(grad_codes, z, layout)
    elif deriv.shape == z.shape:
        grad = grad_codes * deriv
    elif ctx.impl == "triton_interpreted" and not tracing():
        from . import triton_kernels

        grad = triton_kernels.backward(grad_codes, z, layout)
    else:
        grad = straight_through_grad(grad_codes, z, layout)
    return (grad,) + (None,) * 13


_quantize_op.register_autograd(_backward, setup_context=_setup_context)


def quantize(z: Tensor, layout: BinLayout, plan: IndexPlan | None, impl: str, need_levels: bool = False):
    """``z (M, d)`` float32/float64 -> ``(codes (M, d), indices (M, G) | None, level indices | None)``
    through the registered op; ``impl`` is ``"fused"`` or ``"triton_interpreted"``."""
    need_deriv = impl == "fused" and z.requires_grad and torch.is_grad_enabled()
    codes, indices, level_indices, _ = _quantize_op(z.contiguous(), *op_arguments(layout, plan), need_levels, need_deriv, impl)
    return codes, indices if plan is not None else None, level_indices if need_levels else None

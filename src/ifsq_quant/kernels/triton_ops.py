"""The Triton kernels as ``torch.library.triton_op`` operators, for CUDA tensors.

``torch.ops.ifsq_quant.quantize_triton`` (forward) and ``quantize_triton_backward`` launch the
kernels of :mod:`.triton_kernels` through ``wrap_triton``. Unlike an opaque custom op, a
``triton_op`` is traceable: ``torch.compile`` traces into it and sees the kernel launches
themselves (``triton_kernel_wrapper`` nodes), so inductor calls the kernels from its generated
code, with no Python op in between; ``torch.export`` keeps each op as one node. The fake
implementation is the body itself. In eager code the body launches the kernels directly. The
bodies name the kernels at their ``wrap_triton`` calls, where ``triton_op`` finds them by reading
the source: the AOTAutograd cache then keys on the kernels' source, so a changed kernel (an edit,
a new release) is compiled afresh instead of served from a stale cache.

The schema is that of ``ifsq_quant::quantize`` (:mod:`.registered`) without the arguments that
only the CPU path uses. The gradient is the backward kernel (recomputed from ``z``), or, when
the backward itself is differentiated, the differentiable formula of :mod:`.registered`.

Under ``TRITON_INTERPRET=1`` (CPU) these ops run in eager code only: the interpreter's kernels
cannot be traced, so the package then uses ``ifsq_quant::quantize`` with ``impl="triton"``.
This module imports Triton; it is loaded on the first Triton call, and a program exported with
these ops needs ``import ifsq_quant.kernels.triton_ops`` before it is loaded.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ..bins import layout_from_key
from ..indexing import plan_from_groups
from . import triton_kernels, triton_support
from .registered import empty, op_arguments, straight_through_grad
from .triton_kernels import BACKWARD_KERNEL, FORWARD_KERNEL

__all__ = ["quantize"]


def _quantize_triton(z: Tensor, levels: list[int], kind: str, activation: str, activation_scale: float, eps: float, shift: str,
                     grid_scale: float, grid_steps: list[float], groups: list[int], pack: bool,
                     need_levels: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``z (M, d)`` -> ``codes (M, d)``, ``indices (M, G)`` int64 (empty unless ``pack``), level
    indices ``(M, d)`` (empty unless ``need_levels``)."""
    layout = layout_from_key(levels, kind, activation, activation_scale, eps, shift, grid_scale, grid_steps)
    plan = plan_from_groups(layout.levels, tuple(groups)) if pack else None
    # ``wrap_triton(FORWARD_KERNEL)`` written out here, where triton_op's source scan finds it.
    kernel = None if triton_support.interpreting() else wrap_triton(FORWARD_KERNEL)  # None: the interpreter's
    codes, indices, level_indices = triton_kernels.forward(z, layout, plan, need_levels, kernel)
    return (codes, empty(z, torch.int64) if indices is None else indices,
            empty(z) if level_indices is None else level_indices)


def _quantize_triton_backward(grad: Tensor, z: Tensor, levels: list[int], kind: str, activation: str, activation_scale: float,
                              eps: float, shift: str, grid_scale: float, grid_steps: list[float]) -> Tensor:
    """The straight-through gradient ``(M, d)`` of :func:`_quantize_triton`'s codes."""
    kernel = None if triton_support.interpreting() else wrap_triton(BACKWARD_KERNEL)
    return triton_kernels.backward(grad, z, layout_from_key(levels, kind, activation, activation_scale, eps, shift, grid_scale,
                                                            grid_steps), kernel)


quantize_op = triton_op("ifsq_quant::quantize_triton", mutates_args=())(_quantize_triton)
backward_op = triton_op("ifsq_quant::quantize_triton_backward", mutates_args=())(_quantize_triton_backward)


def _setup_context(ctx, inputs, output):
    z, *layout_key = inputs[:9]
    ctx.layout_key = layout_key
    ctx.save_for_backward(z)


def _backward(ctx, grad_codes, *_unused):
    (z,) = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a gradient that can itself be differentiated
        grad = straight_through_grad(grad_codes, z, layout_from_key(*ctx.layout_key))
    else:
        grad = backward_op(grad_codes.contiguous(), z, *ctx.layout_key)
    return (grad,) + (None,) * 11


quantize_op.register_autograd(_backward, setup_context=_setup_context)


def quantize(z: Tensor, layout, plan, need_levels: bool = False):
    """``z (M, d)`` -> ``(codes, indices | None, level indices | None)`` through ``quantize_triton``."""
    codes, indices, level_indices = quantize_op(z.contiguous(), *op_arguments(layout, plan), need_levels)
    return codes, indices if plan is not None else None, level_indices if need_levels else None

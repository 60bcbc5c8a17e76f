"""One entry point, several implementations of the quantization kernel.

``quantize(z, layout, plan, backend)`` takes ``(M, d)`` values in the compute dtype and returns
codes with a straight-through gradient, packed indices and (on request) level indices. A bf16 or
fp16 ``z`` is quantized as vector-quantize-pytorch quantizes an input it does not upcast: the
``"symmetric"`` layout op for op in that dtype (:func:`.reference.quantize_symmetric_in_input_dtype`),
the others in float32 (theirs promote to float32 before the bound).
``backend``: ``"torch"`` (fused PyTorch path, or the reference for custom activations),
``"triton"`` (CUDA; CPU only under ``TRITON_INTERPRET=1``), ``"auto"`` (Triton for CUDA tensors
when it imports, else torch), ``"reference"`` (the oracle, for tests).

The fused paths run inside registered ops: the CPU path (and the Triton interpreter) inside
``torch.ops.ifsq_quant.quantize`` (:mod:`.registered`), which eager code, ``torch.compile``,
``torch.export`` and ``FakeTensorMode`` all see as one node; the compiled Triton kernels (CUDA)
inside ``torch.ops.ifsq_quant.quantize_triton`` (:mod:`.triton_ops`), which ``torch.compile``
traces into. Under ``torch.func`` transforms, ``torch.jit.trace`` and
ONNX export the reference runs instead: plain PyTorch operations that every transform
understands and that a traced or ONNX graph can hold without this package.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..bins import BinLayout
from ..contexts import exporting_to_portable_graph, functorch_active
from ..indexing import IndexPlan
from . import reference, registered, triton_support

__all__ = ["quantize", "QuantizeOutput", "BACKENDS", "HALF_DTYPES", "resolve_backend", "implementation"]

BACKENDS = ("auto", "torch", "triton", "reference")
HALF_DTYPES = (torch.bfloat16, torch.float16)


class QuantizeOutput(NamedTuple):
    codes: Tensor  # (M, d) compute dtype, straight-through gradient
    indices: Tensor | None  # (M, G) int64, when a plan was given
    level_indices: Tensor | None  # (M, d) exact-integer floats, when asked for


# What can run, as chosen by implementation():
REFERENCE = "reference"  # plain PyTorch (reference.py), also under torch.func, jit.trace and ONNX export
FUSED_TORCH = "torch"  # the fused PyTorch path inside the registered op (registered.py)
TRITON_INTERPRETED = "triton_interpreted"  # the Triton kernels under TRITON_INTERPRET=1, inside the registered op
TRITON = "triton"  # the compiled Triton kernels as a traceable triton_op (triton_ops.py)


def resolve_backend(backend: str, z: Tensor, layout: BinLayout) -> str:
    """The backend that serves ``z`` (``"reference"``, ``"torch"`` or ``"triton"``); raises if
    ``backend`` cannot serve it."""
    fused = layout.activation.kernel_id is not None
    if backend == "auto":
        if z.is_cuda and fused and triton_support.available():
            return "triton"
        return "torch" if fused else "reference"
    if backend == "triton":
        triton_support.check_usable(z, layout)
        return "triton"
    if backend == "torch":
        return "torch" if fused else "reference"
    return backend


def implementation(backend: str, z: Tensor, layout: BinLayout) -> str:
    """The one place that decides what runs for ``z``: :data:`REFERENCE`, :data:`FUSED_TORCH`,
    :data:`TRITON_INTERPRETED` or :data:`TRITON`."""
    chosen = resolve_backend(backend, z, layout)
    if chosen == "reference" or functorch_active() or exporting_to_portable_graph():
        return REFERENCE  # plain PyTorch operations, which every transform and portable graph understands
    if chosen == "triton":
        return TRITON_INTERPRETED if triton_support.interpreting() else TRITON
    return FUSED_TORCH


def quantize(z: Tensor, layout: BinLayout, plan: IndexPlan | None, backend: str = "auto",
             need_level_indices: bool = False) -> QuantizeOutput:
    """Quantizes ``z (M, d)``; see the module docstring."""
    if z.dtype in HALF_DTYPES:
        if not layout.quantizes_half_in_input_dtype:
            return quantize(z.to(torch.float64 if layout.needs_float64 else torch.float32), layout, plan, backend, need_level_indices)
        codes, level_indices = reference.quantize_symmetric_in_input_dtype(z, layout)
        indices = plan.pack(level_indices) if plan is not None else None
        return QuantizeOutput(codes, indices, level_indices if need_level_indices else None)
    impl = implementation(backend, z, layout)
    if impl == REFERENCE:
        codes, level_indices = reference.quantize(z, layout)
        indices = plan.pack(level_indices) if plan is not None else None
        return QuantizeOutput(codes, indices, level_indices if need_level_indices else None)
    if impl == TRITON:
        from . import triton_ops  # imports Triton

        return QuantizeOutput(*triton_ops.quantize(z, layout, plan, need_level_indices))
    return QuantizeOutput(*registered.quantize(z, layout, plan, impl, need_level_indices))

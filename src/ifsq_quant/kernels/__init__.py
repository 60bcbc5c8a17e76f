"""One entry point, several implementations of the quantization kernel.

``quantize(z, layout, plan, backend)`` takes ``(M, d)`` values and returns codes with a
straight-through gradient, packed indices and (on request) level indices. :func:`choose` alone
decides which :class:`Implementation` runs; a call then goes module -> :func:`quantize` ->
registered op -> kernel:

* ``FUSED``: the fused PyTorch path (:mod:`.torch_fused`) inside the registered op
  ``torch.ops.ifsq_quant.quantize`` (:mod:`.registered`), which eager code, ``torch.compile``,
  ``torch.export`` and ``FakeTensorMode`` all see as one node;
* ``TRITON``: the compiled Triton kernels (CUDA) inside ``torch.ops.ifsq_quant.quantize_triton``
  (:mod:`.triton_ops`), which ``torch.compile`` traces into;
* ``TRITON_INTERPRETED``: the Triton kernels under ``TRITON_INTERPRET=1`` (CPU), inside the
  registered op (the interpreter cannot be traced);
* ``REFERENCE``: plain PyTorch (:mod:`.reference`), for custom activations and under
  ``torch.func`` transforms, ``torch.jit.trace`` and ONNX export, whose graphs must hold only
  operations every transform understands.

``backend`` is the user's choice: ``"auto"`` (Triton for CUDA tensors when it imports, else the
fused path), ``"torch"`` (the fused path), ``"triton"`` (CUDA; CPU only under ``TRITON_INTERPRET=1``)
or ``"reference"``. A bf16 or fp16 ``z`` is quantized as vector-quantize-pytorch quantizes an input
it does not upcast: the ``"symmetric"`` layout op for op in that dtype
(:func:`.reference.quantize_symmetric_in_input_dtype`), the others in float32.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import torch
from torch import Tensor

from ..activations import ACTIVATION_NAMES
from ..bins import BinLayout
from ..contexts import exporting_to_portable_graph, functorch_active
from ..indexing import IndexPlan
from . import reference, registered, triton_support

__all__ = ["quantize", "choose", "Implementation", "QuantizeOutput", "BACKENDS", "HALF_DTYPES"]

BACKENDS = ("auto", "torch", "triton", "reference")
HALF_DTYPES = (torch.bfloat16, torch.float16)


class Implementation(enum.Enum):
    """What runs a quantization (its value is the registered op's ``impl`` argument)."""

    REFERENCE = "reference"
    FUSED = "fused"
    TRITON_INTERPRETED = "triton_interpreted"
    TRITON = "triton"


class QuantizeOutput(NamedTuple):
    codes: Tensor  # (M, d) z's dtype, straight-through gradient
    indices: Tensor | None  # (M, G) int64, when a plan was given
    level_indices: Tensor | None  # (M, d) exact-integer floats, when asked for


def choose(backend: str, z: Tensor, layout: BinLayout) -> Implementation:
    """The implementation that serves ``z``; raises when ``backend`` cannot serve it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton":
        if not triton_support.available():
            raise RuntimeError('backend="triton" needs the triton package: pip install "ifsq-quant[triton]"')
        if not layout.fused:
            raise ValueError(f'backend="triton" supports the named activations {ACTIVATION_NAMES} and scaled sigmoids, '
                             f'got {layout.activation!r}; use backend="torch" or "auto" for custom activations')
        if not z.is_cuda and not triton_support.interpreting():
            raise RuntimeError(f'backend="triton" needs CUDA tensors (got a tensor on {z.device}); on the CPU it runs only '
                               'under the Triton interpreter (set TRITON_INTERPRET=1 before importing triton)')
    if backend == "reference" or not layout.fused or functorch_active() or exporting_to_portable_graph():
        return Implementation.REFERENCE
    if backend == "triton" or (backend == "auto" and z.is_cuda and triton_support.available()):
        return Implementation.TRITON_INTERPRETED if triton_support.interpreting() else Implementation.TRITON
    return Implementation.FUSED


def quantize(z: Tensor, layout: BinLayout, plan: IndexPlan | None, backend: str = "auto",
             need_level_indices: bool = False) -> QuantizeOutput:
    """Quantizes ``z (M, d)``; see the module docstring."""
    if z.dtype in HALF_DTYPES:
        if not layout.quantizes_half_in_input_dtype:
            return quantize(z.to(torch.float64 if layout.needs_float64 else torch.float32), layout, plan, backend, need_level_indices)
        codes, level_indices = reference.quantize_symmetric_in_input_dtype(z, layout)
    else:
        impl = choose(backend, z, layout)
        if impl is Implementation.TRITON:
            from . import triton_ops  # imports Triton

            return QuantizeOutput(*triton_ops.quantize(z, layout, plan, need_level_indices))
        if impl is not Implementation.REFERENCE:
            return QuantizeOutput(*registered.quantize(z, layout, plan, impl.value, need_level_indices))
        codes, level_indices = reference.quantize(z, layout)
    indices = plan.pack(level_indices) if plan is not None else None
    return QuantizeOutput(codes, indices, level_indices if need_level_indices else None)

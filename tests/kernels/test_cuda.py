"""The CUDA path on a GPU: the Triton kernels (``torch.ops.ifsq_quant.quantize_triton``) against
the reference, in eager code, under ``torch.compile(fullgraph=True)``, ``torch.export`` and autocast.

Skipped, with the reason printed, where there is no CUDA device (CI); ``benchmarks/gpu_check.sh``
runs this file and the GPU benchmark in one go on a machine that has one. To check the test code
itself without a GPU: ``IFSQ_TEST_DEVICE=cpu TRITON_INTERPRET=1 pytest tests/kernels/test_cuda.py``
(the interpreter's kernels then run inside the opaque op instead of the ``triton_op``).
"""

from __future__ import annotations

import os

import pytest
import torch

from ifsq_quant import FSQ, ResidualFSQ, iFSQ, kernels
from ifsq_quant.activations import get_activation
from ifsq_quant.bins import BinLayout
from ifsq_quant.indexing import IndexPlan
from ifsq_quant.kernels import reference, triton_support

DEVICE = os.environ.get("IFSQ_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(),
    reason="needs a CUDA device (run bash benchmarks/gpu_check.sh on one); the Triton kernels are tested "
           "under the interpreter in test_triton.py",
)
LEVELS = [17, 8, 5, 5, 3]


def inputs(rows: int, d: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, d, generator=g, dtype=torch.float64) * 2).to(dtype).to(DEVICE)


def test_runs_the_triton_op(monkeypatch):
    """On CUDA the module's default backend reaches ``torch.ops.ifsq_quant.quantize_triton``."""
    assert triton_support.available()
    if DEVICE != "cuda":
        pytest.skip("the triton_op serves CUDA tensors only (IFSQ_TEST_DEVICE=cpu checks the rest of this file)")
    from ifsq_quant.kernels import triton_ops

    calls = []
    op = triton_ops.quantize_op
    monkeypatch.setattr(triton_ops, "quantize_op", lambda *args: calls.append(args[1]) or op(*args))
    assert not triton_support.interpreting()
    iFSQ([17] * 4, index_groups=[2, 2]).to(DEVICE)(inputs(64, 4))
    assert calls == [[17] * 4]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["round", "symmetric", "equal"])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "erf", "clamp"])
def test_kernel_matches_reference(activation, kind, dtype):
    """Codes, level indices and indices bit-identical to the reference on the same device;
    gradients within 1e-5 (libdevice and PyTorch's CUDA kernels share the math library)."""
    layout = BinLayout(LEVELS, kind, get_activation(activation), 1e-3 if activation == "tanh" else 0.0)
    plan = IndexPlan(LEVELS, [2, 3])
    z = inputs(1 << 16, len(LEVELS), dtype).requires_grad_(True)
    out = kernels.quantize(z, layout, plan, backend="triton", need_level_indices=True)
    z_ref = z.detach().clone().requires_grad_(True)
    codes_ref, levels_ref = reference.quantize(z_ref, layout)
    assert torch.equal(out.codes, codes_ref)
    assert torch.equal(out.level_indices, levels_ref)
    assert torch.equal(out.indices, plan.pack(levels_ref))
    g = torch.randn_like(z)
    out.codes.backward(g)
    codes_ref.backward(g)
    torch.testing.assert_close(z.grad, z_ref.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", [FSQ, iFSQ])
def test_modules_eager_compiled_and_reference(cls):
    """The module on the Triton path, eager and ``torch.compile(fullgraph=True)`` (dynamic batch),
    against ``backend="reference"``: same codes and indices, close gradients."""
    torch.manual_seed(0)
    ref = cls([8, 5, 5, 5], dim=16, backend="reference").to(DEVICE)
    ours = cls([8, 5, 5, 5], dim=16).to(DEVICE)
    ours.load_state_dict(ref.state_dict())
    compiled = torch.compile(ours, fullgraph=True, dynamic=True)
    for rows in (1000, 4097):
        x = inputs(rows, 16, seed=rows)
        results = []
        for model in (ref, ours, compiled):
            xi = x.clone().requires_grad_(True)
            codes, indices = model(xi)
            codes.square().sum().backward()
            results.append((codes.detach(), indices, xi.grad))
        for codes, indices, grad in results[1:]:
            torch.testing.assert_close(codes, results[0][0], atol=1e-6, rtol=1e-6)  # the projections may reorder sums
            assert torch.equal(indices, results[0][1])
            torch.testing.assert_close(grad, results[0][2], atol=1e-5, rtol=1e-5)


def test_residual_compiled():
    torch.manual_seed(0)
    ref = ResidualFSQ(levels=[8, 5, 5], num_quantizers=3, dim=12, backend="reference").to(DEVICE).eval()
    ours = ResidualFSQ(levels=[8, 5, 5], num_quantizers=3, dim=12).to(DEVICE).eval()
    ours.load_state_dict(ref.state_dict())
    x = inputs(2048, 12).reshape(8, 256, 12)
    out_ref, idx_ref = ref(x)
    out, idx = torch.compile(ours, fullgraph=True)(x)
    assert torch.equal(idx, idx_ref)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)


def test_export_dynamic_batch():
    model = iFSQ([17] * 4, index_groups=[2, 2]).to(DEVICE).eval()
    x = inputs(512, 4).reshape(2, 256, 4)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    for b in (2, 7):
        xb = inputs(b * 256, 4, seed=b).reshape(b, 256, 4)
        codes, indices = program.module()(xb)
        codes_ref, indices_ref = model(xb)
        assert torch.equal(codes, codes_ref) and torch.equal(indices, indices_ref)


@pytest.mark.parametrize("force_f32", [True, False])
def test_autocast_indices_exact(force_f32):
    """Inside a bf16 autocast region (the projection then runs in bf16) the indices are the exact
    packing of the codes: against codes_to_indices outside autocast, inside it, and after a round
    trip through the codes of the indices."""
    torch.manual_seed(0)
    model = iFSQ([17] * 6, dim=32, force_quantization_f32=force_f32).to(DEVICE)
    x = inputs(4096, 32).reshape(16, 256, 32)
    autocast = torch.autocast("cuda" if DEVICE == "cuda" else "cpu", dtype=torch.bfloat16)
    with autocast:
        _, indices = model(x)
        projected = model.project_in(x)
    assert projected.dtype == torch.bfloat16
    codes = model.quantize(projected.float())  # the codes the forward made (it quantizes half inputs in float32)
    expected = model.codes_to_indices(codes)
    with autocast:
        repacked = model.codes_to_indices(codes)
        decoded = model.codes_to_indices(model._indices_to_codes(indices))  # codes before the projection
    assert torch.equal(indices, expected) and torch.equal(repacked, expected) and torch.equal(decoded, indices)

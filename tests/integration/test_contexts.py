"""One test matrix: every PyTorch context x FSQ, iFSQ and ResidualFSQ, against the reference
backend (plain PyTorch) in plain eager code, and against vector-quantize-pytorch where it has
the same module.

Each context runs the module with the default backend (the registered fused op, or the
reference where the context needs plain operations) and must give the reference's codes and
indices bit for bit, and its gradients up to rounding.
"""

from __future__ import annotations

import importlib.util
import io

import pytest
import torch

from ifsq_quant import FSQ, GroupedResidualFSQ, ResidualFSQ, iFSQ

MODULES = {
    "FSQ": lambda backend: FSQ([8, 5, 5, 5], dim=6, backend=backend),
    "iFSQ": lambda backend: iFSQ([17, 9, 6], dim=6, index_groups=[2, 1], backend=backend),
    "ResidualFSQ": lambda backend: ResidualFSQ(levels=[7, 5, 5], num_quantizers=2, dim=6, backend=backend),
    "GroupedResidualFSQ": lambda backend: GroupedResidualFSQ(dim=6, groups=2, levels=[5, 5, 3], num_quantizers=2, backend=backend),
}
RESIDUAL = ("ResidualFSQ", "GroupedResidualFSQ")


def _pair(name):
    """The module under test (default backend) and its reference twin with the same weights."""
    torch.manual_seed(0)
    fast = MODULES[name]("auto").eval()
    ref = MODULES[name]("reference").eval()
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _input(name, batch=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 5, 6, generator=g) * 2).to(dtype)


def _assert_same_outputs(got, expected):
    out, idx = got[:2]
    ref_out, ref_idx = expected[:2]
    assert out.dtype == ref_out.dtype and idx.dtype == ref_idx.dtype == torch.int64
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)


def _grad(module, z, create_graph=False):
    x = z.clone().requires_grad_(True)
    loss = module(x)[0].pow(2).sum()
    (g,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    return x, g


NAMES = list(MODULES)


@pytest.mark.parametrize("name", NAMES)
def test_eager(name):
    fast, ref = _pair(name)
    z = _input(name)
    _assert_same_outputs(fast(z), ref(z))
    torch.testing.assert_close(_grad(fast, z)[1], _grad(ref, z)[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_compile_fullgraph(name):
    fast, ref = _pair(name)
    z = _input(name)
    torch._dynamo.reset()
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    _assert_same_outputs(compiled(z), ref(z))
    torch.testing.assert_close(_grad(compiled, z)[1], _grad(ref, z)[1], rtol=1e-5, atol=1e-6)


def test_compile_keeps_the_fused_op_in_the_graph():
    """The compiled graph calls torch.ops.ifsq_quant.quantize: the fused kernel is kept."""
    fast, ref = _pair("iFSQ")
    z = _input("iFSQ")
    torch._dynamo.reset()
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        return gm

    _assert_same_outputs(torch.compile(fast, fullgraph=True, backend=backend)(z), ref(z))
    assert len(graphs) == 1 and "ifsq_quant.quantize" in graphs[0].code


def test_compile_inductor():
    fast, ref = _pair("FSQ")
    torch._dynamo.reset()
    z = _input("FSQ")
    got, expected = torch.compile(fast, fullgraph=True)(z), ref(z)
    assert torch.equal(got[1], expected[1])
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)  # inductor may fuse the projection
    q = iFSQ([8, 5, 5, 5])  # no projection: a bf16 input goes straight to the op
    z = (torch.randn(2, 4, 6, 6) * 2).to(torch.bfloat16)
    got, expected = torch.compile(q, fullgraph=True)(z), iFSQ([8, 5, 5, 5], backend="reference")(z)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("name", RESIDUAL)
def test_compile_inductor_residual(name):
    """The residual modules under the default (inductor) backend: the reference's indices bit for
    bit; outputs up to the rounding of fused projections."""
    fast, ref = _pair(name)
    torch._dynamo.reset()
    z = _input(name)
    got, expected = torch.compile(fast, fullgraph=True)(z), ref(z)
    assert torch.equal(got[1], expected[1])
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_vmap(name):
    fast, ref = _pair(name)
    z = _input(name, batch=3)
    out, idx = torch.func.vmap(fast)(z[:, None])[:2]
    # per sample the batch axis has size 1: axis 1 of the vmapped result, axis 2 behind a group axis
    idx = idx[:, :, 0].movedim(0, 1) if name == "GroupedResidualFSQ" else idx[:, 0]
    _assert_same_outputs((out[:, 0], idx), ref(z))


@pytest.mark.parametrize("name", NAMES)
def test_func_grad_jacrev_jvp(name):
    fast, ref = _pair(name)
    z = _input(name)
    g = torch.func.grad(lambda x: fast(x)[0].pow(2).sum())(z)
    torch.testing.assert_close(g, _grad(ref, z)[1], rtol=1e-5, atol=1e-6)
    small = z[:1, :2]
    jac = torch.func.jacrev(lambda x: fast(x)[0])(small)
    jac_ref = torch.autograd.functional.jacobian(lambda x: ref(x)[0], small)
    torch.testing.assert_close(jac, jac_ref, rtol=1e-5, atol=1e-6)
    tangent = torch.randn_like(z)
    _, jvp = torch.func.jvp(lambda x: fast(x)[0], (z,), (tangent,))
    _, jvp_ref = torch.autograd.functional.jvp(lambda x: ref(x)[0], z, tangent)
    torch.testing.assert_close(jvp, jvp_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_double_backward(name):
    """Second derivatives include the bound's curvature (the f'' term), as the reference's."""
    fast, ref = _pair(name)
    z = _input(name)
    second = []
    for module in (fast, ref):
        x, g = _grad(module, z, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
        second.append(gg)
    assert second[1].abs().max() > 0  # the check can fail: the reference has curvature here
    torch.testing.assert_close(second[0], second[1], rtol=1e-4, atol=1e-5)


def test_double_backward_is_exact_for_the_activation_derivative():
    """d/dz of the straight-through gradient is slope * f''(z): checked against the closed form."""
    q = iFSQ([17])
    z = torch.linspace(-3, 3, 64, dtype=torch.float64).view(-1, 1).requires_grad_(True)
    (g,) = torch.autograd.grad(q(z)[0].sum(), z, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), z)
    s = torch.sigmoid(1.6 * z.detach())
    expected = 8 * 3.2 * 1.6 * s * (1 - s) * (1 - 2 * s) / 8  # slope = half_l / half_width = 1
    torch.testing.assert_close(gg, expected)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("strict", [False, True])
def test_export_dynamic_batch(name, strict):
    fast, ref = _pair(name)
    z = _input(name)
    batch = torch.export.Dim("batch", min=2, max=64)
    program = torch.export.export(fast, (z,), dynamic_shapes=({0: batch},), strict=strict)
    z7 = _input(name, batch=7)
    _assert_same_outputs(program.module()(z7), ref(z7))
    _assert_same_outputs(fast(z7), ref(z7))  # the instance still works after export


@pytest.mark.parametrize("name", NAMES)
def test_fake_tensor_mode(name):
    from torch._subclasses.fake_tensor import FakeTensorMode

    fast, ref = _pair(name)
    z = _input(name)
    expected = ref(z)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        out, idx = fast(mode.from_tensor(z))[:2]
    assert out.shape == expected[0].shape and idx.shape == expected[1].shape and idx.dtype == torch.int64
    _assert_same_outputs(fast(z), expected)  # no cache kept a fake tensor


@pytest.mark.parametrize("name", NAMES)
def test_jit_trace(name):
    fast, ref = _pair(name)
    z = _input(name)
    traced = torch.jit.trace(fast, (z,), check_trace=False)
    assert "ifsq_quant::" not in traced.graph.str()  # plain operations: the trace runs without this package's op
    _assert_same_outputs(traced(z), ref(z))
    _assert_same_outputs(fast(z), ref(z))


def _near_edges(cls, levels=17):
    """Inputs within 6 float32 ulp of every rounding edge of ``cls([levels] * 4)``, one value per
    row in all four dimensions: ``(rows, 4)``, and each row's distance to its edge in ulp."""
    k = torch.arange(-(levels // 2), levels // 2, dtype=torch.float64) + 0.5
    if cls is FSQ:
        edges = torch.atanh(k / ((levels - 1) * 1.001 / 2))
    else:
        edges = torch.atanh(k / ((levels - 1) / 2)) / 0.8
    edges = edges.float()
    ulps = torch.arange(-6, 7, dtype=torch.float32)
    near = edges[:, None] + ulps * torch.finfo(torch.float32).eps * edges.abs().clamp_min(1e-3)[:, None]
    return near.reshape(-1, 1).expand(-1, 4).contiguous(), ulps.repeat(len(edges))


@pytest.mark.parametrize("cls", [FSQ, iFSQ])
def test_traced_and_vmapped_codes_near_rounding_edges(cls):
    """One row at a time (all in PyTorch's scalar loop), inputs within 6 ulp of every edge.
    FSQ (tanh): torch.jit.trace and vmap give the eager indices bit for bit. iFSQ (sigmoid): the
    traced reference uses plain torch.sigmoid, whose scalar code can differ from the vector code
    eager uses by an ulp, so a few of these inputs move to the neighbouring level (the README says
    so); never an input more than 6 ulp from an edge, never by more than one level."""
    z, ulps = _near_edges(cls)
    quantizer = cls([17] * 4).eval()
    eager = torch.cat([quantizer(z[i:i + 1])[1] for i in range(len(z))])
    assert torch.equal(eager, quantizer(z)[1])  # position independent in eager code
    traced = torch.jit.trace(quantizer, (z[:1],), check_trace=False)
    contexts = {"jit.trace": torch.cat([traced(z[i:i + 1])[1] for i in range(len(z))]),
                "vmap": torch.cat([torch.func.vmap(quantizer)(z[i:i + 1][None])[1].reshape(1) for i in range(len(z))])}
    levels = lambda idx: quantizer.indices_to_level_indices(idx)
    for name, got in contexts.items():
        moved = got != eager
        if cls is FSQ:
            assert not moved.any(), name
        else:
            assert moved.float().mean() < 0.1, name
            assert (levels(got[moved]) - levels(eager[moved])).abs().max() <= 1 if moved.any() else True
    far = torch.randn(300, 4, generator=torch.Generator().manual_seed(2)) * 2  # random inputs: never that close to an edge
    assert torch.equal(traced(far)[1], quantizer(far)[1]) and torch.equal(torch.func.vmap(quantizer)(far[:, None])[1].view(-1), quantizer(far)[1])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dynamo", [True, False])
def test_onnx_export(name, dynamo):
    """Both exporters (dynamo and TorchScript) give a graph of plain ONNX operators; onnxruntime
    runs it to the reference's indices."""
    if importlib.util.find_spec("onnxscript") is None or importlib.util.find_spec("onnx") is None:
        pytest.skip("onnx/onnxscript are not installed (pip install 'ifsq-quant[dev]'): the ONNX exporters need them")
    fast, ref = _pair(name)
    z = _input(name)
    buffer = io.BytesIO()
    if dynamo:
        model = torch.onnx.export(fast, (z,), dynamo=True).model_proto.SerializeToString()
    else:
        torch.onnx.export(fast, (z,), buffer, dynamo=False, opset_version=17)
        model = buffer.getvalue()
    _assert_same_outputs(fast(z), ref(z))  # the instance still works after export
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed: the ONNX graph was exported but not run")
    import onnxruntime

    session = onnxruntime.InferenceSession(model)
    out, idx = session.run(None, {session.get_inputs()[0].name: z.numpy()})[:2]
    expected = ref(z)
    assert (torch.from_numpy(idx) == expected[1]).all()
    torch.testing.assert_close(torch.from_numpy(out), expected[0], rtol=1e-5, atol=1e-6)


# The residual modules have no force_quantization_f32 of their own (their stages quantize in float32).
AUTOCAST_CASES = [(name, force_f32) for name in NAMES for force_f32 in (True, False) if force_f32 or name not in RESIDUAL]


@pytest.mark.parametrize("name,force_f32", AUTOCAST_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_cpu(name, force_f32, dtype):
    """Index packing stays exact inside autocast: indices equal the reference's under the same
    autocast (the projection is autocast either way), and decode/encode round trips exactly."""
    torch.manual_seed(0)
    fast = MODULES[name]("auto")
    ref = MODULES[name]("reference")
    if name not in RESIDUAL:
        fast.force_quantization_f32 = ref.force_quantization_f32 = force_f32
    ref.load_state_dict(fast.state_dict())
    z = _input(name)
    with torch.autocast("cpu", dtype=dtype):
        got, expected = fast(z), ref(z)
        assert torch.equal(got[1], expected[1])
        if name not in RESIDUAL:
            level_codes = fast._indices_to_codes(got[1])
            assert torch.equal(fast.codes_to_indices(level_codes), got[1])
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_module_dtypes(name, dtype):
    """.half(), .bfloat16(), .double() modules encode and decode in the module's dtype; float64
    decodes exactly what float64 forward produced."""
    fast, ref = _pair(name)
    fast, ref = fast.to(dtype), ref.to(dtype)
    z = _input(name, dtype=dtype)
    got = fast(z)
    _assert_same_outputs(got, ref(z))
    assert got[0].dtype == dtype
    decode = fast.get_output_from_indices if name in RESIDUAL else fast.indices_to_codes
    decoded = decode(got[1])
    assert decoded.dtype == dtype
    if dtype == torch.float64:
        assert torch.equal(decoded, got[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_orthogonal_rotation_module_dtypes(dtype):
    torch.manual_seed(0)
    q = FSQ([7, 7, 7, 7], orthogonal_rotation=True).to(dtype)
    z = torch.randn(2, 30, 4, dtype=dtype)
    out, idx = q(z)
    decoded = q.indices_to_codes(idx)
    assert out.dtype == decoded.dtype == dtype
    if dtype == torch.float64:
        assert torch.equal(decoded, out)
    else:
        torch.testing.assert_close(decoded, out)


@pytest.mark.parametrize("name", NAMES)
def test_inference_mode_then_training(name):
    """A forward under inference_mode or no_grad (float32 and float64) leaves the instance
    usable for training: no cache holds an inference tensor."""
    fast, ref = _pair(name)
    for dtype in (torch.float64, torch.float32):
        fast.to(dtype), ref.to(dtype)
        z = _input(name, dtype=dtype)
        with torch.inference_mode():
            _assert_same_outputs(fast(z), ref(z))
        with torch.no_grad():
            _assert_same_outputs(fast(z), ref(z))
        torch.testing.assert_close(_grad(fast, z)[1], _grad(ref, z)[1], rtol=1e-5, atol=1e-6)


def test_vqp_agrees_in_the_contexts_it_supports():
    """vector-quantize-pytorch's FSQ and ours: same indices under compile, export, jit.trace and autocast."""
    vqp = pytest.importorskip("vector_quantize_pytorch", reason="vector-quantize-pytorch is in the dev extra")
    torch.manual_seed(0)
    theirs = vqp.FSQ([8, 5, 5, 5], dim=6).eval()
    ours = FSQ([8, 5, 5, 5], dim=6).eval()
    ours.load_state_dict(theirs.state_dict())
    z = _input("FSQ")
    expected = theirs(z)
    torch._dynamo.reset()
    runs = {
        "compile": torch.compile(ours, fullgraph=True, backend="aot_eager")(z),
        "export": torch.export.export(ours, (z,)).module()(z),
        "jit.trace": torch.jit.trace(ours, (z,), check_trace=False)(z),
    }
    for context, got in runs.items():
        assert torch.equal(got[1], expected[1].long()), context
        assert torch.equal(got[0], expected[0]), context


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_autocast_indices_equal_plain_float32(backend):
    """Without a projection autocast changes nothing before the quantizer: the indices inside
    autocast (without force_quantization_f32) are those of plain float32, on both backends."""
    q = iFSQ([17] * 4, force_quantization_f32=False, backend=backend)
    z = torch.randn(8, 500, 4, generator=torch.Generator().manual_seed(3)) * 2
    expected = q(z)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(q(z)[1], expected)
        assert torch.equal(q.codes_to_indices(q.indices_to_codes(expected)), expected)


def test_fake_tensor_mode_decodes_and_trains_with_usage_tracking():
    """Decoding (grouped indices included) and a training forward that tracks usage trace under FakeTensorMode,
    with the shapes of eager code; the trace counts nothing."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ifsq_quant import ResidualFSQ

    q = FSQ([8, 5, 5, 5], track_usage=True, index_groups=[2, 2]).train()
    r = ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=3, dim=16).eval()
    z, x = torch.randn(2, 4, 6, 6), torch.randn(2, 10, 16)
    eager = (q(z), q.indices_to_codes(q(z)[1]), r.get_output_from_indices(r(x)[1]))
    samples = q.usage.num_samples
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_z, fake_x = mode.from_tensor(z), mode.from_tensor(x)
        out, indices = q(fake_z)
        decoded = q.indices_to_codes(indices)
        residual = r.get_output_from_indices(r(fake_x)[1])
    assert (out.shape, indices.shape, decoded.shape, residual.shape) == (eager[0][0].shape, eager[0][1].shape, eager[1].shape, eager[2].shape)
    assert q.usage.num_samples == samples

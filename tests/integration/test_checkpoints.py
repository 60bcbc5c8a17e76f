"""How codec and model code builds, loads and decodes the modules: the meta device and to_empty(),
state_dicts across track_usage settings, int32 indices, and a decode-only module exported to ONNX."""

from __future__ import annotations

import warnings

import pytest
import torch

from ifsq_quant import FSQ, GroupedResidualFSQ, ResidualFSQ, iFSQ

MODULES = {
    "FSQ": lambda: FSQ([8, 5, 5, 5], dim=16),
    "iFSQ": lambda: iFSQ([17] * 4, dim=16, track_usage=True, orthogonal_rotation=True),
    "ResidualFSQ": lambda: ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=3, dim=16),
    "ResidualFSQ soft clamp": lambda: ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=3, dim=16, bound_hard_clamp=False,
                                                  soft_clamp_input_value=2.0, residual_f32=True),
    "ResidualFSQ 1.17.8": lambda: ResidualFSQ(levels=[4] * 8, num_quantizers=1, dim=16, vqp_version="1.17.8"),
    "GroupedResidualFSQ": lambda: GroupedResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=3, dim=16, groups=2),
}


@pytest.mark.parametrize("assign", [False, True])
@pytest.mark.parametrize("name", MODULES)
def test_built_on_the_meta_device(name, assign):
    """Built under torch.device("meta") (as transformers / accelerate build models), moved with
    to_empty() and loaded: exactly the outputs of a normally built module, in eval and training."""
    torch.manual_seed(0)
    reference = MODULES[name]()
    with torch.device("meta"):
        module = MODULES[name]()
    assert all(p.is_meta for p in module.parameters())
    module.to_empty(device="cpu")
    module.load_state_dict(reference.state_dict(), assign=assign)
    x = torch.randn(2, 10, 16)
    for train in (False, True):
        reference.train(train)
        module.train(train)
        torch.manual_seed(1)
        expected = reference(x)
        torch.manual_seed(1)
        got = module(x)
        assert all(torch.equal(a, b) for a, b in zip(expected, got))
    if hasattr(reference, "scales"):
        assert torch.equal(module.scales, reference.scales) and torch.isfinite(module.scales).all()


def test_usage_counts_load_across_track_usage_settings():
    counting = FSQ([8, 5, 5, 5], track_usage=True).train()
    counting(torch.randn(3, 7, 4))
    plain = FSQ([8, 5, 5, 5])
    with pytest.warns(UserWarning, match="has usage counts but this module was built with track_usage=False"):
        assert plain.load_state_dict(counting.state_dict()).unexpected_keys == []
    other = FSQ([8, 5, 5, 5], track_usage=True).train()
    other(torch.randn(1, 5, 4))
    with pytest.warns(UserWarning, match="no usage counts .* keeps its own counts"):
        assert other.load_state_dict(plain.state_dict()).missing_keys == []
    assert other.usage.num_samples == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # counts present on both sides: loaded, no warning
        other.load_state_dict(counting.state_dict())
    assert other.usage.num_samples == 21
    # in a residual module too (every stage's counts)
    residual = ResidualFSQ(levels=[5, 5], num_quantizers=2, track_usage=True)
    with pytest.warns(UserWarning, match="no usage counts"):
        ResidualFSQ(levels=[5, 5], num_quantizers=2, track_usage=True).load_state_dict(ResidualFSQ(levels=[5, 5], num_quantizers=2).state_dict())
    with pytest.warns(UserWarning, match="track_usage=False"):
        ResidualFSQ(levels=[5, 5], num_quantizers=2).load_state_dict(residual.state_dict())


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16])
def test_codec_decode_paths_take_int32_and_int64_indices(dtype):
    torch.manual_seed(0)
    fsq = FSQ([8, 5, 5, 5])
    rvq = ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=3, dim=16, quantize_dropout=True).eval()
    out, indices = rvq(torch.randn(2, 9, 16))
    assert torch.equal(rvq.get_output_from_indices(indices.to(dtype)), out)
    dropped = indices.clone()
    dropped[..., 2] = -1
    assert torch.equal(rvq.get_output_from_indices(dropped.to(dtype)), rvq.get_output_from_indices(indices[..., :2]))
    codes, idx = fsq(torch.randn(2, 9, 4))
    assert torch.equal(fsq.indices_to_codes(idx.to(dtype)), codes)


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64])
def test_wide_unsigned_indices_are_refused_by_every_module(dtype):
    rvq = ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=2)
    indices = torch.tensor([[3, 2]]).to(dtype)
    for decode in (rvq.get_output_from_indices, rvq.get_codes_from_indices, FSQ([8, 5, 5, 5]).indices_to_codes,
                   GroupedResidualFSQ(dim=8, groups=2, levels=[8, 5, 5, 5], num_quantizers=2).get_output_from_indices):
        with pytest.raises(TypeError, match="integer tensor"):
            decode(indices[None].expand(2, 1, 2) if decode.__self__.__class__ is GroupedResidualFSQ else indices)


class _Decoder(torch.nn.Module):
    """What a codec exports: indices -> the quantizer's output (b, n, dim)."""

    def __init__(self, rvq):
        super().__init__()
        self.rvq = rvq

    def forward(self, indices):
        return self.rvq.get_output_from_indices(indices)


@pytest.mark.parametrize("vqp_version", [None, "1.17.8"])
def test_decode_only_module_exports_to_onnx(tmp_path, vqp_version):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the dev extra")
    torch.manual_seed(0)
    rvq = ResidualFSQ(levels=[4] * 8, num_quantizers=2, dim=32, vqp_version=vqp_version).eval()
    _, indices = rvq(torch.randn(2, 30, 32))
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_Decoder(rvq), (indices.to(torch.int32),), dynamo=True,
                                    dynamic_shapes={"indices": {0: batch, 1: length}})
    program.save(str(tmp_path / "decoder.onnx"))
    session = ort.InferenceSession(str(tmp_path / "decoder.onnx"))
    for shape in ((2, 30), (3, 17), (1, 1)):  # other batch sizes and lengths than the export's
        _, idx = rvq(torch.randn(*shape, 32))
        got = session.run(None, {session.get_inputs()[0].name: idx.to(torch.int32).numpy()})[0]
        # the same codes; the projection's matmul is onnxruntime's (its rounding may differ in the last ulp)
        torch.testing.assert_close(torch.from_numpy(got), rvq.get_output_from_indices(idx).detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: CUDA autocast of releases before 1.17.3")
def test_releases_before_1_17_3_run_their_whole_forward_outside_cuda_autocast():
    torch.manual_seed(0)
    old = FSQ([8, 5, 5, 5], dim=16, vqp_version="1.17.2").cuda()
    x = torch.randn(2, 10, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, indices = old(x)
    expected_out, expected_indices = old(x)  # without autocast: the projections in float32
    assert out.dtype == torch.float32 and torch.equal(out, expected_out) and torch.equal(indices, expected_indices)

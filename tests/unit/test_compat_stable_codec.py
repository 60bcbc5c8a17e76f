"""Stable Codec's FSQ drop-ins (``ifsq_quant.compat.stable_codec``): what theirs lacks, and where it differs.

The bit-for-bit comparisons with stable-codec and stable-audio-tools are in
``tests/parity/test_families.py``; these tests need neither: the clamp at the grid's ends, the
``half_l`` buffer across dtype conversions and ``to_empty()``, the training draws, usage statistics,
``torch.compile``, ONNX export and int32/int64 decoding.
"""


import pytest
import torch
from torch import nn

from ifsq_quant.compat.stable_codec import DitheredFSQ, ResidualFSQBottleneck, ShapeMismatchError
from tests.helpers import onnx_run


def inputs(shape, seed=0, scale=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def grid_levels(codes: torch.Tensor, module: DitheredFSQ) -> torch.Tensor:
    """Level of each code (..., c*d) on the module's grid, as float64 (exact for codes on the grid)."""
    return ((codes.double().unflatten(-1, (module.num_codebooks, module.codebook_dim)) + module.scale)
            / module.half_l.double()).round()


def test_attributes_and_empty_state_dict():
    q = DitheredFSQ([8, 5, 5, 5], num_codebooks=2, scale=0.5)
    assert (q.codebook_dim, q.codebook_size, q.num_codebooks, q.dim) == (4, 1000, 2, 8)
    assert q.state_dict() == {} and q.levels == [8, 5, 5, 5] and q.allowed_dtypes == (torch.float32, torch.float64)
    # the step between grid points, computed as Python evaluates `scale * 2 / (levels - 1)`: a reciprocal, then a product
    assert torch.equal(q.half_l, (torch.tensor([7, 4, 4, 4]).reciprocal() * 1.0))
    assert q.half_l.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_eval_codes_are_grid_points_and_indices_exact(dtype):
    q = DitheredFSQ([8, 5, 5, 5], num_codebooks=2).eval()
    x = inputs((3, 7, 8), scale=2.0).to(dtype)
    codes, indices = q(x)
    assert codes.dtype == dtype and codes.shape == x.shape
    assert indices.dtype == torch.int64 and indices.shape == (3, 7, 2)
    exact = q(x.double() if dtype in (torch.float16, torch.bfloat16) else x)[0]  # half inputs are quantized in float64
    levels = grid_levels(exact, q).long()
    assert torch.equal(indices, (levels * torch.tensor([1, 8, 40, 200])).sum(-1))
    if dtype == torch.float32:  # decoding computes in half_l's dtype, float32: the float32 forward's codes
        assert torch.equal(q.indices_to_codes(indices), codes)
    for index_dtype in (torch.int32, torch.int64):
        assert torch.equal(q.indices_to_codes(indices.to(index_dtype)), q.indices_to_codes(indices))


@pytest.mark.parametrize(("scale", "skip_tanh", "magnitude"), [(0.5, False, 3.0), (1.0, True, 4.0), (0.25, True, 1.0)])
def test_off_grid_inputs_get_the_edge_code_and_an_index_in_the_codebook(scale, skip_tanh, magnitude):
    """Theirs leaves the grid here (scale < 1 under tanh, or inputs past +-scale with skip_tanh); ours
    clamps the level: the edge codes +-scale and in-range indices, which decode to the codes."""
    q = DitheredFSQ([5, 4], scale=scale).eval()
    x = inputs((4, 50, 2), scale=magnitude)
    codes, indices = q(x, skip_tanh=skip_tanh)
    levels = grid_levels(codes, q)
    assert ((levels >= 0) & (levels <= torch.tensor([4, 3]))).all()
    y = x if skip_tanh else torch.tanh(x)
    beyond = y.abs() > scale + q.half_l / 2
    assert beyond.any()  # the test reaches past the grid
    assert torch.equal(codes[beyond].abs(), torch.full_like(codes[beyond], scale))  # +-scale exactly
    assert ((indices >= 0) & (indices < 20)).all()
    assert torch.equal(q.indices_to_codes(indices), codes)
    with pytest.raises(ValueError, match="out of range|>= 0"):
        q.indices_to_codes(torch.tensor([[[20]]]))  # theirs would wrap it onto code 0


def test_half_l_follows_dtype_conversions_and_survives_to_empty():
    """half_l is converted by Module.to as theirs (a bf16 round trip keeps the rounded step), and
    to_empty() brings back its values."""
    q = DitheredFSQ([7, 6, 5], scale=0.3)
    step = q.half_l.clone()
    q.to(torch.bfloat16)
    assert q.half_l.dtype == torch.bfloat16 and torch.equal(q.half_l, step.to(torch.bfloat16))
    q.float()
    assert q.half_l.dtype == torch.float32 and torch.equal(q.half_l, step.to(torch.bfloat16).float())
    x = inputs((2, 9, 3))
    codes, _ = q.eval()(x)
    assert torch.equal((grid_levels(codes, q).float() * q.half_l - 0.3).flatten(-2), codes)  # the rounded step makes the grid
    q.double().to_empty(device="cpu")
    assert q.half_l.dtype == torch.float64 and torch.equal(q.half_l, step.to(torch.bfloat16).double())
    assert torch.equal(q._levels, torch.tensor([7, 6, 5])) and torch.equal(q._basis, torch.tensor([1, 7, 42]))


def test_meta_device_then_to_empty():
    with torch.device("meta"):
        q = DitheredFSQ([8, 5, 5, 5], scale=0.7, track_usage=True)
    q.to_empty(device="cpu")
    built = DitheredFSQ([8, 5, 5, 5], scale=0.7)
    assert torch.equal(q.half_l, built.half_l) and q.usage.num_samples == 0
    x = inputs((2, 9, 4))
    assert all(torch.equal(a, b) for a, b in zip(q.eval()(x), built.eval()(x)))


def test_training_draws_two_masks_then_the_dither():
    """Per sample: keep the raw tanh value (mask 1) or the grid code; then keep that (mask 2) or
    replace it by the raw value plus U(-0.5, 0.5) steps. Draws: bernoulli (b,1,1,1) twice, then rand_like."""
    q = DitheredFSQ([8, 5], noise_dropout=0.4, scale=1.0).train()
    x = inputs((6, 5, 2))
    torch.manual_seed(3)
    codes, indices = q(x)
    after = torch.get_rng_state()
    torch.manual_seed(3)
    raw = torch.bernoulli(torch.full((6, 1, 1, 1), 0.4)).bool()
    kept = torch.bernoulli(torch.full((6, 1, 1, 1), 0.4)).bool()
    noise = torch.rand(6, 5, 1, 2)
    assert torch.equal(torch.get_rng_state(), after)
    y = torch.tanh(x).unsqueeze(-2)
    grid = q.eval()(x)[0].unsqueeze(-2)
    expected = torch.where(kept, torch.where(raw, y, grid), y + (noise - 0.5) * q.half_l)
    assert torch.equal(codes, expected.flatten(-2))
    assert ((indices >= 0) & (indices < 40)).all()
    q.noise_dropout = 1  # an integer probability works (theirs fails in torch.bernoulli)
    torch.manual_seed(0)
    assert torch.equal(q.train()(x)[0], torch.tanh(x))


def test_training_gradient_is_straight_through():
    q = DitheredFSQ([8, 5], noise_dropout=0.5).train()
    x = inputs((4, 3, 2)).requires_grad_(True)
    q(x)[0].sum().backward()
    torch.testing.assert_close(x.grad, 1 - torch.tanh(x.detach()) ** 2)


def test_track_usage_counts_every_forward():
    q = DitheredFSQ([8, 5], num_codebooks=2, track_usage=True).eval()
    x = inputs((3, 4, 4), scale=2.0)
    _, indices = q(x)
    assert q.usage.num_samples == 24
    assert torch.equal(q.usage.code_counts, torch.bincount(indices.flatten(), minlength=40))
    q.train()(x)
    assert q.usage.num_samples == 48
    with pytest.warns(UserWarning, match="no usage counts"):
        q.load_state_dict({})  # theirs' (empty) state_dict, strict


@pytest.mark.parametrize("train", [False, True])
def test_nan_gets_level_zero_and_scale_is_read_at_every_call(train):
    """NaN inputs: level 0 of their dimension, an index in the codebook (theirs casts NaN to an integer).
    Setting scale moves the grid and keeps the step, as theirs reads self.scale at every call."""
    q = DitheredFSQ([5, 4]).train(train)
    x = inputs((3, 4, 2))
    x[:, 0, 0] = float("nan")
    _, indices = q(x)
    assert torch.equal(indices[:, 0] % 5, torch.zeros(3, 1, dtype=torch.int64)) and (indices < 20).all()
    step = q.half_l.clone()
    q.scale = 0.5
    assert torch.equal(q.half_l, step)
    codes, _ = q.eval()(torch.full((1, 1, 2), 3.0))
    level = torch.round((torch.tanh(torch.tensor(3.0)) + 0.5) / step)
    assert torch.equal(codes[0, 0], level * step - 0.5)
    with pytest.raises(ValueError, match="scale"):
        q.scale = -1.0


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="levels"):
        DitheredFSQ([5, 1])
    with pytest.raises(ValueError, match="scale"):
        DitheredFSQ([5], scale=0.0)
    with pytest.raises(ValueError, match="noise_dropout"):
        DitheredFSQ([5], noise_dropout=1.5)
    with pytest.raises(ValueError, match="num_codebooks"):
        DitheredFSQ([5], num_codebooks=0)
    q = DitheredFSQ([8, 5], num_codebooks=2)
    with pytest.raises(ShapeMismatchError, match=r"\(b, n, 4\)") as error:
        q(torch.randn(2, 3, 5))
    assert isinstance(error.value, AssertionError)  # theirs asserts
    with pytest.raises(AssertionError, match="num_codebooks = 2"):
        q.indices_to_codes(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer"):
        q.indices_to_codes(torch.zeros(2, 2))


def test_residual_bottleneck_round_trip():
    """Stages at scales 1, 1/4, 1/16 of 5 levels: each stage's residual is within its grid, and the
    decoded sum is within half the last step of tanh(x)."""
    stages = [([5] * 3, 1.0), ([5] * 3, 0.25), ([5] * 3, 0.0625)]
    bottleneck = ResidualFSQBottleneck(stages)
    assert bottleneck.training and not any(stage.training for stage in bottleneck.quantizers)
    assert bottleneck.n_codebooks == 3 and bottleneck.codebook_size == sum(map(len, stages)) * 3  # theirs, not a codebook size
    assert not any(p.requires_grad for p in bottleneck.parameters())
    x = inputs((2, 3, 40))
    ids = bottleneck.encode(x)
    assert [t.shape for t in ids] == [(2, 40, 1)] * 3 and all(t.dtype == torch.int64 for t in ids)
    decoded = bottleneck.decode(ids)
    assert decoded.dtype == torch.float32 and decoded.shape == (2, 3, 40)
    assert (decoded.double() - torch.tanh(x.double())).abs().max() <= 0.0625 / 4 + 1e-6
    assert torch.equal(bottleneck.decode(torch.stack(ids)), decoded)  # anything indexable by stage
    assert torch.equal(bottleneck.decode([t.int() for t in ids]), decoded)
    with pytest.raises(ValueError, match="one length"):
        ResidualFSQBottleneck([([5, 5], 1.0), ([5], 0.5)])


class _Call(nn.Module):
    def __init__(self, module, method, **kwargs):
        super().__init__()
        self.module, self.method, self.kwargs = module, method, kwargs

    def forward(self, *args):
        return getattr(self.module, self.method)(*args, **self.kwargs)


@pytest.mark.parametrize("skip_tanh", [False, True])
def test_compile_fullgraph_equals_eager(skip_tanh):
    q = DitheredFSQ([8, 5, 5, 5], scale=0.7).eval()
    x = inputs((2, 9, 4), scale=2.0)
    torch._dynamo.reset()
    forward = torch.compile(lambda x: q(x, skip_tanh=skip_tanh), fullgraph=True, backend="aot_eager")
    decode = torch.compile(q.indices_to_codes, fullgraph=True, backend="aot_eager")
    codes, indices = q(x, skip_tanh=skip_tanh)
    got = forward(x)
    assert torch.equal(got[0], codes) and torch.equal(got[1], indices)
    assert torch.equal(decode(indices), q.indices_to_codes(indices))
    bottleneck = ResidualFSQBottleneck([([5] * 4, 1.0), ([5] * 4, 0.25)]).eval()
    encode = torch.compile(bottleneck.encode, fullgraph=True, backend="aot_eager")
    assert all(torch.equal(a, b) for a, b in zip(encode(x.transpose(1, 2)), bottleneck.encode(x.transpose(1, 2))))


def test_onnx_export_of_encode_and_decode():
    """The eval forward (the encoder side) and indices_to_codes (int32 and int64) exported with the dynamo
    exporter and run by onnxruntime."""
    q = DitheredFSQ([8, 5, 5, 5], scale=0.7).eval()
    x = inputs((2, 9, 4), scale=2.0)
    codes, indices = onnx_run(_Call(q, "forward"), (x,))
    assert torch.equal(codes, q(x)[0]) and torch.equal(indices, q(x)[1])
    for index_dtype in (torch.int32, torch.int64):
        (decoded,) = onnx_run(_Call(q, "indices_to_codes"), (indices.to(index_dtype),))
        assert torch.equal(decoded, q.indices_to_codes(indices))

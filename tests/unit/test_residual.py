"""ResidualFSQ / GroupedResidualFSQ: round trips, dropout, dtypes, errors."""

from __future__ import annotations

import pytest
import torch

from ifsq_quant import FSQ, GroupedResidualFSQ, ResidualFSQ
from tests.helpers import residual_inputs as inputs


@pytest.mark.parametrize("activation", [None, "tanh", "sigmoid"])
@pytest.mark.parametrize("levels", [[8, 5, 5], [4, 4], [17, 17]])
@pytest.mark.parametrize("bins", ["symmetric", "round", "equal"])
def test_round_trip_and_range(activation, levels, bins):
    if bins == "round" and 2 in levels:
        pytest.skip("L = 2 is refused by the round layout")
    q = ResidualFSQ(levels=levels, num_quantizers=4, dim=6, activation=activation, bins=bins).eval()
    x = inputs((3, 64, 6)) * 2
    with torch.no_grad():
        out, idx, codes = q(x, return_all_codes=True)
    assert idx.shape == (3, 64, 4)
    assert idx.min() >= 0 and idx.max() < q.codebook_size
    assert torch.equal(q.get_output_from_indices(idx), out)
    torch.testing.assert_close(q.project_out(codes.sum(0)), out)


@pytest.mark.parametrize("shape,channel_first", [((2, 5), False), ((2, 4, 4, 5), False), ((2, 5, 4, 3), True), ((2, 5), True)])
def test_round_trip_layouts(shape, channel_first):
    q = ResidualFSQ(levels=[5, 5, 5, 5, 5], num_quantizers=2, activation="sigmoid", is_channel_first=channel_first).eval()
    x = inputs(shape)
    out, idx = q(x)
    assert out.shape == x.shape
    expected = (shape[0], 2, *shape[2:]) if channel_first else (*shape[:-1], 2)
    assert idx.shape == expected
    assert torch.equal(q.get_output_from_indices(idx, channel_first=channel_first), out)
    if channel_first:  # the default decode takes channel-last indices and returns channel-last codes
        assert torch.equal(q.get_output_from_indices(idx.movedim(1, -1)), out.movedim(1, -1))


def test_all_codes_channel_first():
    q = ResidualFSQ(levels=[5, 4], num_quantizers=3, is_channel_first=True).eval()
    x = inputs((2, 2, 3, 4))
    out, idx, codes = q(x, return_all_codes=True)
    assert idx.shape == (2, 3, 3, 4) and codes.shape == (3, 2, 3, 4, 2)  # codes stay channel-last
    assert torch.equal(codes, q.get_codes_from_indices(idx, channel_first=True))
    assert torch.equal(codes, q.get_codes_from_indices(idx.movedim(1, -1)))
    torch.testing.assert_close(codes.sum(0).movedim(-1, 1), out)


def test_residual_refines():
    """Each extra stage lowers the reconstruction error of a (soft-clamped) input."""
    x = inputs((4, 256, 4)).clamp(-1, 1)
    errors = []
    for n in (1, 2, 3):
        q = ResidualFSQ(levels=[5, 5, 5, 5], num_quantizers=n, activation="sigmoid").eval()
        errors.append((q(x)[0] - x).abs().mean().item())
    assert errors[0] > errors[1] > errors[2]


def test_sigmoid_stages_are_ifsq():
    q = ResidualFSQ(levels=[7, 7], num_quantizers=2, activation="sigmoid")
    assert not q.bound_hard_clamp and q.soft_clamp_input_value is None
    assert q.layers[0].activation.name == "sigmoid" and q.layers[0].bins == "symmetric"
    x = inputs((2, 30, 2))
    stage0 = FSQ(levels=[7, 7], activation="sigmoid", bins="symmetric").eval()
    assert torch.equal(q.eval()(x)[1][..., 0], stage0(x)[1])


def test_quantize_dropout_only_in_training_with_grad():
    q = ResidualFSQ(levels=[5, 5], num_quantizers=3, quantize_dropout=True)
    x = inputs((2, 30, 2))
    assert (q.eval()(x)[1] >= 0).all()
    with torch.no_grad():
        assert (q.train()(x)[1] >= 0).all()
    assert not ResidualFSQ(levels=[5, 5], num_quantizers=1, quantize_dropout=True).quantize_dropout


def test_gradient_sigmoid_stages():
    q = ResidualFSQ(levels=[9, 9], num_quantizers=3, dim=4, activation="sigmoid")
    x = inputs((2, 16, 4)).requires_grad_()
    q(x)[0].square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_empty_and_special_values():
    q = ResidualFSQ(levels=[5, 5], num_quantizers=2).eval()
    out, idx = q(torch.zeros(0, 4, 2))
    assert out.shape == (0, 4, 2) and idx.shape == (0, 4, 2)
    assert q.get_output_from_indices(idx).shape == (0, 4, 2)
    special = torch.tensor([[[float("nan"), 0.0], [float("inf"), float("-inf")]]])
    for activation in (None, "sigmoid"):
        q = ResidualFSQ(levels=[5, 4], num_quantizers=3, activation=activation).eval()
        idx = q(special)[1]
        assert idx.min() >= 0 and idx.max() < q.codebook_size


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.float32])
@pytest.mark.parametrize("residual_f32", [False, True])
@pytest.mark.parametrize("kwargs", [dict(), dict(dim=12, bound_hard_clamp=False, activation="sigmoid"),
                                    dict(is_channel_first=True, quantize_dropout=True)])
def test_decoding_returns_the_module_dtype_exactly(dtype, residual_f32, kwargs):
    """get_output_from_indices / get_codes_from_indices of a .half()/.bfloat16()/.double() module
    return its dtype and reproduce the forward's output bit for bit (eval mode)."""
    q = ResidualFSQ(levels=[7, 5, 4], num_quantizers=3, residual_f32=residual_f32, **kwargs).to(dtype).eval()
    d = kwargs.get("dim", 3)
    x = (inputs((2, d, 5, 6) if kwargs.get("is_channel_first") else (2, 60, d), seed=1) * 0.8).to(dtype)
    with torch.no_grad():
        out, idx, codes = q(x, return_all_codes=True)
        channel_first = kwargs.get("is_channel_first", False)
        decoded = q.get_output_from_indices(idx, channel_first=channel_first)
        assert out.dtype == decoded.dtype == codes.dtype == q.get_codes_from_indices(idx, channel_first=channel_first).dtype == dtype
        assert torch.equal(decoded, out)
        if kwargs.get("quantize_dropout"):  # coarse indices decode in the same dtype
            assert q.get_output_from_indices(idx[:, :2], channel_first=channel_first).dtype == dtype


def test_float64_module_decodes_float64_codes():
    """A float64 module's codes are computed in float64 (not float32 codes cast up)."""
    q = ResidualFSQ(levels=[7, 5], num_quantizers=3).double().eval()
    x = inputs((2, 50, 2), seed=2).double()
    out, idx, codes = q(x, return_all_codes=True)
    assert torch.equal(q.get_output_from_indices(idx), out)
    for i, stage in enumerate(q.layers):
        k = stage.indices_to_level_indices(idx[..., i]).double()
        expected = k * (2 / (torch.tensor(q.levels, dtype=torch.float64) - 1)).float().double() - 1
        torch.testing.assert_close(codes[i], expected * q.scales[i], rtol=0, atol=0)


class _FakeDist:
    """Counts all_reduce calls of an apparently initialized 2-rank group (adds 1 to the tensor)."""

    def __init__(self, monkeypatch):
        import ifsq_quant.dropout as dropout

        self.calls = 0
        monkeypatch.setattr(dropout.dist, "is_available", lambda: True)
        monkeypatch.setattr(dropout.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dropout.dist, "get_world_size", lambda group=None: 2)
        monkeypatch.setattr(dropout.dist, "all_reduce", self.all_reduce)

    def all_reduce(self, tensor, *args, **kwargs):
        self.calls += 1
        tensor += 1


@pytest.mark.parametrize("quantize_dropout", [False, True])
def test_grouped_all_reduce_only_when_dropout_needs_the_seed(monkeypatch, quantize_dropout):
    fake = _FakeDist(monkeypatch)
    g = GroupedResidualFSQ(dim=6, groups=3, levels=[5, 5], num_quantizers=3, quantize_dropout=quantize_dropout)
    x = inputs((2, 10, 6))
    g.eval()(x)
    with torch.no_grad():
        g.train()(x)
    assert fake.calls == 0
    g.train()(x)
    g.train()(x)
    assert fake.calls == (2 if quantize_dropout else 0)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(levels=[8, 1]), ValueError, "levels"),
    (dict(levels="85"), TypeError, "levels"),
    (dict(num_quantizers=0), ValueError, "num_quantizers"),
    (dict(dim=0), ValueError, "dim"),
    (dict(activation="sigmoid", bound_hard_clamp=True), ValueError, "bound_hard_clamp"),
    (dict(soft_clamp_input_value=2.0), ValueError, "soft_clamp_input_value"),
    (dict(bound_hard_clamp=False, soft_clamp_input_value=-1.0), ValueError, "soft_clamp_input_value"),
    (dict(bound_hard_clamp=False, soft_clamp_input_value=[1.0, 2.0, 3.0]), ValueError, "soft_clamp_input_value"),
    (dict(eps=1e-3), ValueError, "eps"),
    (dict(channel_first=True), TypeError, "is_channel_first"),
    (dict(preserve_symmetry=True), TypeError, "bins"),
    (dict(num_codebooks=2), ValueError, "num_codebooks"),
    (dict(index_groups=[1, 1]), ValueError, "index_groups"),
    (dict(quantize_dropout=True, quantize_dropout_cutoff_index=3), ValueError, "quantize_dropout_cutoff_index"),
    (dict(quantize_dropout_cutoff_index=-1), ValueError, "quantize_dropout_cutoff_index"),
    (dict(quantize_dropout_multiple_of=0), ValueError, "quantize_dropout_multiple_of"),
    (dict(bins="nope"), ValueError, "bins"),
    (dict(not_an_argument=1), TypeError, "not_an_argument"),
])
def test_bad_constructor_arguments(kwargs, exc, match):
    args = dict(levels=[8, 5], num_quantizers=3) | kwargs
    with pytest.raises(exc, match=match):
        ResidualFSQ(**args)


def test_bad_inputs_and_indices():
    q = ResidualFSQ(levels=[5, 5], num_quantizers=3)
    with pytest.raises(ValueError, match="features"):
        q(torch.randn(2, 10, 3))
    with pytest.raises(TypeError, match="floating-point"):
        q(torch.ones(2, 10, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="Tensor"):
        q([[1.0, 2.0]])
    idx = torch.zeros(2, 10, 3, dtype=torch.int64)
    with pytest.raises(TypeError, match="integer"):
        q.get_output_from_indices(idx.float())
    with pytest.raises(ValueError, match="out of range"):
        q.get_output_from_indices(idx + 25)
    with pytest.raises(ValueError, match="out of range"):
        q.get_output_from_indices(idx - 2)
    with pytest.raises(ValueError, match="num_quantizers"):
        q.get_output_from_indices(torch.zeros(2, 10, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="quantize_dropout"):
        q.get_output_from_indices(idx[..., :2])
    # -1 is read as a dropped stage, also without quantize dropout (as the anchor)
    assert torch.equal(q.get_output_from_indices(idx.masked_fill(torch.ones_like(idx, dtype=torch.bool), -1)), torch.zeros(2, 10, 2))


def test_grouped_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        GroupedResidualFSQ(dim=7, groups=2, levels=[5], num_quantizers=2)
    with pytest.raises(ValueError, match="groups"):
        GroupedResidualFSQ(dim=8, groups=0, levels=[5], num_quantizers=2)
    with pytest.raises(ValueError, match="is_channel_first"):
        GroupedResidualFSQ(dim=8, groups=2, levels=[5], num_quantizers=2, accept_image_fmap=True, is_channel_first=False)
    g = GroupedResidualFSQ(dim=8, groups=2, levels=[5, 5, 5, 5], num_quantizers=2)
    with pytest.raises(ValueError, match="features"):
        g(torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match="group axis"):
        g.get_output_from_indices(torch.zeros(3, 2, 3, 2, dtype=torch.int64))


def test_deep_stacks_of_many_levels_keep_finite_gradients():
    """L ** -i underflows float32 for deep stacks ([1000, 1000], 20 stages): those stages add 0, and the
    input gradient stays finite (no 1 / 0 in the backward)."""
    q = ResidualFSQ(levels=[1000, 1000], num_quantizers=20).train()
    assert (q.scales[-1] == 0).all()
    x = torch.randn(4, 8, 2, requires_grad=True)
    out, indices = q(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert indices.min() >= 0 and indices.max() < q.codebook_size
    reference = ResidualFSQ(levels=[1000, 1000], num_quantizers=12).eval()  # the stages whose scales do not underflow
    assert torch.equal(q.eval()(x)[0], reference(x)[0])


def test_quantize_dropout_without_gradients_warns():
    q = ResidualFSQ(levels=[5, 5], num_quantizers=3, quantize_dropout=True).train()
    with pytest.warns(UserWarning, match="without gradients, so no stage was dropped.*use_reentrant=False"):
        with torch.no_grad():
            _, indices = q(torch.randn(2, 50, 2))
    assert (indices >= 0).all()


def test_soft_clamp_and_grouped_decode_errors_name_the_argument():
    with pytest.raises(TypeError, match="soft_clamp_input_value must be a number"):
        ResidualFSQ(levels=[5, 5], num_quantizers=2, bound_hard_clamp=False, soft_clamp_input_value="1")
    with pytest.raises(TypeError, match="soft_clamp_input_value must hold numbers"):
        ResidualFSQ(levels=[5, 5], num_quantizers=2, bound_hard_clamp=False, soft_clamp_input_value=[1.0, "2"])
    g = GroupedResidualFSQ(dim=4, groups=2, levels=[5, 5], num_quantizers=2)
    _, indices = g(torch.randn(2, 7, 4))
    with pytest.raises(ValueError, match="the groups' indices must have one shape"):
        g.get_output_from_indices([indices[0], indices[1][:, :3]])
    with pytest.raises(ValueError, match="leading group axis of size 2"):
        g.get_output_from_indices(indices[:1])
    assert torch.equal(g.get_output_from_indices(list(indices)), g.get_output_from_indices(indices))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_table_decoding_of_large_batches_matches_decoding_row_by_row(dtype):
    """Stages of batches with more rows than codes are decoded through a table (dropped stages
    through its zero row); small batches row by row: the same outputs bit for bit."""
    torch.manual_seed(0)
    r = ResidualFSQ(dim=16, levels=[8, 5, 5, 5], num_quantizers=3).to(dtype).eval()
    indices = torch.randint(0, 1000, (2, 1200, 3))
    indices[:, ::7, 2] = -1  # dropped last stage
    table = r.get_output_from_indices(indices)
    rows = torch.cat([r.get_output_from_indices(indices[:, i:i + 200]) for i in range(0, 1200, 200)], dim=1)
    assert torch.equal(table, rows)
    assert torch.equal(r.get_codes_from_indices(indices), torch.cat(
        [r.get_codes_from_indices(indices[:, i:i + 200]) for i in range(0, 1200, 200)], dim=2))
    with pytest.raises(ValueError, match="out of range"):
        r.get_output_from_indices(indices.masked_fill(indices == 5, 1000))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("version", ["1.14.24", "1.17.8"])
def test_first_residual_bound_releases_decode_what_the_forward_returns_in_half_modules(dtype, version):
    """Before 1.18.5 the first residual is the float32 bound, so a half-precision module's forward returns
    float32; its decode returns the same tensor, dtype included."""
    module = ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=3, vqp_version=version).to(dtype).eval()
    out, indices = module(inputs((2, 200, 4)).to(dtype))
    decoded = module.get_output_from_indices(indices)
    assert out.dtype == decoded.dtype == torch.float32 and torch.equal(decoded, out)


def test_first_residual_bound_releases_with_projections_refuse_half_modules_by_name():
    """That release's forward fails there (float32 sum into half project_out weights): a ValueError naming it."""
    module = ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=2, dim=16, vqp_version="1.17.8").half()
    with pytest.raises(ValueError, match="1.17.8.*half-precision module"):
        module(torch.randn(2, 10, 16).half())
    with pytest.raises(ValueError, match="1.17.8.*half-precision module"):
        module.get_output_from_indices(torch.zeros(2, 10, 2, dtype=torch.long))
    f32 = ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=2, dim=16, vqp_version="1.17.8", residual_f32=True).half().eval()
    out, indices = f32(torch.randn(2, 10, 16).half())
    assert out.dtype == torch.float16 and torch.equal(f32.get_output_from_indices(indices), out)

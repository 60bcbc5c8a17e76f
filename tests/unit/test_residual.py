"""ResidualFSQ / GroupedResidualFSQ: parity with vector-quantize-pytorch, round trips, dropout, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ifsq_quant import FSQ, GroupedResidualFSQ, ResidualFSQ

vqp = pytest.importorskip("vector_quantize_pytorch")

LEVELS = [[8, 5, 5], [4, 4], [7, 5, 3], [2, 3], [16, 6, 6, 6]]


def inputs(shape, seed=0):
    """Gaussian features at several magnitudes plus exact zeros and grid points (bin edges)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.tensor([0.3, 1.0, 3.0])[torch.randint(0, 3, shape, generator=g)]
    flat = x.view(-1)
    flat[: flat.numel() // 10] = 0.0
    flat[flat.numel() // 10: flat.numel() // 5] = torch.linspace(-1.5, 1.5, flat.numel() // 5 - flat.numel() // 10)
    return x


def pair(seed=0, **kwargs):
    """The anchor and ours, built with the same arguments (and the same projection weights)."""
    torch.manual_seed(seed)
    anchor = vqp.ResidualFSQ(**kwargs)
    ours = ResidualFSQ(**kwargs)
    if ours.has_projections:
        ours.project_in.load_state_dict(anchor.project_in.state_dict())
        ours.project_out.load_state_dict(anchor.project_out.state_dict())
    return anchor, ours


def assert_same(anchor_out, ours_out):
    (qa, ia, *ca), (qb, ib, *cb) = anchor_out, ours_out
    assert ib.dtype == torch.int64
    assert qa.shape == qb.shape and ia.shape == ib.shape
    assert torch.equal(qa, qb)
    assert torch.equal(ia.long(), ib)
    for a, b in zip(ca, cb):
        assert torch.equal(a, b)


# --- parity with vector-quantize-pytorch (eval) -------------------------------------------------

@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("num_quantizers", [1, 2, 3, 4])
def test_parity_sequence(levels, num_quantizers):
    anchor, ours = pair(levels=levels, num_quantizers=num_quantizers)
    anchor.eval(), ours.eval()
    x = inputs((3, 200, len(levels)))
    assert_same(anchor(x, return_all_codes=True), ours(x, return_all_codes=True))


@pytest.mark.parametrize("levels", [[8, 5, 5], [4, 4]])
@pytest.mark.parametrize("kwargs", [
    dict(bound_hard_clamp=False),
    dict(bound_hard_clamp=False, soft_clamp_input_value=2.0),
    dict(bound_hard_clamp=False, soft_clamp_input_value=[1.5, 3.0]),
    dict(dim=7),
])
def test_parity_options(levels, kwargs):
    if isinstance(kwargs.get("soft_clamp_input_value"), list):
        kwargs = dict(kwargs, soft_clamp_input_value=[1.5, 3.0, 2.0][: len(levels)])
    anchor, ours = pair(levels=levels, num_quantizers=3, **kwargs)
    anchor.eval(), ours.eval()
    x = inputs((2, 100, kwargs.get("dim", len(levels))))
    with torch.no_grad():
        assert_same(anchor(x), ours(x))


@pytest.mark.parametrize("shape", [(2, 3, 50), (2, 3, 6, 5), (1, 3, 2, 4, 5)])
def test_parity_channel_first(shape):
    anchor, ours = pair(levels=[8, 5, 5], num_quantizers=3, is_channel_first=True)
    anchor.eval(), ours.eval()
    x = inputs(shape)
    qa, ia = anchor(x)
    qb, ib = ours(x)
    assert ib.shape == (shape[0], 3, *shape[2:])  # the anchor's layout: quantizer axis second
    assert_same((qa, ia), (qb, ib))


@pytest.mark.parametrize("accept_image_fmap", [False, True])
def test_parity_grouped(accept_image_fmap):
    kwargs = dict(dim=8, groups=2, levels=[5, 4], num_quantizers=3)
    torch.manual_seed(0)
    anchor = vqp.GroupedResidualFSQ(accept_image_fmap=accept_image_fmap, is_channel_first=accept_image_fmap, **kwargs).eval()
    ours = GroupedResidualFSQ(accept_image_fmap=accept_image_fmap, **kwargs).eval()
    for a, b in zip(anchor.rvqs, ours.rvqs):
        b.project_in.load_state_dict(a.project_in.state_dict())
        b.project_out.load_state_dict(a.project_out.state_dict())
    x = inputs((2, 8, 4, 5) if accept_image_fmap else (2, 30, 8))
    qa, ia = anchor(x)
    qb, ib = ours(x)
    assert_same((qa, ia), (qb, ib))
    if accept_image_fmap:
        # decoding takes channel-last indices, as theirs; channel_first=True reads the forward's own layout
        assert torch.equal(ours.get_output_from_indices(ib, channel_first=True), qb)
        assert torch.equal(ours.get_output_from_indices(ib.movedim(2, -1)), qb.movedim(1, -1))
    else:
        assert torch.equal(ours.get_output_from_indices(ib), qb)
    if not accept_image_fmap:  # the anchor's code lookups assume channel-last indices
        _, _, ca = anchor(x, return_all_codes=True)
        _, _, cb = ours(x, return_all_codes=True)
        assert isinstance(cb, tuple) and len(cb) == 2
        for a, b in zip(ca, cb):
            assert torch.equal(a, b)
        assert torch.equal(anchor.get_codes_from_indices(ia), ours.get_codes_from_indices(ib))
    assert torch.equal(anchor.codebooks, ours.codebooks)


@pytest.mark.parametrize("kwargs", [dict(dim=7), dict(orthogonal_rotation=True)])
def test_checkpoints_interchange(kwargs):
    """Same state_dict keys as the anchor: its checkpoints load here and quantize the same."""
    anchor = vqp.ResidualFSQ(levels=[5, 5, 5], num_quantizers=2, **kwargs).eval()
    ours = ResidualFSQ(levels=[5, 5, 5], num_quantizers=2, **kwargs).eval()
    assert sorted(anchor.state_dict()) == sorted(ours.state_dict())
    ours.load_state_dict(anchor.state_dict())
    x = inputs((2, 30, kwargs.get("dim", 3)))
    assert_same(anchor(x), ours(x))


def test_codebooks_and_attributes_match():
    anchor, ours = pair(levels=[8, 5, 5], num_quantizers=3)
    assert torch.equal(anchor.codebooks, ours.codebooks)
    assert torch.equal(anchor.scales, ours.scales)
    assert torch.equal(anchor.soft_clamp_input_value, ours.soft_clamp_input_value)
    assert anchor.codebook_size == ours.codebook_size == 200
    assert len(ours.layers) == 3 and all(isinstance(layer, FSQ) for layer in ours.layers)


# --- round trips and ranges -----------------------------------------------------------------

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


def test_channel_first_decode_follows_the_anchor():
    """The anchor's decoding ignores is_channel_first: it takes (b, n, q) indices and returns (b, n, dim);
    ours does the same by default, so code written for it runs unchanged."""
    torch.manual_seed(0)
    anchor = vqp.ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=3, dim=16, is_channel_first=True).eval()
    ours = ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=3, dim=16, is_channel_first=True).eval()
    ours.load_state_dict(anchor.state_dict())
    x = inputs((2, 16, 20))
    qa, ia = anchor(x)
    qb, ib = ours(x)
    assert_same((qa, ia), (qb, ib))
    channel_last = ia.movedim(1, -1)
    assert torch.equal(ours.get_output_from_indices(channel_last), anchor.get_output_from_indices(channel_last))
    assert torch.equal(ours.get_codes_from_indices(channel_last), anchor.get_codes_from_indices(channel_last))
    with pytest.raises(ValueError, match="channel-last"):
        ours.get_output_from_indices(ib)  # (b, q, n) read as channel-last: 20 quantizer entries


@pytest.mark.parametrize("grouped", [False, True])
def test_projection_has_bias_false_loads_anchor_checkpoints(grouped):
    """vector-quantize-pytorch gives projection_has_bias to the stages only (which have no
    projection): its residual projections keep their bias, and so do ours (strict load)."""
    kwargs = dict(levels=[8, 5, 5], num_quantizers=3, projection_has_bias=False)
    torch.manual_seed(0)
    if grouped:
        anchor = vqp.GroupedResidualFSQ(dim=16, groups=2, **kwargs).eval()
        ours = GroupedResidualFSQ(dim=16, groups=2, **kwargs).eval()
    else:
        anchor = vqp.ResidualFSQ(dim=8, **kwargs).eval()
        ours = ResidualFSQ(dim=8, **kwargs).eval()
    assert sorted(anchor.state_dict()) == sorted(ours.state_dict())
    ours.load_state_dict(anchor.state_dict(), strict=True)
    x = inputs((2, 40, 16 if grouped else 8))
    with torch.no_grad():
        assert_same(anchor(x), ours(x))


@settings(max_examples=40, deadline=None)
@given(levels=st.lists(st.integers(2, 16), min_size=1, max_size=4), num_quantizers=st.integers(1, 4),
       scale=st.sampled_from([0.1, 1.0, 4.0]), hard_clamp=st.booleans(), seed=st.integers(0, 2**16))
def test_parity_property(levels, num_quantizers, scale, hard_clamp, seed):
    anchor, ours = pair(levels=levels, num_quantizers=num_quantizers, bound_hard_clamp=hard_clamp)
    anchor.eval(), ours.eval()
    x = torch.randn(2, 16, len(levels), generator=torch.Generator().manual_seed(seed)) * scale
    with torch.no_grad():
        assert_same(anchor(x, return_all_codes=True), ours(x, return_all_codes=True))
        assert torch.equal(ours.get_output_from_indices(ours(x)[1]), ours(x)[0])


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


# --- quantize dropout -----------------------------------------------------------------------

@pytest.mark.parametrize("cutoff,multiple_of", [(0, 1), (1, 1), (0, 2)])
def test_quantize_dropout_matches_anchor(cutoff, multiple_of):
    kwargs = dict(levels=[8, 5, 5], num_quantizers=4, quantize_dropout=True,
                  quantize_dropout_cutoff_index=cutoff, quantize_dropout_multiple_of=multiple_of)
    anchor, ours = pair(**kwargs)
    anchor.train(), ours.train()
    x = inputs((2, 40, 3))
    kept = set()
    for seed in range(12):
        torch.manual_seed(seed)
        qa, ia = anchor(x)
        torch.manual_seed(seed)
        qb, ib = ours(x)
        assert_same((qa, ia), (qb, ib))
        dropped = (ib == -1)
        # dropped stages are a suffix, identical across positions
        assert (dropped == dropped[:1, :1]).all()
        n_kept = int((~dropped[0, 0]).sum())
        kept.add(n_kept)
        assert torch.equal(ours.get_output_from_indices(ib), qb)
        assert torch.equal(ours.get_output_from_indices(ib[..., :n_kept]), qb)
        assert torch.equal(anchor.get_output_from_indices(ia), ours.get_output_from_indices(ib))
    assert len(kept) > 1 and min(kept) >= cutoff + 1
    assert all(k % multiple_of == 0 or k == 4 for k in kept)
    # an explicit seed fixes the draw
    assert_same(anchor(x, rand_quantize_dropout_fixed_seed=5), ours(x, rand_quantize_dropout_fixed_seed=5))


def test_quantize_dropout_only_in_training_with_grad():
    q = ResidualFSQ(levels=[5, 5], num_quantizers=3, quantize_dropout=True)
    x = inputs((2, 30, 2))
    assert (q.eval()(x)[1] >= 0).all()
    with torch.no_grad():
        assert (q.train()(x)[1] >= 0).all()
    assert not ResidualFSQ(levels=[5, 5], num_quantizers=1, quantize_dropout=True).quantize_dropout


def _grouped_training_runs(kwargs, seeds):
    """Ours and vector-quantize-pytorch's GroupedResidualFSQ in training, each forward under the
    same seed: asserts equal outputs and yields ours ``(module, quantized, indices)``."""
    torch.manual_seed(0)
    anchor = vqp.GroupedResidualFSQ(**kwargs).train()
    ours = GroupedResidualFSQ(**kwargs).train()
    x = inputs((2, 20, 6))
    for seed in seeds:
        torch.manual_seed(seed)
        qa, ia = anchor(x)
        torch.manual_seed(seed)
        qb, ib = ours(x)
        assert_same((qa, ia), (qb, ib))
        yield ours, qb, ib


def test_grouped_dropout_shared_and_matches_anchor():
    kwargs = dict(dim=6, groups=3, levels=[5, 5], num_quantizers=4, quantize_dropout=True)
    for ours, qb, ib in _grouped_training_runs(kwargs, range(6)):
        assert ((ib == -1) == (ib[:1] == -1)).all()  # every group drops the same stages
        assert torch.equal(ours.get_output_from_indices(ib), qb)


# --- gradients ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(), dict(bound_hard_clamp=False), dict(dim=8)])
def test_gradients_match_anchor(kwargs):
    anchor, ours = pair(levels=[8, 5, 5], num_quantizers=3, **kwargs)
    x = (inputs((2, 50, kwargs.get("dim", 3))) * 0.5).requires_grad_()
    xa = x.detach().clone().requires_grad_()
    w = torch.randn(x.shape)
    (anchor(xa)[0] * w).sum().backward()
    (ours(x)[0] * w).sum().backward()
    assert x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, xa.grad)
    if ours.has_projections:
        assert ours.project_in.weight.grad.abs().sum() > 0


def test_gradient_sigmoid_stages():
    q = ResidualFSQ(levels=[9, 9], num_quantizers=3, dim=4, activation="sigmoid")
    x = inputs((2, 16, 4)).requires_grad_()
    q(x)[0].square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# --- dtypes and edge cases -------------------------------------------------------------------

def test_half_input_in_float32_module_promotes_as_anchor():
    """A bf16 input into a float32 module: the anchor's float32 buffers promote the residuals
    to float32 (so the output is float32); ours does the same ops."""
    anchor, ours = pair(levels=[5, 5], num_quantizers=2)
    x = inputs((2, 10, 2)).bfloat16()
    qa, ia = anchor.eval()(x)
    qb, ib = ours.eval()(x)
    assert qb.dtype == qa.dtype == torch.float32
    assert_same((qa, ia), (qb, ib))
    # residual_f32 returns the input's dtype
    f32 = ResidualFSQ(levels=[5, 5], num_quantizers=2, residual_f32=True).eval()
    out, idx = f32(x)
    assert out.dtype == torch.bfloat16 and torch.equal(idx, ib)


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


HALF = [torch.bfloat16, torch.float16]


def half_pair(dtype, residual_f32=False, **kwargs):
    anchor, ours = pair(**kwargs)
    ours = type(ours)(residual_f32=residual_f32, **kwargs)
    ours.load_state_dict(anchor.state_dict())
    return anchor.to(dtype).eval(), ours.to(dtype).eval()


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("kwargs", [dict(), dict(dim=16), dict(bound_hard_clamp=False), dict(dim=16, bound_hard_clamp=False)])
def test_half_precision_modules_match_anchor(dtype, kwargs):
    """An existing .bfloat16()/.half() model keeps its tokens after the swap: the residuals are
    computed in the module's dtype, op for op as vector-quantize-pytorch."""
    kwargs = dict(levels=[8, 5, 5, 5], num_quantizers=4, **kwargs)
    anchor, ours = half_pair(dtype, **kwargs)
    x = (inputs((4, 256, kwargs.get("dim", 4)), seed=3) * 0.7).to(dtype)
    with torch.no_grad():
        qa, ia, ca = anchor(x, return_all_codes=True)
        qb, ib, cb = ours(x, return_all_codes=True)
    assert qb.dtype == qa.dtype == dtype and cb.dtype == dtype
    assert_same((qa, ia, ca), (qb, ib, cb))


@pytest.mark.parametrize("dtype", HALF)
def test_residual_f32_option(dtype):
    """residual_f32=True computes the residuals in float32: the fine stages' tokens change (that is
    the point: half precision rounds the residuals) and the output is in the module's dtype."""
    kwargs = dict(levels=[8, 5, 5, 5], num_quantizers=4, dim=16)
    anchor, default = half_pair(dtype, **kwargs)
    _, f32 = half_pair(dtype, residual_f32=True, **kwargs)
    x = (inputs((4, 256, 16), seed=3) * 0.7).to(dtype)
    with torch.no_grad():
        q_default, i_default = default(x)
        q_f32, i_f32 = f32(x)
        reference = ResidualFSQ(**kwargs).eval()
        reference.load_state_dict(f32.state_dict())
        _, i_reference = reference.double()(x.double())
    assert q_f32.dtype == dtype
    assert "residual_f32=True" in repr(f32) and "residual_f32" not in repr(default)
    assert torch.equal(i_default, anchor(x)[1].long())
    assert not torch.equal(i_f32, i_default)
    # float32 residuals agree with a float64 computation more often than half-precision ones
    assert (i_f32 == i_reference).float().mean() > (i_default == i_reference).float().mean()


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


def test_numpy_integer_arguments():
    np = pytest.importorskip("numpy")
    kwargs = dict(levels=[5, 5, 4], num_quantizers=np.int64(4), dim=np.int64(16), quantize_dropout=True,
                  quantize_dropout_cutoff_index=np.int32(1), quantize_dropout_multiple_of=np.int64(1))
    anchor, ours = pair(**kwargs)
    assert type(ours.num_quantizers) is int and type(ours.dim) is int
    x = inputs((2, 20, 16))
    assert_same(anchor.eval()(x), ours.eval()(x))
    grouped = GroupedResidualFSQ(dim=np.int64(16), groups=np.int64(2), levels=[5, 5], num_quantizers=np.int64(2))
    assert grouped.groups == 2 and grouped.rvqs[0].dim == 8
    assert grouped(x)[1].shape == (2, 2, 20, 2)
    for name in ("num_quantizers", "dim"):
        with pytest.raises(TypeError, match=name):
            ResidualFSQ(**dict(levels=[5, 5], num_quantizers=2) | {name: True})
        with pytest.raises(TypeError, match=name):
            ResidualFSQ(**dict(levels=[5, 5], num_quantizers=2) | {name: 2.0})
    with pytest.raises(TypeError, match="groups"):
        GroupedResidualFSQ(dim=8, groups=np.float64(2.0), levels=[5], num_quantizers=2)


# --- distributed: the dropout seed's all_reduce ---------------------------------------------

class _FakeDist:
    """Counts all_reduce calls of an apparently initialized 2-rank group (adds 1 to the tensor)."""

    def __init__(self, monkeypatch):
        import ifsq_quant.residual as residual

        self.calls = 0
        monkeypatch.setattr(residual.dist, "is_available", lambda: True)
        monkeypatch.setattr(residual.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(residual.dist, "get_world_size", lambda group=None: 2)
        monkeypatch.setattr(residual.dist, "all_reduce", self.all_reduce)

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


def test_grouped_training_rng_stream_matches_anchor_without_dropout():
    """Without quantize dropout no collective runs, but the seed is still drawn from torch's RNG,
    so noise dropout (random draws after it) matches vector-quantize-pytorch under one seed."""
    kwargs = dict(dim=6, groups=3, levels=[5, 5], num_quantizers=3, noise_dropout=0.5)
    assert len(list(_grouped_training_runs(kwargs, range(3)))) == 3


def _gloo_worker(rank, world_size, port, quantize_dropout, results):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(rank)  # different local draws: only the all_reduce makes them agree
        g = GroupedResidualFSQ(dim=4, groups=2, levels=[5, 5], num_quantizers=4, quantize_dropout=quantize_dropout).train()
        kept = []
        for _ in range(6):
            idx = g(inputs((1, 8, 4)))[1]
            kept.append(int((idx[0, 0, 0] >= 0).sum()))
        results[rank] = kept
    finally:
        dist.destroy_process_group()


def test_grouped_dropout_seed_is_shared_over_gloo_ranks():
    """With quantize dropout every rank drops the same stages (the seed is all-reduced)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_gloo_worker, args=(2, port, True, results), nprocs=2, join=True)
    assert results[0] == results[1] and len(set(results[0])) > 1


# --- errors --------------------------------------------------------------------------------

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

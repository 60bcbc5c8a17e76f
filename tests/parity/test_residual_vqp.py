"""ResidualFSQ / GroupedResidualFSQ against vector-quantize-pytorch (the installed release)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ifsq_quant import FSQ, GroupedResidualFSQ, ResidualFSQ
from tests.helpers import residual_inputs as inputs

vqp = pytest.importorskip("vector_quantize_pytorch")


LEVELS = [[8, 5, 5], [4, 4], [7, 5, 3], [2, 3], [16, 6, 6, 6]]


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


def test_grouped_training_rng_stream_matches_anchor_without_dropout():
    """Without quantize dropout no collective runs, but the seed is still drawn from torch's RNG,
    so noise dropout (random draws after it) matches vector-quantize-pytorch under one seed."""
    kwargs = dict(dim=6, groups=3, levels=[5, 5], num_quantizers=3, noise_dropout=0.5)
    assert len(list(_grouped_training_runs(kwargs, range(3)))) == 3

"""FSQ with its default activation is bit-identical to vector-quantize-pytorch's FSQ."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vector_quantize_pytorch import FSQ as VqpFSQ

from ifsq_quant import FSQ

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def _pair(levels, **kwargs):
    """Our FSQ and theirs with the same arguments and the same projection/rotation weights."""
    theirs = VqpFSQ(levels, **kwargs)
    ours = FSQ(levels, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _assert_same(ours, theirs, z):
    out_a, idx_a = ours(z)
    out_b, idx_b = theirs(z)
    assert out_a.shape == out_b.shape and out_a.dtype == out_b.dtype
    assert torch.equal(out_a, out_b)
    if idx_b is None:
        assert idx_a is None
    else:
        assert idx_a.dtype == torch.int64 and idx_a.shape == idx_b.shape
        assert torch.equal(idx_a, idx_b.long())
    return out_a, idx_a


level_lists = st.lists(st.integers(3, 20), min_size=1, max_size=5).filter(lambda ls: torch.tensor(ls).prod() < 2**20)


@SETTINGS
@given(levels=level_lists, scale=st.sampled_from([0.01, 0.3, 1.0, 3.0, 30.0]), seed=st.integers(0, 2**16),
       symmetric=st.booleans(), hard_clamp=st.booleans())
def test_sequence_layout_matches(levels, scale, seed, symmetric, hard_clamp):
    torch.manual_seed(seed)
    ours, theirs = _pair(levels, preserve_symmetry=symmetric, bound_hard_clamp=hard_clamp)
    _assert_same(ours, theirs, torch.randn(3, 257, len(levels)) * scale)


@SETTINGS
@given(levels=st.lists(st.integers(2, 12), min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_level_two_with_symmetry_matches(levels, seed):
    torch.manual_seed(seed)
    ours, theirs = _pair(levels, preserve_symmetry=True)
    _assert_same(ours, theirs, torch.randn(2, 100, len(levels)) * 2)


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [17, 17, 17, 17], [8, 6, 5], [7, 5, 5, 5, 5]])
@pytest.mark.parametrize("shape_kind", ["image", "video", "channel_first_seq"])
def test_channel_first_layouts_match(levels, shape_kind):
    torch.manual_seed(0)
    d = len(levels)
    shape = {"image": (2, d, 9, 7), "video": (2, d, 3, 5, 4), "channel_first_seq": (2, d, 33)}[shape_kind]
    ours, theirs = _pair(levels, channel_first=shape_kind == "channel_first_seq")
    out, idx = _assert_same(ours, theirs, torch.randn(shape) * 2)
    assert torch.equal(ours.indices_to_codes(idx), theirs.indices_to_codes(idx.int()))


@pytest.mark.parametrize("num_codebooks", [2, 3])
def test_several_codebooks_and_projection_match(num_codebooks):
    torch.manual_seed(1)
    ours, theirs = _pair([8, 5, 5], num_codebooks=num_codebooks, dim=20)
    out, idx = _assert_same(ours, theirs, torch.randn(4, 50, 20))
    assert idx.shape == (4, 50, num_codebooks)
    torch.testing.assert_close(ours.indices_to_codes(idx), theirs.indices_to_codes(idx.int()))


def test_orthogonal_rotation_matches():
    torch.manual_seed(2)
    ours, theirs = _pair([7, 7, 7, 7], orthogonal_rotation=True)
    _assert_same(ours, theirs, torch.randn(2, 64, 4))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtypes_match(dtype):
    torch.manual_seed(3)
    ours, theirs = _pair([8, 5, 5, 5])
    _assert_same(ours, theirs, (torch.randn(2, 300, 4) * 2).to(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kwargs", [
    dict(force_quantization_f32=False), dict(preserve_symmetry=True, force_quantization_f32=False),
    dict(preserve_symmetry=True, bound_hard_clamp=True, force_quantization_f32=False),
    dict(preserve_symmetry=True, allowed_dtypes="with the input's"), dict(preserve_symmetry=True, levels=[300, 5])])
def test_half_inputs_not_upcast_match(dtype, kwargs):
    """A bf16/fp16 input that theirs does not upcast (force_quantization_f32=False, or the dtype in
    allowed_dtypes): their symmetric layout then computes in that dtype op by op, and so do we;
    the gradients agree too. With L = 300 (forced to float32: the default) nothing changes."""
    kwargs = dict(kwargs)
    levels = kwargs.pop("levels", [8, 5, 5, 5])
    if kwargs.get("allowed_dtypes") == "with the input's":
        kwargs["allowed_dtypes"] = (torch.float32, torch.float64, dtype)
    ours, theirs = _pair(levels, **kwargs)
    torch.manual_seed(6)
    z = (torch.randn(4, 4000, len(levels)) * 1.5).to(dtype).requires_grad_(True)
    _assert_same(ours, theirs, z)
    grads = [torch.autograd.grad(module(z)[0].float().sum(), z)[0] for module in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1], rtol=2e-2, atol=2e-2)
    # the methods theirs exposes, called directly on a half-precision z (theirs never upcasts there)
    flat = z.detach()[0]
    for method in ("quantize", "symmetry_preserving_bound", "bound"):
        a, b = getattr(ours, method)(flat), getattr(theirs, method)(flat)
        # where the dtype rounds L - 0.5 up (L = 300 in bf16), theirs reaches level L, past the
        # code 1; ours clamps to L - 1 (the forward above is forced to float32 there)
        inside = b <= 1
        assert torch.equal(a[inside], b[inside]) and a.max() <= 1
        assert inside.all() or (levels[0] == 300 and dtype == torch.bfloat16)


def test_noise_dropout_matches_under_one_seed():
    ours, theirs = _pair([5, 5, 5], preserve_symmetry=True, noise_dropout=0.5)
    ours.train(), theirs.train()
    z = torch.randn(4, 200, 3)
    torch.manual_seed(4)
    out_a, idx_a = ours(z)
    torch.manual_seed(4)
    out_b, idx_b = theirs(z)
    assert torch.equal(out_a, out_b) and torch.equal(idx_a, idx_b.long())
    assert not torch.equal(out_a, ours.eval()(z)[0])  # the noise did something


@pytest.mark.parametrize("levels,symmetric", [([8, 5, 5, 5], False), ([17, 17, 17, 17], False), ([6, 5, 4], True)])
def test_gradients_match(levels, symmetric):
    torch.manual_seed(5)
    ours, theirs = _pair(levels, preserve_symmetry=symmetric)
    z = torch.randn(3, 100, len(levels)) * 1.5
    grad_out = torch.randn_like(z)
    grads = []
    for module in (ours, theirs):
        x = z.clone().requires_grad_(True)
        module(x)[0].backward(grad_out)
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_codebook_attributes_match():
    ours, theirs = _pair([8, 5, 5, 5])
    assert ours.codebook_size == theirs.codebook_size
    assert ours.codebook_dim == theirs.codebook_dim
    assert torch.equal(ours.implicit_codebook, theirs.implicit_codebook)
    codes = theirs.implicit_codebook
    assert torch.equal(ours.codes_to_indices(codes), theirs.codes_to_indices(codes).long())

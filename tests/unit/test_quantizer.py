"""FSQ and iFSQ (``ifsq_quant.quantizer``): clear errors (`docs/design.md`, section 8) for bad arguments
and input, defined results at the edges (infinities, NaN, empty batches, levels beyond int32 and float32)."""

import numpy as np
import pytest
import torch

from ifsq_quant import FSQ, iFSQ


@pytest.mark.parametrize("levels,error,match", [
    ([], ValueError, "non-empty"),
    ([8, 1], ValueError, ">= 2"),
    ([8, 5.0], TypeError, "integers"),
    ("855", TypeError, "list of integers"),
    (8, TypeError, "list of integers"),
    ([8, True], TypeError, "integers"),
])
def test_bad_levels(levels, error, match):
    with pytest.raises(error, match=match):
        FSQ(levels)


def test_level_two_points_to_other_layouts():
    with pytest.raises(ValueError, match='"symmetric".*"equal"'):
        FSQ([2, 4])
    assert FSQ([2, 4], preserve_symmetry=True)(torch.randn(3, 2))[1].max() < 8
    assert iFSQ([2, 4], bins="equal")(torch.randn(3, 2))[1].max() < 8


@pytest.mark.parametrize("kwargs,match", [
    ({"bins": "nearest"}, "bins"),
    ({"activation": "relu"}, "activation"),
    ({"activation": 3}, "activation"),
    ({"eps": -1.0}, "eps"),
    ({"backend": "cuda"}, "backend"),
    ({"num_codebooks": 0}, "num_codebooks"),
    ({"num_codebooks": 2, "keep_num_codebooks_dim": False}, "keep_num_codebooks_dim"),
    ({"noise_dropout": 1.5}, "noise_dropout"),
    ({"preserve_symmetry": True, "bins": "equal"}, "preserve_symmetry"),
    ({"bound_hard_clamp": True, "activation": "sigmoid"}, "bound_hard_clamp"),
    ({"index_groups": [2, 1]}, "add up"),
    ({"index_groups": [4, 0]}, "positive"),
    ({"dim": 0}, "dim"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        FSQ([8, 5, 5, 5], **kwargs)


def test_last_dim_mismatch():
    q = FSQ([8, 5, 5, 5])
    with pytest.raises(ValueError, match=r"expected 4 features in the last axis \(batch, \.\.\., 4\), got an input of shape \(2, 10, 5\)"):
        q(torch.randn(2, 10, 5))
    with pytest.raises(ValueError, match=r"expected 4 features in axis 1: 4-D and 5-D inputs are channel-first \(batch, 4, \.\.\., \.\.\.\)"):
        q(torch.randn(2, 5, 8, 8))


def test_layout_mistakes_name_the_shapes_and_the_fix():
    """A channel-last image, a channel-first sequence and channel-first codes are each told what to do."""
    q = FSQ([17] * 4)
    with pytest.raises(ValueError, match=r"got an input of shape \(2, 16, 16, 4\); for a channel-last input .* x\.movedim\(-1, 1\)"):
        q(torch.randn(2, 16, 16, 4))
    with pytest.raises(ValueError, match=r"shape \(2, 4, 10\); a \(batch, dim, seq\) input needs channel_first=True"):
        q(torch.randn(2, 4, 10))
    out, indices = q(torch.randn(2, 4, 16, 16))
    with pytest.raises(ValueError, match=r"must be channel-last.*got shape \(2, 4, 16, 16\); channel-first codes .* \.movedim\(1, -1\)"):
        q.codes_to_indices(out)
    assert torch.equal(q.codes_to_indices(out.movedim(1, -1)), indices)


def test_integer_and_non_tensor_input():
    q = FSQ([8, 5, 5, 5])
    with pytest.raises(TypeError, match="floating-point"):
        q(torch.zeros(2, 10, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        q([[0.0] * 4])
    with pytest.raises(ValueError, match="2-D or more"):
        q(torch.zeros(4))


@pytest.mark.parametrize("shape", [(0, 10, 4), (2, 0, 4), (0, 4, 3, 3)])
def test_empty_batches(shape):
    q = FSQ([8, 5, 5, 5], index_groups=[2, 2])
    out, idx = q(torch.randn(shape))
    assert out.shape == shape
    assert idx.numel() == 0 and idx.dtype == torch.int64
    assert q.indices_to_codes(idx).numel() == 0


def test_non_contiguous_input():
    q = iFSQ([7, 5, 5, 3])
    z = torch.randn(4, 30, 8)[..., ::2]
    assert not z.is_contiguous()
    out, idx = q(z)
    out_c, idx_c = q(z.contiguous())
    assert torch.equal(out, out_c) and torch.equal(idx, idx_c)
    zt = torch.randn(30, 4, 4).transpose(0, 1)
    assert torch.equal(q(zt)[1], q(zt.contiguous())[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_quantized_in_float32(dtype):
    q = iFSQ([17, 17, 17, 17])
    z = (torch.randn(2, 100, 4) * 2).to(dtype)
    out, idx = q(z)
    assert out.dtype == dtype
    out32, idx32 = q(z.float())
    assert torch.equal(idx, idx32) and torch.equal(out, out32.to(dtype))
    x = z.clone().requires_grad_(True)
    q(x)[0].sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("bins", ["round", "symmetric", "equal"])
@pytest.mark.parametrize("cls", [FSQ, iFSQ])
def test_infinities_saturate_and_nan_is_level_zero(cls, bins):
    q = cls([8, 5, 5, 5], bins=bins)
    z = torch.tensor([[float("inf")] * 4, [-float("inf")] * 4, [float("nan")] * 4, [1e30, -1e30, 0.0, 0.0]])
    out, idx = q(z)
    top, bottom = q.indices_to_codes(torch.tensor([q.codebook_size - 1, 0]))
    assert torch.equal(out[0], top) and torch.equal(out[1], bottom)
    assert int(idx[0]) == q.codebook_size - 1 and int(idx[1]) == 0
    assert int(idx[2]) == 0 and torch.equal(out[2], bottom)  # NaN: documented level 0
    assert 0 <= int(idx[3]) < q.codebook_size


def test_large_eps_is_clamped_into_range():
    q = FSQ([17, 9], eps=0.3)  # (L-1)(1+eps)/2 would round past the last level without the clamp
    out, idx = q(torch.randn(1000, 2) * 10)
    assert int(idx.min()) >= 0 and int(idx.max()) < q.codebook_size
    assert out.abs().max() <= 1


def test_codes_to_indices_errors():
    q = FSQ([8, 5, 5, 5])
    with pytest.raises(ValueError, match="last dimension 4"):
        q.codes_to_indices(torch.zeros(3, 5))
    with pytest.raises(TypeError, match="floating-point"):
        q.codes_to_indices(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="finite"):
        q.codes_to_indices(torch.full((3, 4), float("nan")))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(eps=True), TypeError, r"eps must be a number >= 0, got True \(bool\)"),
    (dict(eps="0.1"), TypeError, "eps must be a number"),
    (dict(allowed_dtypes="float32"), TypeError, "allowed_dtypes must be a tuple of torch dtypes"),
    (dict(allowed_dtypes=None), TypeError, "allowed_dtypes must be a tuple of torch dtypes"),
])
def test_arguments_of_the_wrong_type_are_named(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        FSQ([5] * 4, **kwargs)
    assert FSQ([5] * 4, allowed_dtypes=torch.bfloat16).allowed_dtypes == (torch.bfloat16,)


def test_one_hard_clamp_policy_for_fsq_and_ifsq():
    """bound_hard_clamp=True replaces FSQ's default tanh (as vector-quantize-pytorch); any other bound,
    given or a subclass's default, contradicts it."""
    from ifsq_quant import iFSQ
    from ifsq_quant.activations import HardClamp

    assert isinstance(FSQ([17] * 4, bound_hard_clamp=True).activation, HardClamp)
    for make in (lambda: iFSQ([17] * 4, bound_hard_clamp=True), lambda: FSQ([17] * 4, activation="sigmoid", bound_hard_clamp=True)):
        with pytest.raises(ValueError, match="contradicts"):
            make()
    assert isinstance(iFSQ([17] * 4, activation="clamp", bound_hard_clamp=True).activation, HardClamp)


def test_ifsq_with_preserve_symmetry_keeps_its_sigmoid():
    """preserve_symmetry picks the layout; iFSQ's bound stays the sigmoid (documented)."""
    from ifsq_quant import iFSQ

    q = iFSQ([5, 5], preserve_symmetry=True)
    assert q.bins == "symmetric" and q.activation.name == "sigmoid"
    z = torch.randn(100, 2)
    expected = torch.floor(4 * (2 * torch.sigmoid(1.6 * z) - 1 + 1) / 2 + 0.5) * 0.5 - 1
    assert torch.equal(q(z)[0], expected)


def test_eps_must_be_finite_and_bounded():
    for eps in (float("inf"), float("nan"), 1e38):
        with pytest.raises(ValueError, match="eps"):
            FSQ([17], eps=eps)


def test_levels_beyond_int32_and_float32():
    """L >= 2**31 does not overflow, and float64 inputs reach every level even where float32 cannot
    hold L (the edge levels 0 and L - 1 included)."""
    L = 2**31 + 1
    q = FSQ([L], eps=0.0)
    z = torch.tensor([[-float("inf")], [0.0], [float("inf")]], dtype=torch.float64)
    _, idx = q(z)
    assert idx.tolist() == [0, L // 2, L - 1]
    assert q.indices_to_codes(idx).view(-1).tolist() == [-1.0, 0.0, 1.0]


@pytest.mark.parametrize("bins", ["round", "symmetric", "equal"])
@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("L", [2**24 + 3, 2**31 - 1, 2**40 - 1])
def test_float32_inputs_with_levels_beyond_float32(L, backend, bins):
    """Where float32 cannot hold every level (L > 2**24), float32 and bf16 inputs are quantized in
    float64: every index is in [0, L), the ends are 0 and L - 1, odd levels above 2**24 are
    reached, and decoding the indices gives the forward's codes (in float32, as the forward)."""
    quantizer = FSQ([L], eps=0.0, bins=bins, backend=backend)
    hw = L // 2
    # float64 inputs aimed at levels float32 cannot hold, and the saturating ends
    targets = torch.tensor([2**24 + 1, L - 2, L - 4], dtype=torch.float64) if bins == "round" else None
    inf = float("inf")
    z64 = torch.tensor([[-inf], [-50.0], [0.0], [50.0], [inf]], dtype=torch.float64)
    if targets is not None:
        z64 = torch.cat([z64, torch.atanh((targets - hw) / hw)[:, None]])
    for dtype in (torch.float32, torch.bfloat16):
        z = z64.to(dtype)
        out, idx = quantizer(z)
        assert out.dtype == dtype and idx.min() >= 0 and idx.max() <= L - 1
        assert idx[0] == 0 and idx[1] == 0 and idx[3] == L - 1 and idx[4] == L - 1
        assert torch.equal(quantizer.indices_to_codes(idx).to(dtype), out)
        # the same float64 computation as a float64 input of the same values
        assert torch.equal(idx, quantizer(z.double())[1])
    if targets is not None:  # exact targets need float64 inputs (float32 cannot place z that finely)
        assert torch.equal(quantizer(z64)[1][5:].view(-1), targets.long())


def test_indices_to_codes_checks_the_codebook_axis():
    q = FSQ([5, 5], num_codebooks=2)
    with pytest.raises(ValueError, match="codebook axis of size 2"):
        q.indices_to_codes(torch.zeros(2, 3, 3, dtype=torch.long))
    assert q.indices_to_codes(torch.zeros(2, 3, 2, dtype=torch.long)).shape == (2, 3, 4)


def test_numpy_integers_are_accepted():
    q = FSQ(np.array([8, 5, 5, 5]), dim=np.int64(16), num_codebooks=np.int64(1), index_groups=[np.int64(2), np.int64(2)])
    assert q.levels == [8, 5, 5, 5] and q.dim == 16 and q.index_groups == [2, 2]
    out, idx = q(torch.randn(2, 10, 16))
    assert out.shape == (2, 10, 16) and idx.shape == (2, 10, 2)


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="index_groups"):
        FSQ([5, 5], index_groups=3)
    with pytest.raises(TypeError, match="noise_dropout"):
        FSQ([5, 5], noise_dropout="0.5")
    q = FSQ([5, 5])
    with pytest.raises(TypeError, match="indices"):
        q.indices_to_codes(torch.zeros(3, dtype=torch.uint64))
    with pytest.raises(ValueError, match="meta"):
        q(torch.empty(2, 3, 2, device="meta"))
    with pytest.raises(ValueError, match="implicit_codebook"):
        _ = FSQ([5, 5], index_groups=[1, 1]).implicit_codebook
    assert not hasattr(FSQ([5, 5], index_groups=[1, 1]), "implicit_codebook")  # tools that probe attributes pass over it

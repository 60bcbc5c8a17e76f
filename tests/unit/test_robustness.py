"""Boundary inputs, large levels, vector-quantize-pytorch's full surface, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ifsq_quant import FSQ


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

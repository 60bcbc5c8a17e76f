"""iFSQ equals the paper's Algorithm 1 / the official code's simple_bound for odd levels."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ifsq_quant import FSQ, iFSQ


def algorithm_1(z, levels, alpha=1.6):
    """The paper's Algorithm 1, written out with the official code's operation order.

    z: (..., d) float32; returns codes (..., d) and little-endian indices (...,) int64.
    """
    L = torch.tensor(levels, dtype=torch.int32)
    half_l = (L - 1) / 2
    bounded = (2.0 * torch.sigmoid(alpha * z) - 1.0) * half_l
    half_width = L // 2
    codes = bounded.round() / half_width
    basis = torch.cumprod(torch.tensor([1] + list(levels[:-1])), dim=0, dtype=torch.int64)
    level_indices = (codes * half_width + half_width).round().long()
    return codes, (level_indices * basis).sum(-1)


def official_indices(codes, levels):
    """The official code's codes_to_indices (one group): a float32 sum, truncated to int64."""
    half_width = torch.tensor(levels, dtype=torch.int32) // 2
    basis = torch.cumprod(torch.tensor([1] + list(levels[:-1])), dim=0, dtype=torch.int64)
    return ((codes * half_width + half_width) * basis).sum(-1).to(torch.int64)


odd_levels = st.lists(st.sampled_from([3, 5, 7, 9, 11, 15, 17, 33]), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(levels=odd_levels, scale=st.sampled_from([0.1, 1.0, 2.5, 10.0]), seed=st.integers(0, 2**16))
def test_ifsq_is_algorithm_1(levels, scale, seed):
    torch.manual_seed(seed)
    z = torch.randn(2, 300, len(levels)) * scale
    codes, indices = iFSQ(levels)(z)
    ref_codes, ref_indices = algorithm_1(z, levels)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(indices, ref_indices)
    assert torch.equal(indices, official_indices(codes, levels))  # these levels: the official truncation is exact


def _every_level(levels):
    """One input at the centre of every level of every dimension, ``(1, max(levels), d)``."""
    n = max(levels)
    cols = []
    for L in levels:
        r = torch.arange(-(L // 2), L // 2 + 1, dtype=torch.float64) / (L // 2)
        cols.append((torch.atanh(r.clamp(-0.999999, 0.999999)) / 0.8).float().repeat(n // L + 1)[:n])
    return torch.stack(cols, 1)[None]


def test_official_config_warns_where_the_official_indices_lose_a_level():
    """For L = 27 the official codes_to_indices gives one level its neighbour's index (a float32
    product truncated); the loader says so, keeps the exact indices, and the codes are the same."""
    config = {"levels": [27], "do_simple_bound": True, "act_fun": "scale_sigmoid_16"}
    with pytest.warns(UserWarning, match=r"L=27"):
        q = iFSQ.from_official_config(config)
    z = _every_level(config["levels"])
    codes, indices = q(z)
    ref_codes, ref_indices = algorithm_1(z, config["levels"])
    assert torch.equal(codes, ref_codes) and torch.equal(indices[..., 0], ref_indices)
    theirs = official_indices(codes, config["levels"])
    differ = theirs != indices[..., 0]
    assert 0 < int(differ.sum()) < 27 and torch.equal(theirs[differ], indices[..., 0][differ] - 1)
    assert len(set(theirs.view(-1).tolist())) < len(set(indices[..., 0].view(-1).tolist()))  # theirs: two levels share an index
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iFSQ.from_official_config({"levels": [17] * 4, "do_simple_bound": True, "act_fun": "scale_sigmoid_16",
                                   "factorized_bits": [2, 2]})  # the paper's configuration: exact, no warning
    with pytest.warns(UserWarning, match="more than 2..24 codes"):
        iFSQ.from_official_config({"levels": [17] * 8, "do_simple_bound": True, "act_fun": "scale_sigmoid_16"})


def test_official_config_with_factorized_bits():
    config = {"levels": [17, 17, 17, 17], "dim": 4, "factorized_bits": [2, 2], "do_simple_bound": True,
              "act_fun": "scale_sigmoid_16"}
    q = iFSQ.from_official_config(config)
    assert q.index_groups == [2, 2]
    z = torch.randn(2, 4, 8, 8) * 2
    codes, indices = q(z)
    assert indices.shape == (2, 8, 8, 2)
    ref_codes, _ = algorithm_1(z.movedim(1, -1), config["levels"])
    assert torch.equal(codes, ref_codes.movedim(-1, 1))
    # Each group is packed with its own basis, as the official code's factorized_bits.
    lv = q.indices_to_level_indices(indices)
    assert torch.equal(indices[..., 0], lv[..., 0] + 17 * lv[..., 1])
    assert torch.equal(indices[..., 1], lv[..., 2] + 17 * lv[..., 3])
    assert torch.equal(q.indices_to_codes(indices), codes)


def test_official_config_scale_sigmoid_20():
    q = iFSQ.from_official_config({"levels": [9, 9], "do_simple_bound": True, "act_fun": "scale_sigmoid_20"})
    z = torch.randn(4, 100, 2)
    codes, indices = q(z)
    ref_codes, ref_indices = algorithm_1(z, [9, 9], alpha=2.0)
    # the official shape: a trailing group axis, of size 1 without factorized_bits
    assert indices.shape == (4, 100, 1)
    assert torch.equal(codes, ref_codes) and torch.equal(indices[..., 0], ref_indices)
    assert torch.equal(q.indices_to_codes(indices), codes)


def test_official_config_without_simple_bound_is_fsq():
    q = iFSQ.from_official_config({"levels": [8, 5, 5, 5], "do_simple_bound": False})
    z = torch.randn(2, 100, 4)
    assert torch.equal(q(z)[0], FSQ([8, 5, 5, 5])(z)[0])


@pytest.mark.parametrize("config,match", [
    ({"levels": [8, 8], "do_simple_bound": True, "act_fun": "scale_sigmoid_16"}, "odd levels"),
    ({"levels": [9], "do_simple_bound": True, "act_fun": "relu"}, "act_fun"),
    ({"dim": 4}, "levels"),
])
def test_official_config_errors(config, match):
    with pytest.raises(ValueError, match=match):
        iFSQ.from_official_config(config)


def test_official_config_ignores_the_keys_the_official_code_ignores():
    base = {"levels": [9, 9], "do_simple_bound": True, "act_fun": "scale_sigmoid_16"}
    z = torch.randn(3, 20, 2)
    expected = iFSQ.from_official_config(base)(z)
    q = iFSQ.from_official_config(dict(base, eps=1e-6, momentum=0.1))  # RunningFSQ's statistics keys: silent
    assert all(torch.equal(a, b) for a, b in zip(q(z), expected))
    with pytest.warns(UserWarning, match="bogus"):
        iFSQ.from_official_config(dict(base, bogus=1))


def test_even_levels_work_with_ifsq():
    q = iFSQ([8, 6, 4])
    codes, indices = q(torch.randn(1000, 3) * 3)
    assert torch.equal(q.indices_to_codes(indices), codes)
    for i, level in enumerate([8, 6, 4]):
        assert codes[:, i].unique().numel() == level  # every level reachable

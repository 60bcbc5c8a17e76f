"""``ifsq_quant.compat.vqp``: the release table and what the modules refuse, without installing releases
(``tests/parity/test_vqp_releases.py`` compares with the releases themselves), and vector-quantize-pytorch's
``quantize()`` extension point."""

from __future__ import annotations

import random

import pytest
import torch

from ifsq_quant import FSQ, GroupedResidualFSQ, ResidualFSQ, iFSQ
from ifsq_quant.compat.vqp import CHANGES, LATEST, OLDEST, Semantics, _key, semantics


def test_the_table_is_ordered_and_names_only_known_switches():
    firsts = [_key(first) for first, _ in CHANGES]
    assert firsts == sorted(firsts) and len(set(firsts)) == len(firsts)
    fields = set(Semantics.__dataclass_fields__)
    assert all(set(change) <= fields for _, change in CHANGES)
    assert _key(OLDEST) < firsts[0] and firsts[-1] <= _key(LATEST)


def test_switches_per_era():
    old, mid, new = semantics("1.17.8"), semantics("1.22.15"), semantics(None)
    assert (old.first_residual, old.stage_bins, old.stage_scale, old.hard_clamp_default) == ("bound", "round", "levels_minus_one", False)
    assert (mid.first_residual, mid.stage_bins, mid.stage_scale, mid.dropout_needs_grad) == ("input", "round", "levels_minus_one", True)
    assert (new.first_residual, new.stage_bins, new.stage_scale, new.hard_clamp_default) == ("input", "symmetric", "levels", True)
    assert semantics(None) == semantics(LATEST) and new.is_latest
    assert semantics("1.22.15").public_bound == "unrounded" and semantics("1.22.16").public_bound == "codes"


@pytest.mark.parametrize("version,match", [
    ("1.13.9", "before 1.14.0"), ("1.35.0", "newer than"), ("1.33.0", "no such release"), ("2", "release string"),
    ("1.27.17", "returns no codes"),
])
def test_bad_or_unusable_releases_are_refused(version, match):
    with pytest.raises(ValueError, match=match):
        FSQ([5, 5], vqp_version=version)


@pytest.mark.parametrize("make,match", [
    (lambda: FSQ([5, 5], channel_first=True, vqp_version="1.14.5"), "channel_first was added in vector-quantize-pytorch 1.14.7"),
    (lambda: FSQ([5, 5], preserve_symmetry=True, vqp_version="1.20.11"), "preserve_symmetry was added"),
    (lambda: FSQ([5, 5], orthogonal_rotation=True, vqp_version="1.27.21"), "orthogonal_rotation was added in vector-quantize-pytorch 1.28.1"),
    (lambda: ResidualFSQ(levels=[5, 5], num_quantizers=2, is_channel_first=True, vqp_version="1.17.8"), "is_channel_first was added"),
    (lambda: ResidualFSQ(levels=[5, 5], num_quantizers=2, soft_clamp_input_value=2.0, vqp_version="1.20.11"), "soft_clamp_input_value"),
    (lambda: ResidualFSQ(levels=[5, 5], num_quantizers=2, bound_hard_clamp=True, vqp_version="1.25.2"), "bound_hard_clamp was added"),
])
def test_arguments_a_release_did_not_have_are_refused(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_refused_behaviours_name_the_release_and_why():
    with pytest.raises(ValueError, match=r"1\.22\.3.*three levels"):
        FSQ([5, 5], preserve_symmetry=True, vqp_version="1.22.3")
    for version in ("1.21.5", "1.22.12", "1.24.0", "1.27.16"):  # noise dropout that leaves the codebook
        q = FSQ([5, 5], noise_dropout=0.3, vqp_version=version).train()
        with pytest.raises(ValueError, match=rf"{version}.*outside the codebook"):
            q(torch.randn(2, 3, 2))
        assert q.eval()(torch.randn(2, 3, 2))[1].shape == (2, 3)  # eval is that release's as usual
    with pytest.raises(ValueError, match=r"1\.22\.1.*training forward fails"):
        FSQ([5, 5], vqp_version="1.22.1").train()(torch.randn(2, 3, 2))
    with pytest.raises(ValueError, match=r"1\.19\.0.*GroupedResidualFSQ\.forward fails"):
        GroupedResidualFSQ(dim=4, groups=2, levels=[5, 5], num_quantizers=2, vqp_version="1.19.0")
    r = ResidualFSQ(levels=[5, 5], num_quantizers=3, quantize_dropout=True, vqp_version="1.19.1").train()
    with pytest.raises(ValueError, match=r"1\.19\.1.*without a fixed seed"):
        r(torch.randn(2, 3, 2))
    assert r(torch.randn(2, 3, 2), rand_quantize_dropout_fixed_seed=5)[1].shape == (2, 3, 3)
    with pytest.raises(ValueError, match=r"1\.14\.27.*return_indices=True"):
        ResidualFSQ(levels=[5, 5], num_quantizers=2, vqp_version="1.14.27")
    assert FSQ([5, 5], vqp_version="1.14.27")(torch.randn(2, 3, 2))[1] is None  # that release's default
    with pytest.raises(ValueError, match="accept_image_fmap needs vector-quantize-pytorch >= 1.18.5"):
        GroupedResidualFSQ(dim=4, groups=2, levels=[5, 5], num_quantizers=2, accept_image_fmap=True, vqp_version="1.17.8")


def test_old_releases_draw_dropout_from_pythons_random_and_the_grouped_seed_in_eval():
    torch.manual_seed(0)
    g = GroupedResidualFSQ(dim=4, groups=2, levels=[5, 5], num_quantizers=2, quantize_dropout=True, vqp_version="1.14.24").eval()
    random.seed(3)
    state, torch_state = random.getstate(), torch.get_rng_state()
    g(torch.randn(2, 3, 4))
    assert random.getstate() != state  # randint(0, 10**7) on every forward, eval included
    random.setstate(state)
    random.randint(0, 10_000_000)
    assert random.getstate() != state
    torch.manual_seed(0)
    latest = GroupedResidualFSQ(dim=4, groups=2, levels=[5, 5], num_quantizers=2, quantize_dropout=True).eval()
    x = torch.randn(2, 3, 4)
    random.seed(3)
    state, torch_state = random.getstate(), torch.get_rng_state()
    latest(x)
    assert random.getstate() == state and torch.equal(torch.get_rng_state(), torch_state)


def test_first_residual_of_old_releases_is_the_unrounded_bound():
    """Before 1.18.5 stage 0 quantizes its own bound of the input: the tokens differ from the latest's."""
    torch.manual_seed(0)
    old = ResidualFSQ(levels=[4] * 8, num_quantizers=1, dim=8, vqp_version="1.17.8").eval()
    new = ResidualFSQ(levels=[4] * 8, num_quantizers=1, dim=8).eval()
    x = torch.randn(4, 50, 8)
    stage = old.layers[0]
    expected_codes = stage.quantize(stage.bound(x))  # the unrounded bound (level units), quantized once more
    out, indices = old(x)
    assert torch.equal(out, expected_codes)
    assert not torch.equal(indices, new(x)[1])
    assert torch.equal(old.scales, torch.tensor([[1.0] * 8]))  # (L - 1) ** -0


def test_public_bound_of_old_releases_is_unrounded():
    z = torch.randn(10, 3)
    old, new = FSQ([5, 6, 7], vqp_version="1.20.11"), FSQ([5, 6, 7])
    unrounded = old.bound(z)
    assert not torch.equal(unrounded, unrounded.round())
    assert torch.equal(unrounded.round() / torch.tensor([2.0, 3.0, 3.0]), new.bound(z))
    # 1.21.x: the symmetric bound without its floor
    sym = FSQ([5, 5], vqp_version="1.21.5").symmetry_preserving_bound(z[:, :2])
    assert torch.allclose(sym, 2 / 4 * (4 * (torch.tanh(z[:, :2]) + 1) / 2 + 0.5) - 1)


def test_noise_dropout_of_1_22_9_perturbs_the_input_and_stays_in_the_codebook():
    q = FSQ([5, 5], noise_dropout=0.5, vqp_version="1.22.9").train()
    torch.manual_seed(0)
    out, indices = q(torch.randn(8, 100, 2) * 3)
    assert indices.min() >= 0 and indices.max() < 25
    assert torch.equal(q.indices_to_codes(indices), out)  # codes on the grid
    assert not torch.equal(indices, q.eval()(torch.randn(8, 100, 2) * 3)[1])


def test_latest_noise_dropout_warns_that_its_probability_is_one_half():
    with pytest.warns(UserWarning, match="probability 0.5 whatever noise_dropout"):
        FSQ([5, 5], noise_dropout=0.1, preserve_symmetry=True)
    q = FSQ([5, 5], noise_dropout=0.5, preserve_symmetry=True).train()
    torch.manual_seed(0)
    out, _ = q(torch.zeros(1, 20000, 2))
    assert 0.45 < (out != 0).float().mean() < 0.55


def test_ifsq_takes_vqp_version_and_keeps_its_bound():
    q = iFSQ([17] * 4, vqp_version="1.17.8")
    assert q.activation.name == "sigmoid" and q.vqp.release == "1.17.8"
    z = torch.randn(5, 4)
    assert torch.equal(q.bound(z), q.layout.bound(z) * 8)  # unrounded, in level units (eps = 0)


def test_a_subclass_quantize_is_used_by_forward():
    """vector-quantize-pytorch's extension point: a subclass overriding quantize() gets its codes
    (and their indices) from forward."""

    class Coarse(FSQ):
        def quantize(self, z):
            return torch.zeros_like(z)

    out, idx = Coarse([5, 5])(torch.randn(2, 7, 2))
    assert torch.equal(out, torch.zeros(2, 7, 2)) and torch.equal(idx, torch.full((2, 7), 12))

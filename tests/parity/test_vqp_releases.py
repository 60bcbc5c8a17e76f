"""``vqp_version=R`` against vector-quantize-pytorch release R itself, for the releases codecs pin.

Each release is installed into a cached folder (``conftest.py``) and run beside ours in one
process. Hypothesis draws the configuration (levels, stages, groups, dim, layouts, quantize
dropout, soft clamp, noise dropout, input scale and dtype); for each one: strict state_dict loads
both ways, then under one ``torch.manual_seed`` and ``random.seed``, in eval and training mode,
the same outputs, indices, all codes and decodes (ours of their indices), the same torch and
Python RNG states after every forward, and close input gradients.
"""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ifsq_quant import FSQ, GroupedResidualFSQ, ResidualFSQ
from ifsq_quant.compat.vqp import LATEST, semantics

pytestmark = pytest.mark.slow

# the releases published audio codecs and TTS models pin (fish-speech 1.14.24, stable-audio-tools
# 1.14.41, xcodec2 / neucodec 1.17.8, others 1.18.5 and 1.22.15), one per residual-math era, 1.32.0
# (the last release before materialize_codebook) and the latest
RELEASES = list(dict.fromkeys(["1.14.24", "1.14.41", "1.17.8", "1.18.5", "1.20.11", "1.22.15", "1.25.2", "1.27.15", "1.32.0", LATEST]))
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
level_lists = st.lists(st.integers(3, 9), min_size=1, max_size=4)
scales = st.sampled_from([0.5, 1.0, 3.0])


@pytest.fixture(scope="module", params=RELEASES)
def release(request, vqp_release):
    return vqp_release(request.param)


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)


def _rng_states():
    return torch.get_rng_state(), random.getstate()


def _twins(theirs_cls, ours_cls, version: str, **kwargs):
    """Their module and ours with its weights (strict loads both ways)."""
    torch.manual_seed(0)
    theirs = theirs_cls(**kwargs)
    ours = ours_cls(**kwargs, vqp_version=version)
    ours.load_state_dict(theirs.state_dict())
    theirs_again = theirs_cls(**kwargs)
    theirs_again.load_state_dict(ours.state_dict())
    return theirs, ours


def _same_forwards(theirs, ours, x: torch.Tensor, train: bool, grad: bool = True, forward=lambda m, x: m(x)):
    """Both modules in ``train`` mode under the same seeds: equal outputs, indices and RNG states
    after each of two forwards (the second continues the first's random stream); close gradients."""
    theirs.train(train)
    ours.train(train)
    _seeded(1)
    results = []
    for module in (theirs, ours):
        _seeded(1)
        run = []
        for _ in range(2):
            xi = x.detach().clone().requires_grad_(grad and x.is_floating_point())
            with torch.set_grad_enabled(grad):
                out = forward(module, xi)
            if grad and out[0].requires_grad:
                out[0].float().square().sum().backward()
            run.append((out, _rng_states(), xi.grad))
        results.append(run)
    for (out_a, rng_a, grad_a), (out_b, rng_b, grad_b) in zip(*results):
        assert out_a[0].dtype == out_b[0].dtype and torch.equal(out_a[0], out_b[0])
        assert torch.equal(out_a[1].long(), out_b[1].long())
        for extra_a, extra_b in zip(out_a[2:], out_b[2:]):  # all codes
            extra_a = extra_a if isinstance(extra_a, tuple) else (extra_a,)
            extra_b = extra_b if isinstance(extra_b, tuple) else (extra_b,)
            assert all(torch.equal(a, b) for a, b in zip(extra_a, extra_b))
        assert torch.equal(rng_a[0], rng_b[0]), "the torch RNG state after the forward differs"
        assert rng_a[1] == rng_b[1], "the Python random state after the forward differs"
        if grad_a is not None or grad_b is not None:
            torch.testing.assert_close(grad_b, grad_a, rtol=1e-4, atol=1e-5)
    return results[1][-1][0]


# --- FSQ ----------------------------------------------------------------------------------------

@SETTINGS
@given(levels=level_lists, codebooks=st.integers(1, 2), extra_dim=st.sampled_from([0, 3]), layout=st.sampled_from(["seq", "channel_first", "image"]),
       scale=scales, train=st.booleans(), noisy=st.booleans(), half=st.booleans())
def test_fsq(release, levels, codebooks, extra_dim, layout, scale, train, noisy, half):
    s = semantics(release.version)
    d = len(levels) * codebooks
    kwargs = dict(levels=levels, num_codebooks=codebooks, dim=d + extra_dim)
    if layout == "channel_first" and s.has_argument("FSQ", "channel_first"):
        kwargs["channel_first"] = True
    reproduced_noise = s.noise in ("input_scaled", "input", "codes")
    if noisy and train and reproduced_noise:
        kwargs["noise_dropout"] = 0.5 if s.noise == "codes" else 0.3
        if s.noise == "codes":  # theirs requires it with noise dropout
            kwargs["preserve_symmetry"] = True
    theirs, ours = _twins(release.FSQ, FSQ, release.version, **kwargs)
    shape = (3, d + extra_dim, 5, 4) if layout == "image" else (3, d + extra_dim, 20) if kwargs.get("channel_first") else (3, 20, d + extra_dim)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(len(levels))) * scale
    if half and not extra_dim:  # a half-precision input without projections (theirs would need a half module)
        x = x.to(torch.bfloat16)
    out, indices = _same_forwards(theirs, ours, x, train, grad=not half)

    theirs.eval()
    ours.eval()
    assert torch.equal(ours.indices_to_codes(indices), theirs.indices_to_codes(indices.to(torch.int32)).to(ours.indices_to_codes(indices).dtype))
    z = x.movedim(1, -1) if x.ndim >= 4 or kwargs.get("channel_first") else x
    z = z.float().reshape(-1, len(levels))[:64]
    assert torch.equal(ours.bound(z), theirs.bound(z))  # unrounded before 1.22.16, codes after
    assert torch.equal(ours.quantize(z), theirs.quantize(z))
    codes = ours.quantize(z)
    assert torch.equal(ours.codes_to_indices(codes), theirs.codes_to_indices(codes).long())


# --- ResidualFSQ ----------------------------------------------------------------------------------

@st.composite
def residual_configs(draw, version: str):
    s = semantics(version)
    levels = draw(level_lists)
    q = draw(st.integers(1, 4))
    kwargs = dict(levels=levels, num_quantizers=q, dim=len(levels) + draw(st.sampled_from([0, 5])))  # dim is required before 1.18.5
    if s.has_argument("ResidualFSQ", "is_channel_first") and draw(st.booleans()):
        kwargs["is_channel_first"] = True
    if q > 1 and draw(st.booleans()):
        kwargs["quantize_dropout"] = True
        kwargs["quantize_dropout_cutoff_index"] = draw(st.integers(0, q - 1))
        if s.dropout_multiple_of_works and draw(st.booleans()):
            kwargs["quantize_dropout_multiple_of"] = 2
    if s.has_argument("ResidualFSQ", "soft_clamp_input_value") and draw(st.booleans()):
        if s.has_argument("ResidualFSQ", "bound_hard_clamp"):
            kwargs["bound_hard_clamp"] = False
        kwargs["soft_clamp_input_value"] = draw(st.sampled_from([1.5, 3.0]))
    elif s.has_argument("ResidualFSQ", "bound_hard_clamp") and draw(st.booleans()):
        kwargs["bound_hard_clamp"] = False
    return kwargs


@SETTINGS
@given(data=st.data(), scale=scales, mode=st.sampled_from(["eval", "train", "train_no_grad", "train_fixed_seed"]), spatial=st.booleans())
def test_residual(release, data, scale, mode, spatial):
    kwargs = data.draw(residual_configs(release.version))
    theirs, ours = _twins(release.ResidualFSQ, ResidualFSQ, release.version, **kwargs)
    dim, channel_first = kwargs["dim"], kwargs.get("is_channel_first", False)
    shape = ((2, dim, 4, 5) if spatial else (2, dim, 17)) if channel_first else (2, 17, dim)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(dim)) * scale
    forward = (lambda m, x: m(x, rand_quantize_dropout_fixed_seed=123)) if mode == "train_fixed_seed" else (
        (lambda m, x: m(x)) if channel_first else (lambda m, x: m(x, return_all_codes=True)))  # theirs' all codes need channel-last indices
    out, indices = _same_forwards(theirs, ours, x, train=mode != "eval", grad=mode != "train_no_grad", forward=forward)[:2]

    channel_last = indices.movedim(1, -1) if channel_first else indices  # decoding takes channel-last indices, as theirs
    theirs.eval()
    assert torch.equal(ours.get_codes_from_indices(channel_last), theirs.get_codes_from_indices(channel_last))
    decoded = ours.get_output_from_indices(channel_last)
    assert torch.equal(decoded, theirs.get_output_from_indices(channel_last))
    if mode == "eval":
        assert torch.equal(decoded, out.movedim(1, -1) if channel_first else out)
        assert torch.equal(ours.get_output_from_indices(indices, channel_first=True) if channel_first else decoded, out)
        assert torch.equal(ours.codebooks, theirs.codebooks) and torch.equal(ours.scales, theirs.scales)


# --- GroupedResidualFSQ ------------------------------------------------------------------------------

@SETTINGS
@given(levels=level_lists, q=st.integers(1, 3), groups=st.integers(1, 3), extra_dim=st.sampled_from([0, 2]), image=st.booleans(),
       dropout=st.booleans(), scale=scales, mode=st.sampled_from(["eval", "train", "train_no_grad"]))
def test_grouped(release, levels, q, groups, extra_dim, image, dropout, scale, mode):
    s = semantics(release.version)
    image = image and s.has_argument("ResidualFSQ", "is_channel_first")
    dim = groups * (len(levels) + extra_dim)
    kwargs = dict(dim=dim, groups=groups, levels=levels, num_quantizers=q, quantize_dropout=dropout and q > 1)
    if image:
        kwargs.update(accept_image_fmap=True, is_channel_first=True)  # theirs needs both
    theirs, ours = _twins(release.GroupedResidualFSQ, GroupedResidualFSQ, release.version, **kwargs)
    x = torch.randn((2, dim, 3, 4) if image else (2, 11, dim), generator=torch.Generator().manual_seed(dim)) * scale
    out, indices = _same_forwards(theirs, ours, x, train=mode != "eval", grad=mode != "train_no_grad")[:2]
    if not image:  # theirs concatenates channel-last decodes of image indices along axis 1
        theirs.eval()
        assert torch.equal(ours.get_output_from_indices(indices), theirs.get_output_from_indices(indices))
        assert torch.equal(ours.get_codes_from_indices(indices), theirs.get_codes_from_indices(indices))


def test_refused_behaviour_matches_a_failure_or_a_bug_of_the_release(vqp_release):
    """What ours refuses, the release itself fails at or gets wrong (out-of-range indices)."""
    old = vqp_release("1.20.11")
    with pytest.raises(NameError):  # its quantize_dropout_multiple_of fails
        old.ResidualFSQ(levels=[5, 5], num_quantizers=4, dim=2, quantize_dropout=True, quantize_dropout_multiple_of=2).train()(torch.randn(2, 9, 2))
    with pytest.raises(ValueError, match="1.20.11.*NameError"):
        ResidualFSQ(levels=[5, 5], num_quantizers=4, quantize_dropout=True, quantize_dropout_multiple_of=2,
                    vqp_version="1.20.11").train()(torch.randn(2, 9, 2))
    noisy = vqp_release("1.27.15")
    torch.manual_seed(0)
    fsq = noisy.FSQ([5, 5], noise_dropout=0.5, preserve_symmetry=True).train()
    _, indices = fsq(torch.randn(64, 50, 2) * 3)
    assert ((indices < 0) | (indices >= 25)).any()  # its training indices leave the codebook
    with pytest.raises(ValueError, match="1.27.15.*outside the codebook"):
        FSQ([5, 5], noise_dropout=0.5, preserve_symmetry=True, vqp_version="1.27.15").train()(torch.randn(4, 5, 2))

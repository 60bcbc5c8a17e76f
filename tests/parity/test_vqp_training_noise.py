"""Noise dropout of the releases that add it to the input (1.22.7 - 1.22.9), in every input layout."""

from __future__ import annotations

import pytest
import torch

from ifsq_quant import FSQ

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("version", ["1.22.7", "1.22.9"])
@pytest.mark.parametrize("shape,kwargs", [
    ((2, 30, 4), {}),
    ((2, 4, 30), {"channel_first": True}),
    ((2, 4, 6, 5), {}),
    ((2, 4, 3, 4, 5), {}),
    ((2, 8, 30), {"channel_first": True, "dim": 8}),
])
def test_input_noise_lands_where_the_release_puts_it(vqp_release, version, shape, kwargs):
    """Under one seed, the training outputs and indices equal the release's: its noise is drawn on
    the packed (b, n, c, d) tensor, not on a permuted view of a channel-first input."""
    release = vqp_release(version)
    torch.manual_seed(0)
    theirs = release.FSQ(levels=[8, 5, 5, 5], noise_dropout=0.5, **kwargs).train()
    ours = FSQ(levels=[8, 5, 5, 5], noise_dropout=0.5, vqp_version=version, **kwargs).train()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(shape) * 2
    torch.manual_seed(1)
    out_theirs, idx_theirs = theirs(x)
    state = torch.get_rng_state()
    torch.manual_seed(1)
    out_ours, idx_ours = ours(x)
    assert torch.equal(out_ours, out_theirs) and torch.equal(idx_ours, idx_theirs.long())
    assert torch.equal(torch.get_rng_state(), state)

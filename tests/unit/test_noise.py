"""Noise dropout and the other random draws of a training forward (``ifsq_quant.noise``)."""

import torch

from ifsq_quant import FSQ, iFSQ


def test_noise_dropout_keeps_indices_clean_and_in_range():
    q = FSQ([5, 5, 5], preserve_symmetry=True, noise_dropout=1.0).train()
    z = torch.randn(8, 100, 3) * 4
    out, idx = q(z)
    assert int(idx.min()) >= 0 and int(idx.max()) < q.codebook_size
    assert torch.equal(idx, q.eval()(z)[1])
    assert out.abs().max() <= 1


def test_noise_dropout_with_round_layout():
    q = iFSQ([17, 17], noise_dropout=0.3).train()
    out, idx = q(torch.randn(4, 50, 2))
    assert int(idx.max()) < q.codebook_size and out.abs().max() <= 1

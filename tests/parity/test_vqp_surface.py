"""vector-quantize-pytorch's FSQ methods beyond forward (bound, quantize, scale and shift, noise,
the implicit codebook): ours against the installed release's, value for value."""

from __future__ import annotations

import pytest
import torch

from ifsq_quant import FSQ

vqp = pytest.importorskip("vector_quantize_pytorch", reason="vector-quantize-pytorch is in the dev extra")


def test_vqp_method_surface_matches():
    torch.manual_seed(0)
    ours, theirs = FSQ([8, 5, 5, 5]), vqp.FSQ([8, 5, 5, 5])
    z = torch.randn(3, 40, 4) * 2
    assert torch.equal(ours._basis, theirs._basis.long())
    assert torch.equal(ours.bound(z), theirs.bound(z))
    assert torch.equal(ours.quantize(z), theirs.quantize(z))
    assert torch.equal(ours.bound(z, hard_clamp=True), theirs.bound(z, hard_clamp=True))
    assert torch.equal(ours.symmetry_preserving_bound(z), theirs.symmetry_preserving_bound(z))
    idx = theirs(z)[1]
    assert torch.equal(ours._indices_to_codes(idx.long()), theirs._indices_to_codes(idx))
    codes = theirs.quantize(z)
    assert torch.equal(ours._scale_and_shift(codes), theirs._scale_and_shift(codes))
    levels = theirs._scale_and_shift(codes)
    assert torch.equal(ours._scale_and_shift_inverse(levels), theirs._scale_and_shift_inverse(levels))
    ours.train(), theirs.train()
    ours.noise_dropout = theirs.noise_dropout = 0.5
    torch.manual_seed(1)
    a = ours.maybe_apply_noise(codes)
    torch.manual_seed(1)
    assert torch.equal(a, theirs.maybe_apply_noise(codes)) and not torch.equal(a, codes)


def test_bound_methods_default_to_the_soft_bound_as_theirs():
    """bound() and symmetry_preserving_bound() default to hard_clamp=False, as theirs, also on a
    module built with bound_hard_clamp=True (whose quantize() applies the hard clamp)."""
    ours, theirs = FSQ([8, 5, 5, 5], bound_hard_clamp=True), vqp.FSQ([8, 5, 5, 5], bound_hard_clamp=True)
    z = torch.randn(400, 4, generator=torch.Generator().manual_seed(7)) * 3
    assert torch.equal(ours.bound(z), theirs.bound(z)) and torch.equal(ours.quantize(z), theirs.quantize(z))
    assert torch.equal(ours.symmetry_preserving_bound(z), theirs.symmetry_preserving_bound(z))
    assert not torch.equal(ours.bound(z), ours.quantize(z))  # the clamp matters for these inputs
    for hard_clamp in (True, False):
        assert torch.equal(ours.bound(z, hard_clamp=hard_clamp), theirs.bound(z, hard_clamp=hard_clamp))


def test_symmetric_surface_matches():
    ours, theirs = FSQ([6, 5, 4], preserve_symmetry=True), vqp.FSQ([6, 5, 4], preserve_symmetry=True)
    codes = theirs.quantize(torch.randn(100, 3))
    assert torch.equal(ours._scale_and_shift(codes), theirs._scale_and_shift(codes))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_implicit_codebook_follows_the_module_dtype(dtype):
    ours, theirs = FSQ([8, 5, 5, 5]).to(dtype), vqp.FSQ([8, 5, 5, 5]).to(dtype)
    assert ours.implicit_codebook.dtype == dtype
    assert torch.equal(ours.implicit_codebook, theirs.implicit_codebook)

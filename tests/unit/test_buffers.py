"""Constants kept outside the state_dict: copied from the caller, rebuilt after every move and after to_empty()."""

from __future__ import annotations

import pytest
import torch

from ifsq_quant import FSQ, GroupedResidualFSQ, ResidualFSQ, iFSQ


@pytest.mark.parametrize("residual_f32", [False, True])
def test_soft_clamp_tensor_is_copied(residual_f32):
    """Changing the tensor given as soft_clamp_input_value afterwards changes nothing, before or after a cast."""
    clamp = torch.tensor([1.5, 2.0, 1.2])
    module = ResidualFSQ(levels=[7, 5, 5], num_quantizers=3, soft_clamp_input_value=clamp, bound_hard_clamp=False,
                         residual_f32=residual_f32).eval()
    x = torch.randn(2, 64, 3) * 2
    out, indices = module(x)
    clamp.mul_(0.1)
    for moved in (module, module.float(), module.to("cpu")):
        again, again_indices = moved(x)
        assert torch.equal(again, out) and torch.equal(again_indices, indices)
    assert torch.equal(module.soft_clamp_input_value, torch.tensor([1.5, 2.0, 1.2]))


def test_soft_clamp_given_as_a_meta_tensor_is_refused_by_name():
    with torch.device("meta"), pytest.raises(ValueError, match="soft_clamp_input_value is a meta tensor"):
        ResidualFSQ(levels=[5, 5], num_quantizers=2, soft_clamp_input_value=torch.tensor(1.5), bound_hard_clamp=False)


@pytest.mark.parametrize("make", [lambda: FSQ([5, 5, 5], track_usage=True), lambda: iFSQ([9, 9], dim=6, track_usage=True),
                                  lambda: ResidualFSQ(levels=[5, 5], num_quantizers=2, track_usage=True),
                                  lambda: GroupedResidualFSQ(dim=4, groups=2, levels=[5, 5], num_quantizers=2, track_usage=True)])
def test_usage_counts_start_at_zero_after_to_empty(make):
    """A module built on the meta device and given storage with to_empty() counts from zero: no
    uninitialized memory in num_samples, utilization or perplexity."""
    with torch.device("meta"):
        module = make()
    module = module.to_empty(device="cpu")
    usages = [m for m in module.modules() if type(m).__name__ == "CodeUsage"]
    assert usages
    for usage in usages:
        assert usage.num_samples == 0 and int(usage.flat_bin_counts.abs().sum()) == 0
        assert int(usage.code_counts.abs().sum()) == 0
    module.train()(torch.randn(2, 10, module.dim))
    assert all(usage.num_samples == 20 for usage in usages)
    assert all(torch.equal(usage._levels, torch.tensor(usage.levels)) for usage in usages)

"""GroupedResidualFSQ across two gloo ranks: the quantize dropout seed is shared."""

from __future__ import annotations

import torch

from ifsq_quant import GroupedResidualFSQ
from tests.distributed import gloo_group, spawn
from tests.helpers import residual_inputs as inputs


def _gloo_worker(rank, world_size, port, results, quantize_dropout):
    with gloo_group(rank, world_size, port):
        torch.manual_seed(rank)  # different local draws: only the all_reduce makes them agree
        g = GroupedResidualFSQ(dim=4, groups=2, levels=[5, 5], num_quantizers=4, quantize_dropout=quantize_dropout).train()
        kept = []
        for _ in range(6):
            idx = g(inputs((1, 8, 4)))[1]
            kept.append(int((idx[0, 0, 0] >= 0).sum()))
        results[rank] = kept


def test_grouped_dropout_seed_is_shared_over_gloo_ranks():
    """With quantize dropout every rank drops the same stages (the seed is all-reduced)."""
    results = spawn(_gloo_worker, True)
    assert results[0] == results[1] and len(set(results[0])) > 1

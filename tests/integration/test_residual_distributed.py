"""GroupedResidualFSQ across two gloo ranks: the quantize dropout seed is shared."""

from __future__ import annotations

import torch

from ifsq_quant import GroupedResidualFSQ
from tests.helpers import residual_inputs as inputs


def _gloo_worker(rank, world_size, port, quantize_dropout, results):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(rank)  # different local draws: only the all_reduce makes them agree
        g = GroupedResidualFSQ(dim=4, groups=2, levels=[5, 5], num_quantizers=4, quantize_dropout=quantize_dropout).train()
        kept = []
        for _ in range(6):
            idx = g(inputs((1, 8, 4)))[1]
            kept.append(int((idx[0, 0, 0] >= 0).sum()))
        results[rank] = kept
    finally:
        dist.destroy_process_group()


def test_grouped_dropout_seed_is_shared_over_gloo_ranks():
    """With quantize dropout every rank drops the same stages (the seed is all-reduced)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_gloo_worker, args=(2, port, True, results), nprocs=2, join=True)
    assert results[0] == results[1] and len(set(results[0])) > 1

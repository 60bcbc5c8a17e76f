"""DistributedDataParallel on two gloo ranks, with ``find_unused_parameters=False`` and under ``torch.compile``."""

from __future__ import annotations

import copy

import pytest
import torch

from ifsq_quant import FSQ, GroupedResidualFSQ, ResidualFSQ, iFSQ
from tests.distributed import Autoencoder, gloo_group, spawn

pytestmark = pytest.mark.slow

QUANTIZERS = {
    "FSQ": lambda: FSQ([8, 5, 5, 5], dim=16),
    "iFSQ index_groups": lambda: iFSQ([7, 7, 7, 7], dim=16, index_groups=[2, 2]),
    "ResidualFSQ dropout": lambda: ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=3, dim=16, quantize_dropout=True),
    "GroupedResidualFSQ": lambda: GroupedResidualFSQ(dim=16, groups=2, levels=[8, 5, 5, 5], num_quantizers=2),
}


def _train(model, steps: int = 3, compiled: bool = False):
    """``steps`` SGD steps on the same batches on every rank; returns the indices of each step and the weights."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = torch.compile(model) if compiled else model
    indices = []
    for step in range(steps):
        torch.manual_seed(100 + step)  # the same batch and the same quantize dropout draw on every rank
        out, _, idx = run(torch.randn(4, 30, 12))
        (out - 1).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        indices.append(idx)
    return indices


def _worker(rank, world_size, port, results):
    from torch.nn.parallel import DistributedDataParallel

    with gloo_group(rank, world_size, port):
        for name, make in QUANTIZERS.items():
            torch.manual_seed(0)
            model = Autoencoder(make())
            reference = copy.deepcopy(model)
            indices = _train(DistributedDataParallel(model, find_unused_parameters=False))
            expected = _train(reference)
            results[(rank, name)] = {
                "indices": all(torch.equal(a, b) for a, b in zip(indices, expected)),
                "weights": all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(model.parameters(), reference.parameters())),
            }
        torch.manual_seed(0)
        model = Autoencoder(FSQ([8, 5, 5, 5], dim=16))
        reference = copy.deepcopy(model)
        torch._dynamo.reset()
        indices = _train(DistributedDataParallel(model, find_unused_parameters=False), compiled=True)
        expected = _train(DistributedDataParallel(reference, find_unused_parameters=False))
        results[(rank, "compiled DDP")] = {
            "indices": all(torch.equal(a, b) for a, b in zip(indices, expected)),
            "weights": all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(model.parameters(), reference.parameters())),
        }


def test_ddp_without_unused_parameters_and_compiled():
    """Every module trains under DDP with find_unused_parameters=False (every parameter gets a gradient
    each step, also with quantize dropout), as one process does on the same data; a compiled DDP model
    gives the eager one's indices and weights."""
    results = spawn(_worker, timeout=600)
    failures = [f"rank {rank}, {name}: {check}" for (rank, name), checks in sorted(results.items(), key=str)
                for check, ok in checks.items() if not ok]
    assert len(results) == 2 * (len(QUANTIZERS) + 1) and not failures, "\n".join(failures)

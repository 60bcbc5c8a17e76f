"""Gloo process groups on this machine and a small model, for the tests that run several ranks."""

from __future__ import annotations

import contextlib
import os
import socket
import time

import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gloo_group(rank: int, world_size: int, port: int):
    """A gloo process group of ``world_size`` ranks on this machine, destroyed on exit."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def spawn(worker, *args, world_size: int = 2, timeout: float = 300):
    """Runs ``worker(rank, world_size, port, results, *args)`` in ``world_size`` processes; returns ``results``
    (a shared dict). A worker that dies or hangs past ``timeout`` seconds fails the test."""
    results = mp.Manager().dict()
    context = mp.spawn(worker, args=(world_size, free_port(), results, *args), nprocs=world_size, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"the {world_size} workers did not finish within {timeout} s")
    return results


class Autoencoder(nn.Module):
    """``Linear(12, 16) -> quantizer -> Linear(16, 12)``: forward returns (reconstruction, quantized, indices)."""

    def __init__(self, quantizer: nn.Module):
        super().__init__()
        self.encoder, self.quantizer, self.decoder = nn.Linear(12, 16), quantizer, nn.Linear(16, 12)

    def forward(self, x):
        quantized, indices = self.quantizer(self.encoder(x))[:2]
        return self.decoder(quantized), quantized, indices

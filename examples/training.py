"""Where a process runs and the one training loop every example model uses.

- ``Env`` / ``setup_env``: rank, world size and device (``torch.distributed`` under ``torchrun``);
- ``train``: AdamW, linear warm-up then cosine decay, gradient clipping, DistributedDataParallel
  when distributed; returns every step's loss.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from tqdm.auto import tqdm


class ExampleError(Exception):
    """A problem with the command line, the output folder or a checkpoint: printed, no traceback."""


@dataclass
class Env:
    """Where this process runs: rank/world of torch.distributed (0/1 when not distributed)."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


CPU = Env(rank=0, world=1, device=torch.device("cpu"))


def setup_env(device: str, threads: int | None) -> Env:
    """Initializes torch.distributed when launched by torchrun; picks the device and threads."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ExampleError("--device cuda was requested but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    dev = torch.device(f"cuda:{local_rank}" if device == "cuda" else "cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    torch.set_num_threads(threads if threads else max(1, (os.cpu_count() or 1) // world))  # 0: all cores
    return Env(rank=rank, world=world, device=dev)


class LossModule(nn.Module):
    """Wraps ``model`` so that ``forward(*batch)`` returns ``loss_fn(model, *batch)``.

    DistributedDataParallel synchronizes gradients only for computations that run through
    its ``forward``; wrapping the loss lets every model keep its own ``loss`` method.
    """

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, *batch)


def train(model: nn.Module, loss_fn, tensors: tuple[torch.Tensor, ...], cfg: dict, env: Env, seed: int, desc: str,
          callback=None, callback_every: int = 0) -> list[float]:
    """A plain training loop; returns the loss of every step (this rank's batch).

    tensors: the training set, each (n, ...); batches of ``cfg["batch_size"]`` (global;
    ``batch_size / world`` per rank) are drawn by a DistributedSampler (shuffled each epoch).
    AdamW, linear warm-up then cosine decay of the learning rate, gradient clipping at 1.

    ``callback(step, model)``, if given, runs after every ``callback_every``-th step (and
    after the last), with the model in eval mode and the global RNG state saved and
    restored around it, so that evaluating along the way does not change the training.
    """
    steps, batch_size, lr = cfg["steps"], cfg["batch_size"], cfg["lr"]
    if batch_size % env.world:
        raise ExampleError(f"{desc}: batch_size={batch_size} is not divisible by the {env.world} processes")
    dataset = TensorDataset(*tensors)
    sampler = DistributedSampler(dataset, num_replicas=env.world, rank=env.rank, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=batch_size // env.world, sampler=sampler, drop_last=True)
    wrapped: nn.Module = LossModule(model, loss_fn)
    if env.distributed:  # no buffer broadcast: the models have no running statistics, and usage counts stay per rank
        wrapped = DistributedDataParallel(wrapped, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                                          broadcast_buffers=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=cfg.get("weight_decay", 0.0))
    warmup = min(100, max(1, steps // 10))
    torch.manual_seed(seed + 1000 * env.rank)  # dropout / noise streams: fixed, distinct per rank
    model.train()
    losses: list[float] = []
    epoch, batches = 0, None
    bar = tqdm(range(steps), desc=desc, disable=not env.is_main, mininterval=1.0, dynamic_ncols=True)
    for step in bar:
        if batches is None:
            sampler.set_epoch(epoch)
            batches = iter(loader)
        try:
            batch = next(batches)
        except StopIteration:
            epoch += 1
            sampler.set_epoch(epoch)
            batches = iter(loader)
            batch = next(batches)
        step_lr = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = step_lr
        loss = wrapped(*(t.to(env.device) for t in batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if callback is not None and ((callback_every and (step + 1) % callback_every == 0) or step == steps - 1):
            rng = torch.get_rng_state()
            model.eval()
            callback(step + 1, model)
            model.train()
            torch.set_rng_state(rng)
    model.eval()
    return losses

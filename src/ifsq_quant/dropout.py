"""Residual quantize dropout: which stages a training forward keeps, drawn as a :class:`~ifsq_quant.spec.DropoutSpec` says.

One :class:`QuantizeDropout` per residual module holds the whole randomness of stage dropping:
the draw of the last stage kept (:meth:`QuantizeDropout.last_kept`) and the seed that
``GroupedResidualFSQ`` shares between its groups (:meth:`QuantizeDropout.group_seed`). Under
``torch.distributed`` a seed is summed over the ranks, so that every rank drops the same stages.
"""

from __future__ import annotations

import math
import random
import warnings
from types import ModuleType

import torch
import torch.distributed as dist

from .spec import DropoutSpec, Refusals

__all__ = ["QuantizeDropout", "DROPPED"]

DROPPED = -1  # index of a stage skipped by quantize dropout (vector-quantize-pytorch's marker)
PYTHON_GROUP_SEED_BOUND = 10_000_000  # the group seed drawn from Python's random
TORCH_SEED_BOUND = 10_000  # the dropout seed drawn from torch's RNG


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def torch_seed(device: torch.device, synchronize: bool = True, over_ranks: bool = True) -> int | None:
    """A seed drawn from torch's RNG on ``device`` (so ``torch.manual_seed`` fixes it), summed over ranks.

    With ``synchronize=False`` the number is drawn (the RNG advances exactly as with it, so later
    draws match the code reproduced) but neither reduced nor read back; ``None`` is returned. With
    ``over_ranks=False`` it is read back without the sum (each rank keeps its own)."""
    seed = torch.randint(0, TORCH_SEED_BOUND, (), device=device)
    if not synchronize:
        return None
    if over_ranks and _distributed():
        dist.all_reduce(seed)
    return int(seed.item())


class QuantizeDropout:
    """The stage dropping of one residual module.

    Args:
        spec: how the draws are made.
        refusals: the reasons of the spec's ``"refused"`` switches.
        enabled: ``quantize_dropout`` (and more than one stage).
        cutoff: the first stage that may be the last one kept.
        multiple_of: the number of kept stages is rounded up to a multiple of this.
        num_quantizers: the number of stages ``q``.
    """

    def __init__(self, spec: DropoutSpec, refusals: Refusals, enabled: bool, cutoff: int, multiple_of: int, num_quantizers: int):
        self.spec, self.refusals = spec, refusals
        self.enabled, self.cutoff, self.multiple_of, self.num_quantizers = enabled, cutoff, multiple_of, num_quantizers

    def active(self, training: bool) -> bool:
        """Whether this forward drops stages (training; with gradients where the spec asks for them)."""
        if not (training and self.enabled):
            return False
        if self.spec.needs_grad and not torch.is_grad_enabled():
            warnings.warn("ResidualFSQ: a training forward with quantize_dropout=True ran without gradients, so no stage was "
                          "dropped; under reentrant activation checkpointing (use_reentrant=True) the recompute in the backward "
                          "drops stages, so the gradients come from another computation than the loss (use use_reentrant=False)",
                          stacklevel=4)
            return False
        return True

    def last_kept(self, device: torch.device, seed: int | None) -> int:
        """The index of the last stage kept (the stages after it are skipped); ``seed`` fixes the draw."""
        if self.multiple_of != 1 and self.spec.multiple_of == "refused":
            self.refusals.refuse("multiple_of")
        source = self.spec.seed
        rng: random.Random | ModuleType  # a seeded generator, or the module itself (its global generator)
        if seed is not None:
            rng = random.Random(seed)
        elif source == "python" or (source == "python_local" and not _distributed()):
            rng = random  # the global Python RNG
        elif source in ("torch", "torch_cpu"):
            over_ranks = not self.spec.seed_sum_needs_grad or torch.is_grad_enabled()
            rng = random.Random(torch_seed(torch.device("cpu") if source == "torch_cpu" else device, over_ranks=over_ranks))
        else:
            self.refusals.refuse("seed")
        last = rng.randrange(self.cutoff, self.num_quantizers)
        if self.multiple_of != 1:
            last = math.ceil((last + 1) / self.multiple_of) * self.multiple_of - 1  # keep a multiple of m stages
        return last

    def group_seed(self, training: bool, device: torch.device) -> int | None:
        """The seed ``GroupedResidualFSQ`` gives all its groups for this forward, so that they drop the same stages."""
        when = self.spec.grouped_seed
        if when == "python_every_forward":
            return random.randint(0, PYTHON_GROUP_SEED_BOUND)
        if when in ("torch_cpu_every_forward", "torch_every_forward"):
            return torch_seed(torch.device("cpu") if when == "torch_cpu_every_forward" else device)
        if when == "refused":
            self.refusals.refuse("grouped_seed")
        if not training:
            return None
        # A number is drawn on every training forward (so the RNG stream, and noise dropout after it,
        # stays that of the code reproduced), but summed over ranks and read back only when used.
        needs_seed = self.enabled and (torch.is_grad_enabled() or not self.spec.needs_grad)
        return torch_seed(device, synchronize=needs_seed)

"""The random draws of a training forward: noise dropout, and the draws some published code makes besides.

Which draws a forward makes is the module's :class:`~ifsq_quant.spec.FSQSpec` (``noise``,
``extra_draws``); each is made in the order and on the tensors of the code it reproduces, so that
under one ``torch.manual_seed`` the outputs and the RNG state after the forward are the same.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

from .spec import FSQSpec

__all__ = ["training_input", "noisy_codes"]


def training_input(z: Tensor, spec: FSQSpec, p: float, levels: Tensor) -> Tensor:
    """The draws before the bound: ``z (b, n, c, d)`` -> ``z`` (perturbed where ``spec.noise`` puts
    noise on the input). ``levels (d,)`` int64 scales ``"input_per_level"`` noise."""
    if spec.extra_draws == "refused":
        spec.refusals.refuse("extra_draws", " in training")
    if spec.extra_draws == "python_random":
        random.random()  # drawn for a noise option that is off by default
    elif spec.extra_draws in ("sample_masks", "batch_masks"):
        # two per-sample masks and one offset per value, drawn also with p = 0
        shape = (z.shape[0], 1, 1, 1) if spec.extra_draws == "sample_masks" else (z.shape[0],)
        torch.bernoulli(torch.full(shape, p, device=z.device))
        torch.bernoulli(torch.full(shape, p, device=z.device))
        torch.rand_like(z)
    if p == 0 or spec.noise == "codes":
        return z
    if spec.noise == "refused":
        spec.refusals.refuse("noise", f" with noise_dropout={p} in training")
    # drawn in the contiguous order of (b, n, c, d), as on the packed tensor of the code reproduced
    z = z.contiguous()
    mask = torch.bernoulli(torch.full_like(z, p)).bool()
    offset = torch.rand_like(z) - 0.5
    if spec.noise == "input_per_level":
        offset = offset / (levels.to(z.device) // 2)
    return torch.where(mask, z + offset, z)


def noisy_codes(codes: Tensor, p: float) -> Tensor:
    """``codes (..., d)`` with ``U(-0.5, 0.5)`` added where a mask says, clamped to ``[-1, 1]``. The mask
    is ``Tensor.bernoulli_()`` of a tensor filled with ``p``, whose probability is 1/2 whatever ``p``
    is (vector-quantize-pytorch's draws, kept so that the same seed gives the same noise)."""
    mask = torch.full_like(codes, p).bernoulli_().bool()
    offset = torch.rand_like(codes) - 0.5
    return torch.where(mask, codes + offset, codes).clamp(-1.0, 1.0)

"""Bin-utilization statistics of a finite scalar quantizer."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .bins import check_levels
from .indexing import IndexPlan

__all__ = ["CodeUsage"]

DEFAULT_MAX_COUNTED_CODEBOOK = 2**22


def _entropy_bits(counts: Tensor) -> Tensor:
    """Entropy in bits of the distributions along the last axis of ``counts`` (float64)."""
    counts = counts.to(torch.float64)
    total = counts.sum(-1, keepdim=True)
    p = counts / total.clamp(min=1)
    return -(torch.where(p > 0, p * torch.log2(p), torch.zeros_like(p))).sum(-1)


class CodeUsage(nn.Module):
    """Counts how often every level of every dimension, and every code, is used.

    Args:
        levels: ``L_i`` per dimension (``d`` entries).
        max_counted_codebook: the joint codebook is counted exactly (for ``codebook_usage``
            and ``perplexity``) while it has at most this many codes; beyond, those two are
            ``None`` and ``perplexity_upper_bound`` (``2**sum(H_i)``, exact for independent
            dimensions) is the figure to use.

    Counts are int64 tensors, saved in the ``state_dict`` and moved by ``.to()``, but kept out of
    ``named_buffers()``: they are per-rank state, and DistributedDataParallel broadcasts every
    buffer from rank 0 before each forward, which would overwrite them. Sum them with
    :meth:`all_reduce` when you want the global figures. Every statistic is float64.
    """

    _COUNTS = ("bin_counts", "code_counts")

    def __init__(self, levels: Sequence[int], max_counted_codebook: int = DEFAULT_MAX_COUNTED_CODEBOOK):
        super().__init__()
        self.levels = check_levels(levels)
        self.plan = IndexPlan(self.levels, check_int64=False)
        d, widest = len(self.levels), max(self.levels)
        self.bin_counts = torch.zeros(d, widest, dtype=torch.int64)
        self.counts_codes = self.plan.max_group_size <= max_counted_codebook
        size = self.plan.max_group_size if self.counts_codes else 0
        self.code_counts = torch.zeros(size, dtype=torch.int64)
        self.register_buffer("_dim_offsets", torch.arange(d, dtype=torch.int64) * widest, persistent=False)
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.int64), persistent=False)

    # --- the counts: state_dict and device moves without being buffers ----------------------

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name in self._COUNTS:
            setattr(self, name, fn(getattr(self, name)))
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in self._COUNTS:
            destination[prefix + name] = getattr(self, name).detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        for name in self._COUNTS:
            key = prefix + name
            if key in unexpected_keys:
                unexpected_keys.remove(key)
            if key not in state_dict:
                missing_keys.append(key)
            elif state_dict[key].shape != getattr(self, name).shape:
                error_msgs.append(f"size mismatch for {key}: {tuple(state_dict[key].shape)} in the checkpoint, "
                                  f"{tuple(getattr(self, name).shape)} here (different levels?)")
            else:
                getattr(self, name).copy_(state_dict[key])

    @torch.no_grad()
    def update(self, level_indices: Tensor) -> None:
        """Adds ``level_indices (..., d)``: integers in ``[0, L_i)`` (exact-integer floats are accepted)."""
        if not isinstance(level_indices, Tensor):
            raise TypeError(f"level_indices must be a torch.Tensor, got {type(level_indices).__name__}")
        if level_indices.shape[-1:] != (len(self.levels),):
            raise ValueError(f"level_indices must have last dimension {len(self.levels)}, got shape {tuple(level_indices.shape)}")
        k = level_indices.reshape(-1, len(self.levels))
        if k.is_floating_point():
            if not bool((k == k.round()).all()):
                raise ValueError("level_indices must hold integers")
        elif k.dtype == torch.bool or k.is_complex():
            raise TypeError(f"level_indices must be an integer tensor, got {k.dtype}")
        k = k.to(torch.int64)
        if k.numel() and (bool((k < 0).any()) or bool((k >= self._levels).any())):
            raise ValueError(f"level_indices out of range: every k_i must lie in [0, L_i) for levels {list(self.levels)}")
        self._add(k)

    @torch.no_grad()
    def _add(self, k: Tensor) -> None:
        """Adds validated int64 level indices ``(M, d)``."""
        k = k.to(self.bin_counts.device)
        flat = (k + self._dim_offsets).reshape(-1)
        self.bin_counts += torch.bincount(flat, minlength=self.bin_counts.numel()).view_as(self.bin_counts)
        if self.counts_codes:
            self.code_counts += torch.bincount(self.plan.pack(k)[:, 0], minlength=self.code_counts.numel())

    def reset(self) -> None:
        """Forgets every count."""
        self.bin_counts.zero_()
        self.code_counts.zero_()

    def all_reduce(self, group=None) -> None:
        """Sums the counts over the ranks of ``torch.distributed`` (a no-op when it is not initialized)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.bin_counts, group=group)
            if self.counts_codes:
                dist.all_reduce(self.code_counts, group=group)

    @property
    def num_samples(self) -> int:
        """Number of quantized vectors counted."""
        return int(self.bin_counts[0].sum())

    def bin_entropy(self) -> Tensor:
        """``(d,)`` float64: entropy of each dimension's level occupancy, in bits."""
        return _entropy_bits(self.bin_counts)

    def utilization(self) -> Tensor:
        """``(d,)`` float64 in ``[0, 1]``: ``bin_entropy / log2(L)`` (1 = every level equally used)."""
        return self.bin_entropy() / torch.log2(self._levels.to(torch.float64))

    def bins_used(self) -> Tensor:
        """``(d,)`` float64: fraction of each dimension's levels used at least once."""
        return (self.bin_counts > 0).sum(-1).to(torch.float64) / self._levels.to(torch.float64)

    def codebook_usage(self) -> float | None:
        """Fraction of the codebook's codes used at least once (``None`` when not counted)."""
        if not self.counts_codes:
            return None
        return float((self.code_counts > 0).sum()) / self.code_counts.numel()

    def perplexity(self) -> float | None:
        """``2**H`` of the joint code distribution (``None`` when not counted)."""
        if not self.counts_codes:
            return None
        return float(2 ** _entropy_bits(self.code_counts))

    def perplexity_upper_bound(self) -> float:
        """``2**sum_i H_i``: the joint perplexity if the dimensions were independent (an upper bound)."""
        return float(2 ** self.bin_entropy().sum())

    def summary(self) -> dict:
        """The figures as plain Python numbers, for logging."""
        entropy = self.bin_entropy()
        return {
            "samples": self.num_samples,
            "bits_per_dim": entropy.tolist(),
            "mean_bits_per_dim": float(entropy.mean()),
            "utilization": self.utilization().tolist(),
            "mean_utilization": float(self.utilization().mean()),
            "bins_used": self.bins_used().tolist(),
            "codebook_size": math.prod(self.levels),
            "codebook_usage": self.codebook_usage(),
            "perplexity": self.perplexity(),
            "perplexity_upper_bound": self.perplexity_upper_bound(),
        }

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}, samples={self.num_samples}"

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
    """Entropy in bits (float64, 0-d) of the distribution given by the 1-D ``counts``.

    Only the non-zero counts are converted to float64, so a wide, sparsely used dimension
    costs no temporaries of its full width.
    """
    used = counts[counts > 0].to(torch.float64)
    if used.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=counts.device)
    p = used / used.sum()
    return -(p * torch.log2(p)).sum()


class CodeUsage(nn.Module):
    """Counts how often every level of every dimension, and every code, is used.

    Args:
        levels: ``L_i`` per dimension (``d`` entries).
        max_counted_codebook: the joint codebook is counted exactly (for ``codebook_usage``
            and ``perplexity``) while it has at most this many codes; beyond, those two are
            ``None`` and ``perplexity_upper_bound`` (``2**sum(H_i)``, exact for independent
            dimensions) is the figure to use.

    Storage: the level counts of all dimensions are one flat int64 tensor of ``sum(L_i)``
    entries (dimension ``i`` at ``bin_offsets[i] : bin_offsets[i] + L_i``), so memory grows with
    the sum of the level counts, not with ``d * max(L_i)``; the joint code counts take
    ``prod(L_i)`` entries while that is at most ``max_counted_codebook``.

    Counts are int64 tensors, saved in the ``state_dict`` and moved by ``.to()``, but kept out of
    ``named_buffers()``: they are per-rank state, and DistributedDataParallel broadcasts every
    buffer from rank 0 before each forward, which would overwrite them. Sum them with
    :meth:`all_reduce` when you want the global figures. Every statistic is float64.

    Distributed counting: each rank keeps the counts it added itself (its *local* counts) apart
    from the other ranks' counts learnt at the last :meth:`all_reduce`. Every statistic reads
    their sum. :meth:`all_reduce` recomputes the other ranks' part from the local counts, so
    calling it twice does not double anything, and counts added after it are kept.
    """

    def __init__(self, levels: Sequence[int], max_counted_codebook: int = DEFAULT_MAX_COUNTED_CODEBOOK):
        super().__init__()
        self.levels = check_levels(levels)
        self.plan = IndexPlan(self.levels, check_int64=False)
        offsets = [0]
        for level in self.levels[:-1]:
            offsets.append(offsets[-1] + level)
        self.bin_offsets = tuple(offsets)
        self._local_bins = torch.zeros(sum(self.levels), dtype=torch.int64)
        self.counts_codes = self.plan.max_group_size <= max_counted_codebook
        size = self.plan.max_group_size if self.counts_codes else 0
        self._local_codes = torch.zeros(size, dtype=torch.int64)
        # The other ranks' counts, set by all_reduce (None: nothing learnt from other ranks).
        self._other_bins: Tensor | None = None
        self._other_codes: Tensor | None = None
        self.register_buffer("_dim_offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.int64), persistent=False)

    # --- the counts ----------------------------------------------------------------------------

    @property
    def flat_bin_counts(self) -> Tensor:
        """``(sum L_i,)`` int64: every dimension's level counts, one after the other (all ranks
        reduced so far plus this rank's later counts)."""
        return self._local_bins if self._other_bins is None else self._local_bins + self._other_bins

    @property
    def local_bin_counts(self) -> Tensor:
        """``(sum L_i,)`` int64: the level counts this rank added itself."""
        return self._local_bins

    def bin_counts_of(self, i: int) -> Tensor:
        """``(L_i,)`` int64: the level counts of dimension ``i``."""
        start = self.bin_offsets[i]
        return self.flat_bin_counts[start:start + self.levels[i]]

    def _per_dim(self) -> tuple[Tensor, ...]:
        return torch.split(self.flat_bin_counts, list(self.levels))

    @property
    def bin_counts(self) -> Tensor:
        """``(d, max L_i)`` int64: the level counts padded with zeros to the widest dimension.

        Built on access (``d * max L_i`` entries): a convenience for plotting small codebooks.
        Use :attr:`flat_bin_counts` or :meth:`bin_counts_of` for very unequal level counts.
        """
        flat = self.flat_bin_counts
        out = flat.new_zeros(len(self.levels), max(self.levels))
        for i, part in enumerate(self._per_dim()):
            out[i, : part.numel()] = part
        return out

    @property
    def code_counts(self) -> Tensor:
        """``(prod L_i,)`` int64: joint code counts (empty when the codebook is not counted)."""
        return self._local_codes if self._other_codes is None else self._local_codes + self._other_codes

    # --- state_dict and device moves without being buffers -------------------------------------

    _STATE = ("_local_bins", "_local_codes", "_other_bins", "_other_codes")

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name in self._STATE:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, fn(value))
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # What the statistics read: this rank's counts plus the other ranks' reduced so far.
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "bin_counts"] = self.flat_bin_counts.detach().clone()
        destination[prefix + "code_counts"] = self.code_counts.detach().clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        d, widest = len(self.levels), max(self.levels)
        for name, target in (("bin_counts", self._local_bins), ("code_counts", self._local_codes)):
            key = prefix + name
            if key in unexpected_keys:
                unexpected_keys.remove(key)
            if key not in state_dict:
                missing_keys.append(key)
                continue
            value = state_dict[key]
            if name == "bin_counts" and tuple(value.shape) == (d, widest):
                # The earlier layout, padded to the widest dimension.
                value = torch.cat([value[i, :level] for i, level in enumerate(self.levels)])
            if value.shape != target.shape:
                error_msgs.append(f"size mismatch for {key}: {tuple(value.shape)} in the checkpoint, "
                                  f"{tuple(target.shape)} here (different levels?)")
                continue
            target.copy_(value)
            # A checkpoint holds totals: they become this rank's own counts.
            setattr(self, "_other_bins" if name == "bin_counts" else "_other_codes", None)

    # --- counting ------------------------------------------------------------------------------

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
        """Adds validated int64 level indices ``(M, d)`` to this rank's counts."""
        k = k.to(self._local_bins.device)
        flat = (k + self._dim_offsets).reshape(-1)
        self._local_bins += torch.bincount(flat, minlength=self._local_bins.numel())
        if self.counts_codes:
            self._local_codes += torch.bincount(self.plan.pack(k)[:, 0], minlength=self._local_codes.numel())

    def reset(self) -> None:
        """Forgets every count (this rank's and the other ranks' learnt by :meth:`all_reduce`)."""
        self._local_bins.zero_()
        self._local_codes.zero_()
        self._other_bins = self._other_codes = None

    def all_reduce(self, group=None) -> None:
        """Makes the statistics global: sums this rank's counts over the ranks of ``group``.

        A collective (every rank of ``group`` must call it), and a no-op when
        ``torch.distributed`` is not initialized. Idempotent: the other ranks' counts are
        recomputed from every rank's own counts, so a second call changes nothing, and counts
        added afterwards are included by the next call.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        total = self._local_bins.clone()
        dist.all_reduce(total, group=group)
        self._other_bins = total - self._local_bins
        if self.counts_codes:
            total = self._local_codes.clone()
            dist.all_reduce(total, group=group)
            self._other_codes = total - self._local_codes

    @property
    def num_samples(self) -> int:
        """Number of quantized vectors counted."""
        return int(self.bin_counts_of(0).sum())

    def bin_entropy(self) -> Tensor:
        """``(d,)`` float64: entropy of each dimension's level occupancy, in bits."""
        return torch.stack([_entropy_bits(part) for part in self._per_dim()])

    def utilization(self) -> Tensor:
        """``(d,)`` float64 in ``[0, 1]``: ``bin_entropy / log2(L)`` (1 = every level equally used)."""
        return self.bin_entropy() / torch.log2(self._levels.to(torch.float64))

    def bins_used(self) -> Tensor:
        """``(d,)`` float64: fraction of each dimension's levels used at least once."""
        used = torch.stack([(part > 0).sum() for part in self._per_dim()])
        return used.to(torch.float64) / self._levels.to(torch.float64)

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

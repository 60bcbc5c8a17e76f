"""Bin-utilization statistics of a finite scalar quantizer."""

from __future__ import annotations

import hashlib
import math
import operator
import warnings
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from .bins import check_levels
from .buffers import ConstantBuffers
from .contexts import fake_mode_active
from .indexing import IndexPlan

__all__ = ["CodeUsage", "UsageCheckpoints"]

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


class CodeUsage(ConstantBuffers, nn.Module):
    """Counts how often every level of every dimension, and every code, is used.

    Args:
        levels: ``L_i`` per dimension (``d`` entries).
        max_counted_codebook: a non-negative int. The joint codebook is counted exactly (for
            ``codebook_usage`` and ``perplexity``) while it has at most this many codes; beyond,
            those two are ``None`` and ``perplexity_upper_bound`` (``2**sum(H_i)``, exact for
            independent dimensions) is the figure to use.

    Storage: the level counts of all dimensions are one flat int64 tensor of ``sum(L_i)``
    entries (dimension ``i`` at ``bin_offsets[i] : bin_offsets[i] + L_i``), so memory grows with
    the sum of the level counts, not with ``d * max(L_i)``; the joint code counts take
    ``prod(L_i)`` entries while that is at most ``max_counted_codebook``.

    Counts are int64 tensors, saved in the ``state_dict`` and moved by ``.to()``, but kept out of
    ``named_buffers()``: they are per-rank state, and DistributedDataParallel broadcasts every
    buffer from rank 0 before each forward, which would overwrite them. Sum them with
    :meth:`all_reduce` when you want the global figures. Every statistic is float64.

    Checkpoints: the ``state_dict`` holds ``bin_counts`` (the flat level counts), ``code_counts``
    and ``levels`` (int64), all totals over the ranks reduced so far. Loading checks them: the
    levels must be this module's, the counts non-negative integers, every dimension's counts must
    sum to the same number of samples and the code counts (when counted) to that number too; a
    failure is an error naming the key (a ``RuntimeError`` from ``load_state_dict``, as for a
    size mismatch). Checkpoints without ``levels``, also with the ``(d, max L_i)`` zero-padded
    ``bin_counts`` layout, load as well. The loaded totals become this rank's own counts.

    Distributed counting: each rank keeps the counts it added itself (its *local* counts) apart
    from the other ranks' counts learnt at the last :meth:`all_reduce`. Every statistic reads
    their sum. :meth:`all_reduce` recomputes the other ranks' part from the local counts, so
    calling it twice does not double anything, and counts added after it are kept.

    Counting once per forward: a quantizer with ``track_usage=True`` adds its training forwards'
    level indices through ``_add``, which counts nothing while the autograd engine runs a
    backward pass on this thread. That is where ``torch.utils.checkpoint`` recomputes a forward
    (with ``use_reentrant=True`` and ``False``), so a checkpointed forward is counted once, as
    without checkpointing. Any other forward run during a backward pass (from a backward hook, or
    a custom ``autograd.Function.backward``) is left out too. :meth:`update` always counts.
    """

    # constants (register_constant): each dimension's offset in the flat level counts, and the levels
    _dim_offsets: Tensor
    _levels: Tensor

    def __init__(self, levels: Sequence[int], max_counted_codebook: int = DEFAULT_MAX_COUNTED_CODEBOOK):
        super().__init__()
        self.levels = check_levels(levels)
        if isinstance(max_counted_codebook, bool) or not hasattr(max_counted_codebook, "__index__"):
            raise TypeError(f"max_counted_codebook must be a non-negative int, got {max_counted_codebook!r} "
                            f"({type(max_counted_codebook).__name__})")
        max_counted_codebook = operator.index(max_counted_codebook)
        if max_counted_codebook < 0:
            raise ValueError(f"max_counted_codebook must be a non-negative int, got {max_counted_codebook}")
        with torch.device("cpu"):  # host-side table, also when the module is built on the meta device
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
        with torch.device("cpu"):
            self.register_constant("_dim_offsets", torch.tensor(offsets, dtype=torch.int64))
            self.register_constant("_levels", torch.tensor(self.levels, dtype=torch.int64))

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
        super()._apply(fn, recurse)  # also rebuilds the constants (ConstantBuffers)
        for name in self._STATE:
            value = getattr(self, name)
            if value is not None:
                moved = fn(value)
                # Counts built on the meta device have no values: given storage (to_empty()), they start at zero.
                setattr(self, name, moved.zero_() if value.is_meta and not moved.is_meta else moved)
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # What the statistics read: this rank's counts plus the other ranks' reduced so far.
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "bin_counts"] = self.flat_bin_counts.detach().clone()
        destination[prefix + "code_counts"] = self.code_counts.detach().clone()
        destination[prefix + "levels"] = self._levels.detach().clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        keys = {name: prefix + name for name in ("bin_counts", "code_counts", "levels")}
        for key in keys.values():
            if key in unexpected_keys:
                unexpected_keys.remove(key)
        errors: list[str] = []
        levels_key = keys["levels"]
        if levels_key in state_dict:  # absent from the older checkpoints
            errors += self._check_levels_entry(levels_key, state_dict[levels_key])
        loaded: dict[str, Tensor] = {}
        for name in ("bin_counts", "code_counts"):
            key = keys[name]
            if key not in state_dict:
                missing_keys.append(key)
                continue
            value, problem = self._counts_entry(name, key, state_dict[key])
            if problem is None:
                loaded[name] = cast(Tensor, value)  # given exactly when there is no problem
            else:
                errors.append(problem)
        if not errors:
            errors += self._check_consistent(loaded, keys)
        if errors:
            error_msgs.extend(errors)
            return
        for name, value in loaded.items():
            target = self._local_bins if name == "bin_counts" else self._local_codes
            target.copy_(value)
            # A checkpoint holds totals: they become this rank's own counts.
            setattr(self, "_other_bins" if name == "bin_counts" else "_other_codes", None)

    def _check_levels_entry(self, key: str, value) -> list[str]:
        if not isinstance(value, Tensor):
            return [f"{key}: expected an integer tensor of the levels, got {type(value).__name__}"]
        if value.is_meta or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool or value.dim() != 1:
            return [f"{key}: expected a 1-D integer tensor of the levels, got a {'meta ' if value.is_meta else ''}"
                    f"{value.dtype} tensor of shape {tuple(value.shape)}"]
        theirs = [int(v) for v in value.tolist()]
        if theirs != list(self.levels):
            return [f"{key}: the checkpoint counts levels {theirs}, this module counts levels {list(self.levels)} "
                    f"(different levels)"]
        return []

    def _counts_entry(self, name: str, key: str, value) -> tuple[Tensor | None, str | None]:
        """The checkpoint's ``value`` of ``name`` as flat int64 counts of this module's shape, or why not."""
        if not isinstance(value, Tensor):
            return None, f"{key}: expected an integer tensor of counts, got {type(value).__name__}"
        if value.is_meta:
            return None, f"{key}: expected counts, got a meta tensor (it holds no values)"
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            return None, f"{key}: expected integer counts, got dtype {value.dtype}"
        target = self._local_bins if name == "bin_counts" else self._local_codes
        value = value.detach().to(torch.int64)
        if name == "bin_counts" and tuple(value.shape) == (len(self.levels), max(self.levels)):
            # The (d, max L_i) layout, zero-padded to the widest dimension.
            padding = [value[i, level:] for i, level in enumerate(self.levels)]
            if any(bool((part != 0).any()) for part in padding):
                return None, (f"{key}: the padded (d, max L) counts are not zero beyond each dimension's levels "
                              f"{list(self.levels)} (different levels?)")
            value = torch.cat([value[i, :level] for i, level in enumerate(self.levels)])
        if value.shape != target.shape:
            hint = "different levels?" if name == "bin_counts" else "different levels or max_counted_codebook?"
            return None, (f"size mismatch for {key}: {tuple(value.shape)} in the checkpoint, "
                          f"{tuple(target.shape)} here ({hint})")
        if value.numel() and bool((value < 0).any()):
            return None, f"{key}: counts must be non-negative, got {int(value.min())}"
        return value, None

    def _check_consistent(self, loaded: dict[str, Tensor], keys: dict[str, str]) -> list[str]:
        """Every dimension's counts sum to one number of samples, and the code counts to it too."""
        bins, codes = loaded.get("bin_counts"), loaded.get("code_counts")
        if bins is None:
            return []
        samples = [int(part.sum()) for part in torch.split(bins, list(self.levels))]
        if len(set(samples)) > 1:
            return [f"{keys['bin_counts']}: every dimension's counts must sum to the same number of samples, "
                    f"got {samples} for levels {list(self.levels)}"]
        if codes is not None and codes.numel() and int(codes.sum()) != samples[0]:
            return [f"{keys['code_counts']}: the code counts sum to {int(codes.sum())}, "
                    f"the level counts of {keys['bin_counts']} to {samples[0]} samples"]
        return []

    # --- counting ------------------------------------------------------------------------------

    @torch.no_grad()
    def update(self, level_indices: Tensor) -> None:
        """Adds ``level_indices (..., d)``: integers in ``[0, L_i)`` (exact-integer floats are accepted)."""
        if not isinstance(level_indices, Tensor):
            raise TypeError(f"level_indices must be a torch.Tensor, got {type(level_indices).__name__}")
        if level_indices.is_meta:
            raise ValueError("level_indices must hold values to count, got a meta tensor")
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
        self._count(k)

    @torch.no_grad()
    def _add(self, k: Tensor) -> None:
        """Adds validated int64 level indices ``(M, d)`` of a forward to this rank's counts.

        Counts nothing while a backward pass runs on this thread (an activation checkpoint's
        recompute, a forward in a backward hook): each forward is counted once. Nor under a
        ``FakeTensorMode`` trace, whose tensors have no values to count.
        """
        if torch._C._current_graph_task_id() != -1 or (fake_mode_active() and not torch.compiler.is_compiling()):
            return
        self._count(k)

    def _count(self, k: Tensor) -> None:
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
        ``torch.distributed`` is not initialized. The ranks first exchange their levels (and
        whether they count the joint codes): when they differ, every rank raises a
        ``ValueError`` naming each rank's levels and nothing is summed. Idempotent: the other
        ranks' counts are recomputed from every rank's own counts, so a second call changes
        nothing, and counts added afterwards are included by the next call.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        self._check_same_levels(dist, group)
        local = torch.cat([self._local_bins, self._local_codes])
        total = local.clone()
        dist.all_reduce(total, group=group)
        other_bins, other_codes = torch.split(total - local, [self._local_bins.numel(), self._local_codes.numel()])
        self._other_bins = other_bins
        if self.counts_codes:
            self._other_codes = other_codes

    def _check_same_levels(self, dist, group) -> None:
        """Raises ValueError on every rank of ``group`` unless all count the same levels and codes."""
        device = self._local_bins.device
        world = dist.get_world_size(group)
        digest = int.from_bytes(hashlib.blake2b(repr(self.levels).encode(), digest_size=8).digest(), "little", signed=True)
        mine = torch.tensor([len(self.levels), digest, self._local_codes.numel()], dtype=torch.int64, device=device)
        gathered_prints = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(gathered_prints, mine, group=group)
        prints = [p.tolist() for p in gathered_prints]
        if all(p[:2] == prints[0][:2] for p in prints):
            if any(p[2] != prints[0][2] for p in prints):
                counted = ", ".join(f"rank {r}: {p[2] or 'none'}" for r, p in enumerate(prints))
                raise ValueError(f"CodeUsage.all_reduce: the ranks count different numbers of joint codes ({counted}) "
                                 f"for levels {list(self.levels)}; give every rank the same max_counted_codebook")
            return
        # The levels differ: every rank learnt it from the fingerprints, so all exchange the levels.
        width = max(p[0] for p in prints)
        padded = torch.zeros(width, dtype=torch.int64, device=device)
        padded[: len(self.levels)] = self._levels.to(device)
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded, group=group)
        ranks_of: dict[tuple[int, ...], list[int]] = {}
        for r, (g, p) in enumerate(zip(gathered, prints)):
            ranks_of.setdefault(tuple(g[: p[0]].tolist()), []).append(r)
        found = "; ".join(f"{list(levels)} on rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"
                          for levels, ranks in ranks_of.items())
        raise ValueError(f"CodeUsage.all_reduce: every rank of the group must count the same levels, got {found}")

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


class UsageCheckpoints(nn.Module):
    """Mixin for a module with ``self.usage`` (a :class:`CodeUsage` or ``None``): FSQ and the drop-ins of ``compat/``.

    A checkpoint without usage counts loads into a module with ``track_usage=True``,
    which keeps its own counts; a checkpoint with counts loads into one without, which ignores them.
    Both warn (the counts are statistics, not weights); ``strict=True`` holds for everything else.
    """

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        usage = getattr(self, "usage", None)
        usage_keys = [key for key in state_dict if key.startswith(prefix + "usage.")]
        if usage is not None and not usage_keys:
            state_dict.update(usage.state_dict(prefix=prefix + "usage."))
            warnings.warn(f"{prefix}usage: the checkpoint has no usage counts (saved without track_usage); this module keeps "
                          "its own counts", stacklevel=4)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if usage is None and usage_keys:
            for key in usage_keys:
                if key in unexpected_keys:
                    unexpected_keys.remove(key)
            warnings.warn(f"{prefix}usage: the checkpoint has usage counts but this module was built with track_usage=False; "
                          "they were not loaded", stacklevel=4)

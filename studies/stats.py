"""Statistics over seeds: paired differences with Student-t intervals, and means with standard deviations."""

from __future__ import annotations

import numpy as np


def paired_difference(a: list[float], b: list[float], level: float = 0.95) -> dict:
    """Mean of the paired differences ``a[i] - b[i]`` (e.g. per seed) with a Student-t interval.

    Returns ``mean``, ``ci`` [lo, hi], ``n`` and the ``differences``; with fewer than 2 pairs the
    interval is [nan, nan].
    """
    import scipy.stats

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError(f"paired_difference needs two equal-length, non-empty lists, got {len(a)} and {len(b)}")
    mean = float(d.mean())
    if len(d) < 2:
        return dict(mean=mean, ci=[float("nan"), float("nan")], n=len(d), differences=d.tolist())
    half = float(scipy.stats.t.ppf((1 + level) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return dict(mean=mean, ci=[mean - half, mean + half], n=len(d), differences=d.tolist())


def seed_statistics(group: list[dict], keys) -> dict:
    """``{k: mean, k + "_std": std}`` of each key over the runs in ``group`` (one per seed; std with
    ddof = 1, 0 for a single seed); keys no run has are left out."""
    out = {}
    for k in keys:
        vals = [r[k] for r in group if k in r]
        if vals:
            out[k], out[k + "_std"] = float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return out


def interval(d: dict | None, digits: int) -> str:
    """A paired difference as ``+m [+lo, +hi]`` (a dash for None)."""
    return "–" if d is None else f"{d['mean']:+.{digits}f} [{d['ci'][0]:+.{digits}f}, {d['ci'][1]:+.{digits}f}]"

"""The official iFSQ code's quantizer configs: ``iFSQ.from_official_config``."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from ..activations import ScaledSigmoid
from ..bins import check_levels
from ..indexing import FLOAT32_EXACT_INTEGERS
from ..quantizer import FSQ

__all__ = ["from_official_config"]


def _official_lossy_indices(levels: list[int], groups: list[int]) -> list[str]:
    """Where the official iFSQ code's ``codes_to_indices`` is not exact: it computes
    ``sum((code * (L // 2) + L // 2) * basis)`` in float32 and truncates it to int64, so a level
    whose float32 product falls just below its integer (L = 27: 11.999999) takes its neighbour's
    index, and a group of more than 2**24 codes sums past float32's integers."""
    out = [f"L={L}" for L in sorted(set(levels)) if L % 2 and not _official_levels_exact(L)]
    start = 0
    for size in groups:
        if math.prod(levels[start:start + size]) > FLOAT32_EXACT_INTEGERS:
            out.append(f"the group of levels {levels[start:start + size]} (more than 2**24 codes)")
        start += size
    return out


def _official_levels_exact(L: int) -> bool:
    """Whether the official truncation gives every level of odd ``L`` its own index (float32, as theirs)."""
    half_width = torch.tensor(L // 2, dtype=torch.int32)
    k = torch.arange(-(L // 2), L // 2 + 1, dtype=torch.float32)
    return bool(((k / half_width * half_width + half_width).to(torch.int64) == k.to(torch.int64) + L // 2).all())


def from_official_config(cls: type[FSQ], config: dict, **overrides) -> FSQ:
    """Builds the module that computes the official iFSQ quantizer's codes and indices.

    ``config`` is the keyword dict of the official code's quantizer: ``levels``, ``dim``,
    ``num_codebooks``, ``keep_num_codebooks_dim``, ``scale``, ``factorized_bits`` (->
    ``index_groups``), ``do_simple_bound`` and ``act_fun`` (``"scale_sigmoid_16"`` or
    ``"scale_sigmoid_20"``; with ``do_simple_bound=False`` the official code uses FSQ's
    ``tanh`` bound with ``eps=1e-3`` and ``act_fun`` is unused). ``overrides`` are passed on.
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    known = {"levels", "dim", "num_codebooks", "keep_num_codebooks_dim", "scale", "factorized_bits",
             "do_simple_bound", "act_fun"}
    # The official quantizer swallows other keyword arguments; its RunningFSQ takes eps and
    # momentum for running statistics that do not change the codes.
    unknown = sorted(set(config) - known - {"eps", "momentum"})
    if unknown:
        warnings.warn(f"keys of the official iFSQ config ignored, as the official code ignores them: {unknown} "
                      f"(used: {sorted(known)})", stacklevel=2)
    if "levels" not in config:
        raise ValueError("the official iFSQ config needs 'levels'")
    levels = list(check_levels(config["levels"], name="the official config's 'levels'"))
    config = dict(config, levels=levels)
    factorized = config.get("factorized_bits")
    if factorized is not None:
        if isinstance(factorized, (str, bytes)) or not isinstance(factorized, (list, tuple)) or not factorized or not all(
                isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in factorized):
            raise TypeError(f"the official config's 'factorized_bits' must be a list of positive integers (dimensions per "
                            f"index), got {factorized!r}")
        if sum(factorized) != len(levels):
            raise ValueError(f"the official config's 'factorized_bits' must add up to len(levels) = {len(levels)}, "
                             f"got {list(factorized)} (sum {sum(factorized)})")
    if not isinstance(config.get("do_simple_bound", False), bool):
        raise TypeError(f"the official config's 'do_simple_bound' must be a bool, got {config['do_simple_bound']!r}")
    act_fun = config.get("act_fun", "tanh")
    alphas = {"scale_sigmoid_16": 1.6, "scale_sigmoid_20": 2.0}
    kwargs: dict[str, Any] = {k: config[k] for k in ("levels", "dim", "num_codebooks", "keep_num_codebooks_dim", "scale") if k in config}
    # The official indices always end in a group axis (of size 1 without factorized_bits).
    kwargs["index_groups"] = list(factorized) if factorized is not None else [len(config["levels"])]
    if config.get("do_simple_bound", False):
        if act_fun not in alphas:
            raise ValueError(f"the official config's 'act_fun' must be one of {sorted(alphas)} with do_simple_bound=True, "
                             f"got {act_fun!r}")
        if any(level % 2 == 0 for level in config["levels"]):
            raise ValueError(f"the official config's 'levels' {levels}: the official simple_bound supports odd levels only; "
                             "use iFSQ(levels=...) for even levels")
        kwargs.update(activation=ScaledSigmoid(alphas[act_fun]) if alphas[act_fun] != 1.6 else "sigmoid", eps=0.0)
    else:
        kwargs.update(activation="tanh", eps=1e-3)
    lossy = _official_lossy_indices(list(config["levels"]), kwargs["index_groups"])
    if lossy:
        warnings.warn(f"the official code's indices differ from this module's for {lossy}: its codes_to_indices "
                      "truncates a float32 sum, which gives some levels their neighbour's index; the codes are "
                      "the same, and these indices are exact", stacklevel=2)
    kwargs.update(overrides)
    return cls(**kwargs)

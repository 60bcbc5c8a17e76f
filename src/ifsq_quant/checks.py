"""Checks of user arguments and inputs, each error naming the argument, what was expected and what came."""

from __future__ import annotations

import math
import operator

from torch import Tensor

__all__ = ["integer", "number", "check_float_input"]


def integer(value, name: str, minimum: int = 1) -> int:
    """``value`` as a Python int (``int``, numpy integers, anything with ``__index__``; not a bool),
    at least ``minimum``: ``TypeError`` for a non-integer, ``ValueError`` below ``minimum``."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    number_ = operator.index(value)
    if number_ < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return number_


def number(value, name: str, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite float in ``[low, high]`` (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a number in [{low}, {high}], got {value!r} ({type(value).__name__})")
    if not (low <= float(value) <= high) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number in [{low}, {high}], got {value!r}")
    return float(value)


def check_float_input(x, name: str = "input") -> None:
    """Raises ``TypeError``/``ValueError`` unless ``x`` is a floating-point tensor with a batch and a feature axis."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_meta:
        raise ValueError(f"{name} is a meta tensor: it has no values to quantize; use FakeTensorMode to trace shapes")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}; quantize features, not integers")
    if x.ndim < 2:
        raise ValueError(f"{name} must have a batch and a feature axis (2-D or more), got shape {tuple(x.shape)}")

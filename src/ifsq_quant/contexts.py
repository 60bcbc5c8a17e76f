"""Which PyTorch context a call runs in, and a cache that is safe in all of them.

The quantizer keeps a few small constant tensors per device and dtype. A cache filled while
tracing (``torch.compile``, ``torch.export``, ``FakeTensorMode``, ``torch.jit.trace``, ONNX
export) would keep a fake or traced tensor, and one filled under ``inference_mode`` would keep
an inference tensor that a later backward cannot save; :func:`cached` never stores either.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["tracing", "exporting_to_portable_graph", "functorch_active", "fake_mode_active", "cached"]

_K = TypeVar("_K")
_V = TypeVar("_V", Tensor, dict[str, Tensor])  # what a cache holds: a tensor, or named tensors


def fake_mode_active() -> bool:
    """Whether a ``FakeTensorMode`` is active (tensors created now have no values)."""
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None


def exporting_to_portable_graph() -> bool:
    """``torch.jit.trace`` or ONNX export: graphs that must run without this package's op."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def tracing() -> bool:
    """Whether tensors seen now may be fake, symbolic or recorded into a graph."""
    return torch.compiler.is_compiling() or exporting_to_portable_graph() or fake_mode_active()


def functorch_active() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, jvp, jacrev, ...) is running (never
    reported inside ``torch.compile``, which handles the transforms of a compiled function)."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._functorch.peek_interpreter_stack() is not None


def cached(cache: MutableMapping[_K, _V], key: _K, make: Callable[[], _V]) -> _V:
    """``cache[key]``, made by ``make()`` on a miss. Outside tracing the value is made as a
    normal tensor (also under ``inference_mode``) and kept; while tracing it is made afresh
    and not kept. Meta and fake tensors are never kept."""
    if tracing():
        return make()
    if key not in cache:
        with torch.inference_mode(False):
            value = make()
        if not all(_plain(t) for t in (value.values() if isinstance(value, dict) else [value])):
            return value
        cache[key] = value
    return cache[key]


def _plain(t: Tensor) -> bool:
    """Whether ``t`` holds real values that outlive the current context (not meta, not fake)."""
    from torch._subclasses.fake_tensor import FakeTensor

    return not t.is_meta and not isinstance(t, FakeTensor)

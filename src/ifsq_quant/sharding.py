"""Modules sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``): decoding outside ``forward``, outputs that are not views.

FSDP2 gathers a sharded module's parameters around its ``forward`` only. The decode methods that
use parameters (the output projection) are marked :func:`runs_as_forward`: on a module that is
itself sharded, the first call registers them with ``register_fsdp_forward_method``, so each
call gathers the parameters (in the ``MixedPrecisionPolicy``'s ``param_dtype``) and reshards
after, as a forward does; every rank must then call it, as any collective. A module whose
parameters a sharded parent holds cannot gather them itself: the call raises an error that says to
shard the quantizer too (``fully_shard(model.quantizer)`` before ``fully_shard(model)``) or to decode
between ``model.unshard()`` and ``model.reshard()``.
"""

from __future__ import annotations

import functools
from typing import overload

import torch
from torch import Tensor, nn

__all__ = ["runs_as_forward", "is_sharded", "not_a_view"]


def _load_fsdp():
    """``torch.distributed.fsdp`` when FSDP2 is available, else None."""
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed import fsdp
    except ImportError:
        return None
    return fsdp if hasattr(fsdp, "FSDPModule") and hasattr(fsdp, "register_fsdp_forward_method") else None


# Loaded at import: a plain module constant, which torch.compile reads without tracing a cached call.
_FSDP = _load_fsdp()


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module`` itself was sharded with ``fully_shard`` (it is then an ``FSDPModule``)."""
    return _FSDP is not None and isinstance(module, _FSDP.FSDPModule)


def _check_parameters_gathered(module: nn.Module, method: str) -> None:
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in module.parameters()):
        raise RuntimeError(
            f"{type(module).__name__}.{method}: the parameters are sharded by an FSDP2 parent module, which gathers them "
            "only in its own forward; shard the quantizer itself too (fully_shard(model.quantizer) before "
            "fully_shard(model)) or call it between model.unshard() and model.reshard()")


def runs_as_forward(method):
    """Marks a method that uses the module's parameters outside ``forward`` (see the module docstring)."""
    name = method.__name__

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if name not in self.__dict__ and is_sharded(self):
            # replaces the method on this instance by one wrapped in FSDP's pre/post-forward hooks,
            # which calls back into this function (then found in the instance's __dict__)
            _FSDP.register_fsdp_forward_method(self, name)
            return getattr(self, name)(*args, **kwargs)
        _check_parameters_gathered(self, name)
        return method(self, *args, **kwargs)

    return call


@overload
def not_a_view(module: nn.Module, tensor: Tensor) -> Tensor: ...


@overload
def not_a_view(module: nn.Module, tensor: None) -> None: ...


def not_a_view(module: nn.Module, tensor: Tensor | None) -> Tensor | None:
    """``tensor``, copied where it is a view and ``module`` is sharded: FSDP2 warns about a view output
    (an in-place op on it would skip the hook that gathers the parameters for the backward)."""
    if tensor is not None and is_sharded(module) and tensor._base is not None:
        return tensor.clone()
    return tensor

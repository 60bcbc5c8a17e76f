"""Constant buffers that survive every move, ``to_empty()`` included."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ConstantBuffers"]


class ConstantBuffers(nn.Module):
    """Mixin for modules with constant tensors kept outside the ``state_dict`` (level counts, scales).

    :meth:`register_constant` keeps a host copy of the value and registers a non-persistent buffer.
    After every move or cast (``.to()``, ``.half()``, ``to_empty()``...) the buffer is rebuilt from the
    host copy on its new device, in its new dtype: a module built on the meta device and moved with
    ``to_empty()`` then holds the constants instead of uninitialized memory (a checkpoint does not hold
    them to load).
    """

    def register_constant(self, name: str, value: Tensor | None) -> None:
        """Registers ``value`` (or ``None``) as the non-persistent buffer ``name``, rebuilt after every move."""
        if "_constant_values" not in self.__dict__:
            self._constant_values: dict[str, Tensor] = {}
        if value is not None:
            if value.is_meta:
                raise ValueError(f"{name}: a meta tensor has no values to keep")
            value = value.detach().to("cpu", copy=True)  # a copy: later changes to the caller's tensor change nothing here
            self._constant_values[name] = value
        self.register_buffer(name, None if value is None else value.clone(), persistent=False)

    def constant_value(self, name: str) -> Tensor | None:
        """The host copy of the constant ``name`` as registered (not cast by ``.half()``), or ``None``."""
        return self.__dict__.get("_constant_values", {}).get(name)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name, value in self.__dict__.get("_constant_values", {}).items():
            buffer = getattr(self, name)
            setattr(self, name, value.to(device=buffer.device, dtype=buffer.dtype))
        return self

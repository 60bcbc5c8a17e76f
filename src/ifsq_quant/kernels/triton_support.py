"""Whether the Triton kernels can run here, without importing Triton unless asked."""

from __future__ import annotations

import functools
import importlib.util
import os


@functools.cache
def available() -> bool:
    """True when the ``triton`` package is installed (it is imported lazily)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a broken or stubbed-out installation
        return False


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for the Triton interpreter (read at every call, with
    Triton's own spelling of true: ``1``, ``true``, ``on``, ``yes``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes", "y")

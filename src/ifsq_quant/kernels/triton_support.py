"""Whether the Triton kernels can run here, without importing Triton unless asked."""

from __future__ import annotations

import functools
import importlib.util
import os

from torch import Tensor

from ..activations import ACTIVATION_NAMES
from ..bins import BinLayout


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


def supports(layout: BinLayout) -> bool:
    """Whether the kernels implement ``layout``'s bound: every bound with a kernel id (activations.py)."""
    return layout.activation.kernel_id is not None


def check_usable(z: Tensor, layout: BinLayout) -> None:
    """Raises a clear error when ``backend="triton"`` cannot serve ``z``."""
    if not available():
        raise RuntimeError('backend="triton" needs the triton package: pip install "ifsq-quant[triton]"')
    if not supports(layout):
        raise ValueError(
            f'backend="triton" supports the named activations {ACTIVATION_NAMES}, got {layout.activation!r}; '
            'use backend="torch" or "auto" for custom activations'
        )
    if not z.is_cuda and not interpreting():
        raise RuntimeError(
            f'backend="triton" needs CUDA tensors (got a tensor on {z.device}); on the CPU it runs only '
            'under the Triton interpreter (set TRITON_INTERPRET=1 before importing triton)'
        )

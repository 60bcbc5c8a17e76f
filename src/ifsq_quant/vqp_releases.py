"""Old import path of :mod:`ifsq_quant.compat.vqp` (the vector-quantize-pytorch release table)."""

from .compat.vqp import *  # noqa: F403
from .compat.vqp import CHANGES, LATEST, OLDEST, REFUSED, UNUSABLE, Semantics, _key, refuse, semantics  # noqa: F401

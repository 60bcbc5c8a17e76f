"""Plain PyTorch quantization: the executable definition of `docs/design.md` sections 1-2 (the oracle).

Every other kernel is tested against :func:`quantize`: same codes and level indices bit for
bit, gradients equal up to rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..bins import BinLayout

__all__ = ["quantize"]


def quantize(z: Tensor, layout: BinLayout) -> tuple[Tensor, Tensor]:
    """Quantizes ``z`` with a straight-through gradient.

    Args:
        z: ``(..., d)`` float32 or float64.
        layout: the codebook's bins and activation.

    Returns:
        ``codes`` ``(..., d)`` on the grid, whose gradient is ``slope * f'(z + shift)``, and
        ``level_indices`` ``(..., d)``: floats holding exact integers in ``[0, L)``.
    """
    y = layout.bound(z)
    level_indices = layout.level_index(y.detach())
    hard = layout.code(level_indices)
    # NaN inputs get level 0 (above); keep their straight-through term from turning the code NaN.
    soft = torch.nan_to_num(y) * layout.constants(z.device, z.dtype)["slope"]
    return hard + (soft - soft.detach()), level_indices

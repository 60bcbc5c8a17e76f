"""Plain PyTorch quantization: the executable definition of `docs/design.md` sections 1-2 (the oracle).

Every other kernel is tested against :func:`quantize`: same codes and level indices bit for
bit, gradients equal up to rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..bins import BinLayout

__all__ = ["quantize", "quantize_symmetric_in_input_dtype"]


def quantize(z: Tensor, layout: BinLayout) -> tuple[Tensor, Tensor]:
    """Quantizes ``z`` with a straight-through gradient.

    Args:
        z: ``(..., d)`` float32 or float64.
        layout: the codebook's bins and activation.

    Returns:
        ``codes`` ``(..., d)`` on the grid, whose gradient is ``slope * f'(z + shift)`` (0 at NaN inputs), and
        ``level_indices`` ``(..., d)``: floats holding exact integers in ``[0, L)``.
    """
    # NaN inputs get level 0 and a zero gradient: the bound sees 0 there, so its derivative is finite.
    nan = torch.isnan(z)
    y = layout.bound(torch.where(nan, 0.0, z))
    level_indices = torch.where(nan, 0.0, layout.level_index(y.detach()))
    hard = layout.code(level_indices)
    soft = y * layout.constants(z.device, z.dtype)["slope"]
    return hard + (soft - soft.detach()), level_indices


def quantize_symmetric_in_input_dtype(z: Tensor, layout: BinLayout) -> tuple[Tensor, Tensor]:
    """The ``"symmetric"`` layout for a bf16/fp16 ``z`` that is not upcast, op for op as
    vector-quantize-pytorch computes it: ``f(z)`` and ``(L - 1) * (f(z) + 1) / 2 + 0.5`` in
    ``z``'s dtype (each operation rounds to it), then ``2 / (L - 1) * floor(.) - 1`` in float32.
    The level index is clamped into ``[0, L)`` and NaN goes to level 0, as everywhere here
    (theirs can reach ``L`` where the dtype rounds ``L - 0.5`` up, and keeps NaN).

    Args: ``z`` ``(..., d)`` bf16 or fp16. Returns float32 ``codes`` (straight-through gradient
    ``slope * f'(z)``) and float32 ``level_indices``, as :func:`quantize`.
    """
    c = layout.constants(z.device, torch.float32)
    levels_minus_1 = (layout.num_levels - 1).to(z.device)  # int64: int * half stays half, as theirs
    nan = torch.isnan(z)
    y = layout.bound(torch.where(nan, 0.0, z))  # in z's dtype; NaN inputs: level 0, zero gradient
    k = torch.floor(levels_minus_1 * (y.detach() + 1) / 2.0 + 0.5).float()
    level_indices = torch.where(nan, 0.0, torch.clamp(k, torch.zeros_like(c["top"]), c["top"]))
    hard = level_indices * (2.0 / levels_minus_1) - 1.0  # float32, as theirs
    soft = y.float() * c["slope"]
    return hard + (soft - soft.detach()), level_indices

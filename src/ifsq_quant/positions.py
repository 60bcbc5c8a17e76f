"""Inputs as rows of features and back: the layouts every module accepts and returns.

A batch of features is ``(b, *spatial, dim)`` (channel-last) or ``(b, dim, *spatial)``
(channel-first); the quantizers work on ``(b, n, dim)`` rows, ``n = prod(spatial)``. FSQ, the
residual modules and their decodes go through :class:`Positions` both ways.
"""

from __future__ import annotations

import dataclasses
import math

from torch import Tensor

__all__ = ["Positions"]


@dataclasses.dataclass(frozen=True)
class Positions:
    """Where the rows of a batch came from: its batch size, spatial shape and feature axis."""

    batch: int
    spatial: tuple[int, ...]
    channel_first: bool

    @classmethod
    def rows(cls, x: Tensor, channel_first: bool) -> tuple[Tensor, Positions]:
        """``x (b, dim, *spatial)`` (``channel_first``) or ``(b, *spatial, dim)`` -> rows ``(b, n, dim)``
        (a copy only where the layout needs one) and their positions."""
        if channel_first:
            x = x.movedim(1, -1)
        positions = cls(x.shape[0], tuple(x.shape[1:-1]), channel_first)
        # n given explicitly: an inferred axis cannot be reshaped when the batch is empty
        return x.reshape(x.shape[0], math.prod(positions.spatial), x.shape[-1]), positions

    def restore(self, rows: Tensor, move_first_trailing_axis: bool | None = None) -> Tensor:
        """Rows ``(b, n, *trailing)`` -> ``(b, *spatial, *trailing)``; in a channel-first batch (or as
        ``move_first_trailing_axis`` says) the first trailing axis moves to axis 1, ``(b, k, *spatial, ...)``."""
        out = rows.reshape(self.batch, *self.spatial, *rows.shape[2:])
        move = self.channel_first if move_first_trailing_axis is None else move_first_trailing_axis
        return out.movedim(1 + len(self.spatial), 1) if move else out

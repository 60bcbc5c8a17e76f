"""S3Tokenizer's FSQ (the speech tokens of CosyVoice 2 and 3): ``FSQCodebook`` and ``FSQVectorQuantization`` on this package's core.

Swap the import::

    from ifsq_quant.compat.s3tokenizer import FSQCodebook, FSQVectorQuantization

for ``s3tokenizer.model_v2``'s (s3tokenizer 0.3.0; ``model_v3`` uses the same class): same constructor
arguments, ``state_dict`` (``project_down``, a ``Linear(dim, 8)``) and int32 token ids, bit for bit.

The quantizer is NeMo's FSQ (:mod:`.nemo`) with eight levels of 3 and ``eps = 1e-3``: the token of a
frame is ``sum_k (round(0.999 * tanh(h_k)) + 1) * 3**k`` for ``h = project_down(x)`` computed in ``x``'s
dtype (under autocast as the caller sets it) and then quantized in float32. Dimension ``k`` of the
projection is digit ``k`` of the token, least significant first.

Deliberate differences: ``encode`` runs under ``torch.no_grad()`` instead of ``torch.inference_mode()`` (its
token ids are ordinary tensors, and it exports to ONNX), and ``FSQCodebook`` refuses ``level != 3`` when
built (theirs fails at ``encode``: it reads ``2**level`` digits from eight). ``FSQVectorQuantization``
with ``codebook_size != 3**8`` raises an error that is both a ``ValueError`` and the ``AssertionError``
theirs raises.

On top of theirs: :meth:`FSQCodebook.indices_to_level_indices` (the eight digits of token ids) and
:meth:`FSQCodebook.indices_to_codes` (the quantized values ``digit - 1`` in ``{-1, 0, 1}``), int32 or int64
ids; ``track_usage=True`` (a :class:`~ifsq_quant.usage.CodeUsage` counting every encoded frame);
``backend``; the meta device; ``torch.compile`` and ONNX export of ``encode``.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from .. import kernels
from ..checks import integer
from ..contexts import functorch_active, tracing
from ..indexing import INDEX_DTYPES, IndexPlan
from ..usage import CodeUsage, UsageCheckpoints
from .nemo import nemo_layout

__all__ = ["FSQCodebook", "FSQVectorQuantization", "CodebookSizeError", "LEVELS", "CODEBOOK_SIZE"]

LEVELS = (3,) * 8
CODEBOOK_SIZE = 3**8
EPS = 1e-3  # float32(1 - 1e-3) is the 0.9990000128746033 of theirs


class CodebookSizeError(ValueError, AssertionError):
    """A codebook size other than ``3**8``. Also an ``AssertionError``, which theirs raises."""


class FSQCodebook(UsageCheckpoints, nn.Module):
    """S3Tokenizer's ``FSQCodebook``: ``Linear(dim, 8)``, then eight ternary digits per frame.

    Args:
        dim: the encoder's feature size.
        level: 3 (the only value theirs can encode with).
        track_usage: keep a :class:`~ifsq_quant.usage.CodeUsage` in ``self.usage`` counting every encoded frame (not theirs).
        backend: the kernel, as :class:`~ifsq_quant.FSQ`'s (not theirs).

    Shapes: ``encode(x (B, T, dim))`` -> int32 token ids ``(B, T)`` in ``[0, 3**8)``; ``x`` in the
    projection's dtype. ``indices_to_level_indices(ids (...))`` -> ``(..., 8)`` int64 digits in ``{0, 1, 2}``.
    """

    usage: CodeUsage | None

    def __init__(self, dim: int, level: int = 3, *, track_usage: bool = False, backend: str = "auto"):
        super().__init__()
        dim = integer(dim, "dim")
        if isinstance(level, bool) or level != 3:
            raise ValueError(f"level must be 3 (S3Tokenizer's eight ternary digits; theirs fails to encode with any other), "
                             f"got {level!r}")
        if backend not in kernels.BACKENDS:
            raise ValueError(f"backend must be one of {kernels.BACKENDS}, got {backend!r}")
        self.project_down = nn.Linear(dim, len(LEVELS))
        self.level = level
        self.embed = None
        self.backend = backend
        self._layout = nemo_layout(LEVELS, EPS)
        with torch.device("cpu"):
            self._plan = IndexPlan(LEVELS)
        self.usage = CodeUsage(LEVELS) if track_usage else None

    def preprocess(self, x: Tensor) -> Tensor:
        """``(..., d)`` -> ``(N, d)``, every leading axis flattened."""
        return x.reshape(-1, x.shape[-1])

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """``x (B, T, dim)`` -> token ids ``(B, T)`` int32."""
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 3:
            raise ValueError(f"x must be a floating (B, T, dim) tensor, got {getattr(x, 'dtype', type(x).__name__)} of shape "
                             f"{tuple(getattr(x, 'shape', ()))}")
        h = self.project_down(self.preprocess(x)).float()  # the projection in x's dtype (and autocast), then float32
        result = kernels.quantize(h, self._layout, self._plan, self.backend, need_level_indices=self.usage is not None)
        if self.usage is not None:
            self.usage._add(cast(Tensor, result.level_indices).to(torch.int64))
        return cast(Tensor, result.indices).view(x.shape[0], x.shape[1]).to(torch.int32)

    def decode(self, embed_ind: Tensor) -> Tensor:
        """Not available: no up-projection was released (theirs raises the same ``NotImplementedError``)."""
        raise NotImplementedError("There is no official up project component provided")

    def indices_to_level_indices(self, indices: Tensor) -> Tensor:
        """Token ids ``(...)`` (any integer dtype) -> their digits ``(..., 8)``, int64 in ``{0, 1, 2}``; digit ``k``
        is the rounded level of dimension ``k`` of the projection."""
        if not isinstance(indices, Tensor) or indices.dtype not in INDEX_DTYPES:
            raise TypeError(f"indices must be an integer tensor of token ids, got {getattr(indices, 'dtype', type(indices).__name__)}")
        if not tracing() and not functorch_active():
            self._plan.check_range(indices[..., None])
        return self._plan.unpack(indices[..., None].to(torch.int64))

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Token ids ``(...)`` -> the quantized values ``(..., 8)``, float32 in ``{-1, 0, 1}`` (``digit - 1``)."""
        return self._layout.code(self.indices_to_level_indices(indices).to(torch.float32))


class FSQVectorQuantization(nn.Module):
    """S3Tokenizer's ``FSQVectorQuantization(dim, codebook_size)``: an :class:`FSQCodebook` (``_codebook``).

    ``codebook_size`` must be ``3**8``; ``codebook`` is ``None`` (no codebook tensor was released).
    ``encode(x (B, T, dim))`` -> int32 ``(B, T)``; ``decode`` raises ``NotImplementedError``; ``track_usage``
    and ``backend`` go to the codebook.
    """

    def __init__(self, dim: int, codebook_size: int, *, track_usage: bool = False, backend: str = "auto"):
        super().__init__()
        if isinstance(codebook_size, bool) or codebook_size != CODEBOOK_SIZE:
            raise CodebookSizeError(f"codebook_size must be 3**8 = {CODEBOOK_SIZE} (eight ternary digits), got {codebook_size!r}")
        self._codebook = FSQCodebook(dim=dim, level=3, track_usage=track_usage, backend=backend)
        self.codebook_size = codebook_size

    @property
    def codebook(self) -> None:
        return self._codebook.embed

    @property
    def usage(self) -> CodeUsage | None:
        return self._codebook.usage

    def encode(self, x: Tensor) -> Tensor:
        """``x (B, T, dim)`` -> token ids ``(B, T)`` int32."""
        return self._codebook.encode(x)

    def decode(self, embed_ind: Tensor) -> Tensor:
        """Not available (see :meth:`FSQCodebook.decode`)."""
        return self._codebook.decode(embed_ind)

    def indices_to_level_indices(self, indices: Tensor) -> Tensor:
        """See :meth:`FSQCodebook.indices_to_level_indices`."""
        return self._codebook.indices_to_level_indices(indices)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """See :meth:`FSQCodebook.indices_to_codes`."""
        return self._codebook.indices_to_codes(indices)

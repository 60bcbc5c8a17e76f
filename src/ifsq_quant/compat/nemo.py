"""NVIDIA NeMo's FSQ (``nemo.collections.tts.modules.audio_codec_modules``): the same classes on this package's core.

``FiniteScalarQuantizer`` and ``GroupFiniteScalarQuantizer`` quantize the codes of NeMo's audio codecs
(NanoCodec, the Low Frame-rate Speech Codec, Magpie-TTS's codec). Swap the import::

    from ifsq_quant.compat.nemo import FiniteScalarQuantizer, GroupFiniteScalarQuantizer

and a NeMo checkpoint loads (``strict=True``, both ways) and gives the same dequantized outputs,
bit for bit, and the same indices wherever NeMo's are right (see below), tested against
nemo-toolkit 3.0.0.

NeMo's quantizer is the ``"round"`` layout (`docs/design.md`, section 2) with two options of
:class:`~ifsq_quant.bins.BinLayout`: its range shrinks by ``(1 - eps)`` (``eps=-eps`` there) and the
shift of even levels is ``tan(0.5 / half_l)`` (``shift="tan"``). Half-precision inputs promote to
float32 against the constants (float64 inputs compute in float64), as NeMo's do. NeMo computes its
constants in ``torch.get_default_dtype()`` at call time; its codec sets float32, and under a float64
default this module computes in float64 with float64 constants as NeMo does (that layout runs on the
reference kernel).

Deliberate differences:

* Indices are the exact mixed-radix index of the rounded levels (int64 packing, cast to NeMo's
  int32). NeMo sums float digits and truncates: a digit ``k * (r / k) + k`` that falls an ulp short
  (L = 26, 27, 38, 39, ... in float32; 50, 51, ... in float64) and any codebook past ``2**24`` codes
  give some codes a neighbour's index. A construction with such levels warns, naming them; the
  dequantized outputs are the same either way.
* More than ``2**31 - 1`` codes (NeMo's int32 basis and indices overflow) and levels below 2 (NeMo
  divides by ``L // 2 = 0``) raise ``ValueError``.
* Indices outside ``[0, codebook_size)`` at the frames ``input_len`` keeps raise ``ValueError`` in
  ``decode`` (NeMo wraps them onto other codes); ``codes_to_indices`` gives an off-grid code the
  index of the nearest code (NeMo truncates).
* Arguments may be passed by position too (NeMo's ``typecheck`` takes keywords only), ``input_len``
  may be left out everywhere, and outputs carry no NeMo neural types.
* A bfloat16/float16 default dtype is not followed: the constants are then float32.

On top of NeMo's: ``track_usage=True`` (a :class:`~ifsq_quant.usage.CodeUsage` in ``self.usage``,
counting the frames ``input_len`` keeps on every ``forward``/``encode``), ``backend``, the meta
device (the level buffers are constants, rebuilt by ``to_empty()``), ``torch.compile``, ONNX export
of ``encode``/``decode``, int32 and int64 indices in ``decode``.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from .. import kernels
from ..activations import Tanh
from ..bins import BinLayout, check_levels
from ..buffers import ConstantBuffers
from ..checks import integer, number
from ..contexts import functorch_active, tracing
from ..indexing import FLOAT32_EXACT_INTEGERS, INDEX_DTYPES, IndexPlan
from ..usage import CodeUsage, UsageCheckpoints

__all__ = ["FiniteScalarQuantizer", "GroupFiniteScalarQuantizer", "DimensionMismatchError", "nemo_layout", "lossy_levels"]

INT32_MAX = 2**31 - 1


class DimensionMismatchError(ValueError, RuntimeError):
    """An input whose channel axis does not hold ``dim`` values. Also a ``RuntimeError``, which NeMo raises."""


def nemo_layout(levels: Sequence[int], eps: float, constants_dtype: torch.dtype = torch.float32) -> BinLayout:
    """NeMo's FSQ as a bin layout: ``half_l = (L - 1) / 2 * (1 - eps)``, offset ``0.5`` for even ``L``,
    shift ``tan(offset / half_l)``, ``code = round(half_l * tanh(z + shift) - offset) / (L // 2)``."""
    with torch.device("cpu"):  # host-side tables, also while a module is built on the meta device
        return BinLayout(levels, "round", Tanh(), -float(eps), shift="tan", constants_dtype=constants_dtype)


@functools.lru_cache(maxsize=1024)
def _digits_exact(level: int) -> bool:
    """Whether NeMo's float digit ``k * (r / k) + k`` (``k = L // 2``) truncates to ``r + k`` for every
    rounded level ``r`` of ``L``, in float32 and in float64 (the dtypes its codes come in)."""
    if level > FLOAT32_EXACT_INTEGERS:
        return False  # float32 does not hold every digit
    k = torch.tensor(level // 2, dtype=torch.int32)
    expected = torch.arange(level, dtype=torch.int64)
    for dtype in (torch.float32, torch.float64):
        r = torch.arange(-(level // 2), level - level // 2, dtype=dtype)
        if not torch.equal((k * (r / k) + k).to(torch.int64), expected):
            return False
    return True


def lossy_levels(levels: Sequence[int]) -> list[str]:
    """Where NeMo's indices of ``levels`` can differ from the exact ones: the level counts whose digits
    truncate, and a codebook past float32's ``2**24`` exact integers. Empty when they are exact."""
    with torch.device("cpu"):
        out = [f"L={level}" for level in sorted(set(levels)) if not _digits_exact(level)]
    if math.prod(levels) > FLOAT32_EXACT_INTEGERS:
        out.append(f"a codebook of {math.prod(levels)} codes (more than 2**24)")
    return out


def _lengths_mask(input_len: Tensor | None, batch: int, steps: int, device: torch.device) -> Tensor | None:
    """``(B, T)`` bool, frame ``t`` of sample ``b`` kept when ``t < input_len[b]`` (NeMo's
    ``mask_sequence_tensor``); ``None`` without lengths."""
    if input_len is None:
        return None
    if not isinstance(input_len, Tensor) or input_len.shape != (batch,):
        shape = tuple(input_len.shape) if isinstance(input_len, Tensor) else type(input_len).__name__
        raise ValueError(f"input_len must be a (batch,) = ({batch},) tensor of lengths, got {shape}")
    return torch.arange(1, steps + 1, device=device) <= input_len.to(device)[:, None]


def _masked(tensor: Tensor, mask: Tensor | None) -> Tensor:
    """``tensor (B, T)`` or ``(B, D, T)`` times the mask, as NeMo masks: a negative code at a dropped frame becomes ``-0.0``."""
    if mask is None:
        return tensor
    return tensor * (mask if tensor.ndim == 2 else mask[:, None, :])


class FiniteScalarQuantizer(UsageCheckpoints, ConstantBuffers, nn.Module):
    """NeMo's ``FiniteScalarQuantizer``: FSQ of channel-first features ``(B, D, T)``.

    Args:
        num_levels: level count ``L_i >= 2`` of each of the ``D`` dimensions, at most ``2**31 - 1`` codes in all.
        eps: the range shrinks by ``(1 - eps)``, ``eps < 1`` (default ``1e-3``).
        track_usage: keep a :class:`~ifsq_quant.usage.CodeUsage` in ``self.usage``, updated by every
            ``forward``/``encode`` with the frames ``input_len`` keeps (not NeMo's).
        backend: the kernel, as :class:`~ifsq_quant.FSQ`'s (not NeMo's).

    Buffers (persistent, as NeMo's): ``dim_base_index`` and ``num_levels``, int32 ``(1, D, 1)``. They are
    constants: a checkpoint must hold these values, and they are rebuilt after ``to_empty()``.

    Shapes: ``forward(inputs (B, D, T), input_len (B,) | None)`` -> ``dequantized (B, D, T)``, ``indices (1, B, T)``
    int32; frames ``t >= input_len[b]`` are zeroed. ``dequantized`` is float32 for float32 and half-precision
    inputs, float64 for float64 inputs, and float64 for every input under a float64 default dtype.
    ``decode(indices (1, B, T), input_len)`` -> ``(B, D, T)`` in the default dtype. Gradients are
    straight-through. See the module docstring for what differs from NeMo.
    """

    dim_base_index: Tensor
    num_levels: Tensor
    usage: CodeUsage | None

    def __init__(self, num_levels: Sequence[int], eps: float = 1e-3, *, track_usage: bool = False, backend: str = "auto"):
        super().__init__()
        levels = check_levels(num_levels, "num_levels")
        size = math.prod(levels)
        if size > INT32_MAX:
            raise ValueError(f"num_levels={list(levels)} makes {size} codes, more than NeMo's int32 indices hold (2**31 - 1 = "
                             f"{INT32_MAX}); use fewer levels or a GroupFiniteScalarQuantizer")
        if backend not in kernels.BACKENDS:
            raise ValueError(f"backend must be one of {kernels.BACKENDS}, got {backend!r}")
        self._levels = levels
        self.eps = eps  # checked, and the layouts built
        lossy = lossy_levels(levels)
        if lossy:
            warnings.warn(f"NeMo's indices for num_levels={list(levels)} are not exact ({', '.join(lossy)}): it truncates a float "
                          "sum of float digits, which gives some codes a neighbour's index. This module's indices are exact, "
                          "so they differ from NeMo's where NeMo's are wrong; the dequantized outputs are the same.", stacklevel=2)
        self.backend = backend
        with torch.device("cpu"):
            self._plan = IndexPlan(levels)
            basis = torch.tensor(self._plan.basis, dtype=torch.int32).view(1, -1, 1)
            counts = torch.tensor(levels, dtype=torch.int32).view(1, -1, 1)
        # NeMo's persistent buffers, in NeMo's order; constants rebuilt after every move (ConstantBuffers)
        for name, value in (("dim_base_index", basis), ("num_levels", counts)):
            self.register_constant(name, value)
            self.register_buffer(name, getattr(self, name), persistent=True)
        self.usage = CodeUsage(levels) if track_usage else None

    # --- NeMo's properties ------------------------------------------------------------------------

    @property
    def eps(self):
        """``eps`` as given; setting it rebuilds the layouts (NeMo reads it at every call)."""
        return self._eps

    @eps.setter
    def eps(self, value) -> None:
        # NeMo reads eps at every call: the layouts follow it (float32 constants; float64 for a float64 default dtype)
        if number(value, "eps") >= 1:
            raise ValueError(f"eps must be < 1 (the range shrinks by 1 - eps), got {value!r}")
        self._eps = value
        self._layouts = {dtype: nemo_layout(self._levels, value, dtype) for dtype in (torch.float32, torch.float64)}

    @property
    def num_codebooks(self) -> int:
        return 1

    @property
    def codebook_size(self) -> int:
        """``prod(num_levels)``."""
        return math.prod(self._levels)

    @property
    def dim(self) -> int:
        """``D``, the number of levels."""
        return len(self._levels)

    @property
    def codebook_dim(self) -> int:
        return self.dim

    @property
    def input_types(self) -> dict[str, str]:
        """The argument names NeMo's model code reads (its neural types are not reproduced)."""
        return {"inputs": "(B, D, T)", "input_len": "(B,)"}

    @property
    def output_types(self) -> dict[str, str]:
        """The output names NeMo's ``AudioCodecModel`` reads (exactly these two: a third, ``commit_loss``, changes its training)."""
        return {"dequantized": "(B, D, T)", "indices": "(D, B, T)"}

    @property
    def codes(self) -> Tensor:
        """``(codebook_size, D)`` every code in index order, in the default dtype."""
        indices = torch.arange(self.codebook_size, device=self.dim_base_index.device).view(1, -1, 1)
        return self.decode(indices=indices, input_len=None).squeeze(-1)

    @property
    def codebook(self) -> Tensor:
        """:attr:`codes`."""
        return self.codes

    # --- quantization -------------------------------------------------------------------------------

    def _compute(self, dtype: torch.dtype) -> tuple[BinLayout, torch.dtype]:
        """The layout and compute dtype for inputs of ``dtype``: NeMo's constants are in the default dtype."""
        if torch.get_default_dtype() == torch.float64:
            return self._layouts[torch.float64], torch.float64
        return self._layouts[torch.float32], torch.float64 if dtype == torch.float64 else torch.float32

    def _check_inputs(self, inputs, name: str = "inputs") -> None:
        if not isinstance(inputs, Tensor) or not inputs.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (B, D, T), got {getattr(inputs, 'dtype', type(inputs).__name__)}")
        if inputs.ndim != 3:
            raise ValueError(f"{name} must be channel-first (B, D, T), got shape {tuple(inputs.shape)}")
        if inputs.size(1) != self.dim:
            raise DimensionMismatchError(f"{name}: dimension {inputs.size(1)} not matching the expected dimension {self.dim} "
                                         f"(len(num_levels)), {name} shape {tuple(inputs.shape)}")

    def _quantize(self, inputs: Tensor, input_len: Tensor | None, count: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """``inputs (B, D, T)`` -> codes ``(B, D, T)`` (straight-through gradient), int64 indices ``(B, T)``, both
        unmasked, and the ``(B, T)`` mask of ``input_len`` (``None`` without)."""
        self._check_inputs(inputs)
        batch, dim, steps = inputs.shape
        mask = _lengths_mask(input_len, batch, steps, inputs.device)
        layout, dtype = self._compute(inputs.dtype)
        rows = inputs.transpose(1, 2).reshape(-1, dim).to(dtype)
        track = count and self.usage is not None
        result = kernels.quantize(rows, layout, self._plan, self.backend, need_level_indices=track)
        if track:  # the frames the mask keeps (track: there are usage counts and level indices)
            level_indices = cast(Tensor, result.level_indices).to(torch.int64)
            cast(CodeUsage, self.usage)._add(level_indices if mask is None else level_indices[mask.reshape(-1)])
        codes = result.codes.view(batch, steps, dim).transpose(1, 2).contiguous()
        return codes, cast(Tensor, result.indices).view(batch, steps), mask

    def forward(self, inputs: Tensor, input_len: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(inputs (B, D, T), input_len (B,) | None)`` -> ``(dequantized (B, D, T), indices (1, B, T) int32)``."""
        codes, indices, mask = self._quantize(inputs, input_len, count=True)
        return _masked(codes, mask), _masked(indices, mask).to(torch.int32).unsqueeze(0)

    def encode(self, inputs: Tensor, input_len: Tensor | None = None) -> Tensor:
        """``inputs (B, D, T)`` -> ``indices (1, B, T)`` int32, zero at the frames ``input_len`` drops."""
        return self(inputs=inputs, input_len=input_len)[1]

    def inputs_to_codes(self, inputs: Tensor, input_len: Tensor | None = None) -> Tensor:
        """``inputs (B, D, T)`` -> codes ``(B, D, T)`` on the grid, unmasked (as NeMo's), straight-through gradient."""
        return self._quantize(inputs, None, count=False)[0]

    def compress(self, inputs: Tensor, input_len: Tensor | None = None) -> Tensor:
        """``inputs (B, D, T)`` -> NeMo's value before rounding, ``half_l * tanh(inputs + shift) - offset``, ``(B, D, T)``."""
        self._check_inputs(inputs)
        layout, dtype = self._compute(inputs.dtype)
        c = {k: v.view(1, -1, 1) for k, v in layout.constants(inputs.device, dtype).items()}
        return torch.tanh(inputs.to(dtype) + c["shift"]) * c["scale"] + c["bias"]

    @staticmethod
    def round(inputs: Tensor, input_len: Tensor | None = None) -> Tensor:
        """Round half to even with a straight-through gradient (``input_len`` unused, as NeMo's)."""
        return inputs + (torch.round(inputs) - inputs).detach()

    def codes_to_nonnegative(self, codes: Tensor) -> Tensor:
        """Codes ``(B, D, T)`` -> level values ``codes * (L // 2) + L // 2`` (not rounded), ``(B, D, T)``."""
        half = self.num_levels // 2
        return half * codes + half

    def nonnegative_to_codes(self, codes_nonnegative: Tensor) -> Tensor:
        """Level indices ``(B, D, T)`` -> codes ``(k - L // 2) / (L // 2)``, ``(B, D, T)`` (integers give the default dtype)."""
        half = self.num_levels // 2
        return (codes_nonnegative - half) / half

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """Codes ``(B, D, T)`` -> exact indices ``(B, T)`` int32 (an off-grid code gets its nearest code's index)."""
        self._check_inputs(codes, "codes")
        layout, dtype = self._compute(codes.dtype)
        level_indices = layout.code_to_level(codes.detach().transpose(1, 2).to(dtype))  # (B, T, D) int64
        return self._plan.pack(level_indices)[..., 0].to(torch.int32)

    # --- decoding ---------------------------------------------------------------------------------

    def decode(self, indices: Tensor, input_len: Tensor | None = None) -> Tensor:
        """``indices (1, B, T)`` (any integer dtype) -> codes ``(B, D, T)`` in the default dtype, zeroed where ``input_len`` says."""
        if not isinstance(indices, Tensor) or indices.dtype not in INDEX_DTYPES:
            raise TypeError(f"indices must be an integer tensor (1, B, T), got {getattr(indices, 'dtype', type(indices).__name__)}")
        if indices.ndim != 3:
            raise ValueError(f"indices must be (1, B, T) (one codebook, batch, time), got shape {tuple(indices.shape)}")
        if indices.size(0) > 1:  # NeMo's error
            raise ValueError(f"Expected a single codebook, got {indices.size(0)} codebooks for indices with shape {indices.shape}.")
        indices = indices[0]
        mask = _lengths_mask(input_len, indices.shape[0], indices.shape[1], indices.device)
        self._check_range(indices, mask)
        layout, dtype = self._compute(torch.get_default_dtype())
        level_indices = self._plan.unpack(indices[..., None].to(torch.int64))  # (B, T, D)
        codes = layout.code(level_indices.to(dtype)).transpose(1, 2).contiguous()
        return _masked(codes.to(torch.get_default_dtype()), mask)

    def _check_range(self, indices: Tensor, mask: Tensor | None) -> None:
        """``ValueError`` for an index outside ``[0, codebook_size)`` at a frame the mask keeps."""
        if indices.numel() == 0 or tracing() or functorch_active():
            return
        bad = (indices < 0) | (indices >= self.codebook_size)
        if mask is not None:
            bad = bad & mask
        if bool(bad.any()):
            raise ValueError(f"indices must lie in [0, {self.codebook_size}) (codebook_size) at the frames input_len keeps, "
                             f"got {int(indices[bad][0])}")

    # --- checkpoints ------------------------------------------------------------------------------

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # The level buffers are this module's constants: a checkpoint of other levels is an error, not a silent change.
        for name in ("dim_base_index", "num_levels"):
            value = state_dict.get(prefix + name)
            expected = cast(Tensor, self.constant_value(name))
            comparable = isinstance(value, Tensor) and not value.is_meta and value.shape == expected.shape
            if comparable and not torch.equal(value.cpu().long(), expected.long()):
                error_msgs.append(f"{prefix}{name}: the checkpoint holds {value.flatten().tolist()}, this module was built for "
                                  f"{expected.flatten().tolist()} (num_levels={list(self._levels)})")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"num_levels={list(self._levels)}, eps={self.eps}" + (f", backend={self.backend!r}" if self.backend != "auto" else "")


class GroupFiniteScalarQuantizer(nn.Module):
    """NeMo's ``GroupFiniteScalarQuantizer``: the channels split into ``num_groups`` groups, one
    :class:`FiniteScalarQuantizer` each.

    Args:
        num_groups: ``G``.
        num_levels_per_group: every group's levels (``d`` of them).
        **kwargs: the groups' other arguments (``eps``, and ``track_usage`` / ``backend`` of this package).

    Shapes: ``forward(inputs (B, G*d, T), input_len)`` -> ``(dequantized (B, G*d, T), indices (G, B, T) int32)``;
    ``decode(indices (G, B, T), input_len)`` -> ``(B, G*d, T)``; ``codes_to_indices(codes (B, G*d, T), input_len)``
    -> ``(B, G, T)``. ``codebook_size`` is one group's.
    """

    def __init__(self, num_groups: int, num_levels_per_group: Sequence[int], **kwargs):
        super().__init__()
        self.num_groups = integer(num_groups, "num_groups")
        self.codebook_dim_per_group = len(check_levels(num_levels_per_group, "num_levels_per_group"))
        fsqs = [FiniteScalarQuantizer(num_levels=num_levels_per_group, **kwargs)]
        with warnings.catch_warnings():  # the first group's warning (lossy NeMo indices) stands for all
            warnings.simplefilter("ignore")
            fsqs += [FiniteScalarQuantizer(num_levels=num_levels_per_group, **kwargs) for _ in range(self.num_groups - 1)]
        self.fsqs = nn.ModuleList(fsqs)

    @property
    def num_codebooks(self) -> int:
        return self.num_groups

    @property
    def codebook_size(self) -> int:
        """One group's codebook size."""
        return cast(FiniteScalarQuantizer, self.fsqs[0]).codebook_size

    @property
    def codebook_dim(self) -> int:
        return self.codebook_dim_per_group * self.num_groups

    input_types = FiniteScalarQuantizer.input_types
    output_types = FiniteScalarQuantizer.output_types

    def _split(self, tensor: Tensor, axis: int, name: str) -> tuple[Tensor, ...]:
        parts = tensor.chunk(self.num_groups, dim=axis)
        if len(parts) != self.num_groups:
            raise ValueError(f"{name} of shape {tuple(tensor.shape)} does not split into num_groups={self.num_groups} groups along axis {axis}")
        return parts

    def forward(self, inputs: Tensor, input_len: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(inputs (B, G*d, T), input_len)`` -> ``(dequantized (B, G*d, T), indices (G, B, T) int32)``."""
        if not isinstance(inputs, Tensor) or inputs.ndim != 3:
            raise ValueError(f"inputs must be a (B, D, T) tensor, got {getattr(inputs, 'shape', type(inputs).__name__)}")
        outputs = [fsq(inputs=x, input_len=input_len) for x, fsq in zip(self._split(inputs, 1, "inputs"), self.fsqs)]
        return torch.cat([o[0] for o in outputs], dim=1), torch.cat([o[1] for o in outputs], dim=0)

    def encode(self, inputs: Tensor, input_len: Tensor | None = None) -> Tensor:
        """``inputs (B, G*d, T)`` -> ``indices (G, B, T)`` int32."""
        return self(inputs=inputs, input_len=input_len)[1]

    def decode(self, indices: Tensor, input_len: Tensor | None = None) -> Tensor:
        """``indices (G, B, T)`` -> codes ``(B, G*d, T)`` in the default dtype."""
        if not isinstance(indices, Tensor) or indices.ndim != 3:
            raise ValueError(f"indices must be a (G, B, T) tensor, got {getattr(indices, 'shape', type(indices).__name__)}")
        parts = self._split(indices, 0, "indices")
        return torch.cat([cast(FiniteScalarQuantizer, fsq).decode(indices=i, input_len=input_len) for i, fsq in zip(parts, self.fsqs)],
                         dim=1)

    def codes_to_indices(self, codes: Tensor, input_len: Tensor | None = None) -> Tensor:
        """Codes ``(B, G*d, T)`` -> indices ``(B, G, T)`` int32, zero at the frames ``input_len`` drops."""
        if not isinstance(codes, Tensor) or codes.ndim != 3:
            raise ValueError(f"codes must be a (B, D, T) tensor, got {getattr(codes, 'shape', type(codes).__name__)}")
        mask = _lengths_mask(input_len, codes.shape[0], codes.shape[-1], codes.device)
        parts = self._split(codes, 1, "codes")
        return torch.stack([_masked(cast(FiniteScalarQuantizer, fsq).codes_to_indices(codes=c), mask) for c, fsq in zip(parts, self.fsqs)],
                           dim=1)

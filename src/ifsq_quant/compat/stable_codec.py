"""Stable Codec's and stable-audio-tools' dithered FSQ: ``DitheredFSQ`` and ``ResidualFSQBottleneck`` on this package's core.

Swap the import::

    from ifsq_quant.compat.stable_codec import DitheredFSQ, ResidualFSQBottleneck

for ``stable_codec.fsq`` / ``stable_codec.residual_fsq`` (stable-codec 0.1.2) or
``stable_audio_tools.models.fsq`` (stable-audio-tools 0.0.19, the same file). Same constructor
arguments, attributes, buffers (none persistent: the ``state_dict`` is empty), codes, indices and
training draws (two per-sample Bernoulli masks, then one ``rand_like``, so one ``torch.manual_seed``
gives the same outputs and the same RNG state after the forward), wherever theirs stays on its grid.

The quantizer is the ``"grid"`` layout (`docs/design.md`, section 2): the ``L`` points of ``[-s, s]``,
``k = round((f(z) + s) / step)``, ``code = k * step - s``, with ``s = scale`` and ``step`` the module's
``half_l`` buffer (theirs is a step, not a half width, despite the name), which follows
``Module.to(dtype)`` as theirs does. ``f`` is ``tanh``, or the identity with ``skip_tanh=True`` (that
runs on the reference kernel). Inputs other than float32/float64 are quantized in float64 and the codes
cast back; a float32 input into a module whose ``half_l`` was made float64 adds the scale in float32
and divides in float64, as theirs does.

Deliberate differences:

* The level index is clamped into ``[0, L - 1]``, so every code is on the grid and every index in the
  codebook. Theirs does not clamp: with ``scale < 1``, or with ``skip_tanh=True`` and inputs beyond
  ``+-scale``, its codes leave ``[-scale, scale]`` and its indices leave the codebook (they then decode,
  by floor division and modulo, to other codes). There this module gives the edge code and an
  in-range index; everywhere else the results are the same bit for bit. NaN inputs get level 0.
* ``indices_to_codes`` raises ``ValueError`` for indices outside ``[0, codebook_size)`` (theirs wraps them).
* stable-audio-tools 0.0.17 / 0.0.18 (the release stable-codec 0.1.2 pins) computed its indices as an
  int32 float sum of unrounded levels; checkpoints tokenized with it get the same codes here and exact
  int64 indices (0.0.19's), which differ from 0.0.17's exactly where 0.0.17's index does not decode to
  its own code. Its half-precision inputs were quantized in float32 (here, as 0.0.19, in float64).
* Theirs' underscore helpers (``_scale_and_shift``, ``_codes_to_indices``, ...) are not provided.
* An integer ``noise_dropout`` (0 or 1) works in training (theirs fails in ``torch.bernoulli``).

On top of theirs: ``track_usage=True`` (a :class:`~ifsq_quant.usage.CodeUsage` per module, counting the
indices of every forward), ``backend``, ``indices_to_level_indices``, the meta device (the constant
buffers are rebuilt by ``to_empty()``), ``torch.compile`` and ONNX export of the eval forward and of
``indices_to_codes``, int32 and int64 indices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from .. import kernels
from ..activations import Activation, Tanh
from ..bins import BinLayout, check_levels
from ..buffers import ConstantBuffers
from ..checks import integer, number
from ..contexts import functorch_active, tracing
from ..indexing import INDEX_DTYPES, IndexPlan
from ..usage import CodeUsage, UsageCheckpoints

__all__ = ["DitheredFSQ", "ResidualFSQBottleneck", "ShapeMismatchError"]

ALLOWED_DTYPES = (torch.float32, torch.float64)


class ShapeMismatchError(ValueError, AssertionError):
    """An input of the wrong feature or codebook size. Also an ``AssertionError``, which theirs raises."""


class Identity(Activation):
    """``f(z) = z``: the bound of ``skip_tanh=True`` (an input already in range). No fused kernel: it runs on the reference."""

    def __call__(self, z: Tensor) -> Tensor:
        return z

    def derivative(self, z: Tensor) -> Tensor:
        return torch.ones_like(z)

    def inverse(self, y: Tensor) -> Tensor:
        return y.clone()


class DitheredFSQ(UsageCheckpoints, ConstantBuffers, nn.Module):
    """Stable Codec's ``DitheredFSQ``: FSQ on the ``L``-point grid over ``[-scale, scale]``, with dither in training.

    Args:
        levels: level count ``L_i >= 2`` per dimension (``d = len(levels)``).
        dither_inference: stored, unused (as theirs).
        num_codebooks: ``c`` codebooks of ``d`` dimensions each.
        noise_dropout: in training, the probability that a sample keeps its raw value instead of the
            grid code, and (drawn again) that it is not dithered.
        scale: ``s``, the grid's half width.
        track_usage: keep a :class:`~ifsq_quant.usage.CodeUsage` in ``self.usage`` counting the indices
            of every forward (not theirs).
        backend: the kernel, as :class:`~ifsq_quant.FSQ`'s (not theirs).

    Buffers (non-persistent): ``_levels``, ``_basis`` (int64 ``(d,)``) and ``half_l``, the grid step
    ``(L - 1).reciprocal() * 2s`` in the default dtype, converted by ``Module.to(dtype)``; all constants.

    Shapes: ``forward(z (b, n, c*d), skip_tanh=False)`` -> ``codes (b, n, c*d)`` in ``z``'s dtype,
    ``indices (b, n, c)`` int64. ``indices_to_codes(indices (..., c))`` -> ``(..., c*d)`` in ``half_l``'s
    dtype. Eval: ``code = k * step - s``, straight-through gradient. Training: per sample, the raw
    ``f(z)`` (probability ``noise_dropout``) or the grid code, then per sample (same probability) kept,
    or replaced by ``f(z) + U(-0.5, 0.5) * step``; the indices are those of the nearest grid level of the
    result. See the module docstring for what differs from theirs.
    """

    half_l: Tensor
    _levels: Tensor
    _basis: Tensor
    usage: CodeUsage | None

    def __init__(self, levels: Sequence[int], dither_inference: bool = False, num_codebooks: int = 1, noise_dropout: float = 0.5,
                 scale: float = 1.0, *, track_usage: bool = False, backend: str = "auto"):
        super().__init__()
        checked = check_levels(levels)
        num_codebooks = integer(num_codebooks, "num_codebooks")
        number(noise_dropout, "noise_dropout", 0.0, 1.0)
        if number(scale, "scale") <= 0:
            raise ValueError(f"scale must be a positive number (the grid's half width), got {scale!r}")
        if backend not in kernels.BACKENDS:
            raise ValueError(f"backend must be one of {kernels.BACKENDS}, got {backend!r}")
        self.levels = levels  # the list passed, as theirs
        self.codebook_dim = len(checked)
        self.codebook_size = math.prod(checked)
        self.num_codebooks = num_codebooks
        self.dim = self.codebook_dim * num_codebooks
        self.dither_inference = dither_inference
        self._scale = scale
        self.allowed_dtypes = ALLOWED_DTYPES
        self.noise_dropout = noise_dropout
        self.backend = backend
        self._checked_levels = checked
        with torch.device("cpu"):  # host-side constants, also while built on the meta device
            self._plan = IndexPlan(checked)
            levels_tensor = torch.tensor(checked, dtype=torch.int64)
            # theirs' step, 2s / (L - 1) as Python evaluates `scale * 2 / tensor`: a reciprocal in the
            # default dtype times 2s (not the correctly rounded quotient)
            step = (levels_tensor - 1).reciprocal() * (scale * 2)
            basis = torch.tensor(self._plan.basis, dtype=torch.int64)
        self.register_constant("_levels", levels_tensor)
        self.register_constant("_basis", basis)
        self.register_buffer("half_l", step.clone(), persistent=False)
        self._step_host = step  # half_l's values on the host: follows its dtype conversions (see _apply)
        self._build_layouts()
        self.usage = CodeUsage(checked) if track_usage else None

    @property
    def scale(self) -> float:
        """``s``, the grid's half width (read at every call, as theirs: setting it moves the grid, not the step)."""
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        if number(value, "scale") <= 0:
            raise ValueError(f"scale must be a positive number (the grid's half width), got {value!r}")
        self._scale = value
        self._build_layouts()

    def _build_layouts(self) -> None:
        """The grid layouts of the current step values (tanh and identity bound)."""
        steps = self._step_host.double().tolist()
        with torch.device("cpu"):
            self._layouts = {skip: BinLayout(self._checked_levels, "grid", Identity() if skip else Tanh(), 0.0,
                                             grid_scale=float(self.scale), grid_steps=steps) for skip in (False, True)}

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # half_l follows dtype conversions as theirs (bf16 rounds the step); device moves and to_empty()
        # keep its values: it is rebuilt from the host copy, converted the same way.
        if self._step_host.dtype != self.half_l.dtype:
            self._step_host = self._step_host.to(self.half_l.dtype)
            self._build_layouts()
        self.half_l = self._step_host.to(self.half_l.device)
        return self

    # --- quantization -------------------------------------------------------------------------------

    def _quantize(self, z: Tensor, skip_tanh: bool) -> tuple[Tensor, Tensor]:
        """``z (b, n, c, d)`` float32/float64 -> codes (the dtype ``z`` promotes to with ``half_l``, straight-through
        gradient) and their level indices (int64, in ``[0, L)``), both ``(b, n, c, d)``."""
        compute = torch.promote_types(z.dtype, self.half_l.dtype)
        # f(z) itself, where it is needed besides the kernel's: the raw and dithered values, the float32 sum below
        needs_bound = self.training or compute != z.dtype
        bounded = (z if skip_tanh else torch.tanh(z)) if needs_bound else z  # (z: not read where not needed)
        if compute == z.dtype:
            x, layout = z, self._layouts[skip_tanh]  # the kernel applies the bound
        else:
            # a float32 input into a float64 half_l: theirs adds the scale in float32, then divides in
            # float64. (f(z) + s) - s in float64 gives the kernel that float32 sum back exactly for every
            # value on the grid, so the division and the code are theirs.
            x, layout = (bounded + self.scale).to(compute) - self.scale, self._layouts[True]
        grid = kernels.quantize(x.reshape(-1, self.codebook_dim), layout, self._plan, self.backend, need_level_indices=not self.training)
        codes = grid.codes.view(z.shape)
        if not self.training:
            return codes, cast(Tensor, grid.level_indices).view(z.shape).to(torch.int64)
        t = bounded
        # theirs' training draws, in order: a per-sample mask keeping the raw value, a per-sample mask
        # keeping the result, the dither (one step wide) of what it does not keep
        shape = [t.shape[0], 1, 1, 1]
        p = float(self.noise_dropout)
        raw = torch.bernoulli(torch.full(shape, p, device=t.device)).bool().expand_as(t)
        codes = torch.where(raw, t, codes)
        kept = torch.bernoulli(torch.full(shape, p, device=t.device)).bool().expand_as(t)
        codes = torch.where(kept, codes, t + (torch.rand_like(t) - 0.5) * self.half_l)
        # NaN (a NaN input kept raw) gets level 0, as everywhere in this package
        return codes, layout.code_to_level(codes.detach().nan_to_num(nan=-float(self.scale)))

    def quantize(self, z: Tensor, skip_tanh: bool = False) -> Tensor:
        """``z (b, n, c, d)`` -> codes of that shape (float32, or float64 for float64 inputs and steps; other
        dtypes are quantized in float64), as the forward computes them, without indices."""
        if not isinstance(z, Tensor) or not z.is_floating_point() or z.ndim != 4:
            raise ValueError(f"z must be a floating (b, n, c, d) tensor, got {getattr(z, 'shape', type(z).__name__)}")
        return self._quantize(z if z.dtype in ALLOWED_DTYPES else z.to(torch.float64), bool(skip_tanh))[0]

    def forward(self, z: Tensor, skip_tanh: bool = False) -> tuple[Tensor, Tensor]:
        """``z (b, n, c*d)`` -> ``(codes (b, n, c*d)`` in ``z``'s dtype, ``indices (b, n, c)`` int64)."""
        if not isinstance(z, Tensor) or not z.is_floating_point():
            raise TypeError(f"z must be a floating-point tensor (b, n, c*d), got {getattr(z, 'dtype', type(z).__name__)}")
        if z.ndim != 3 or z.shape[-1] != self.dim:
            raise ShapeMismatchError(f"z must be (b, n, {self.dim}) ({self.num_codebooks} codebooks of {self.codebook_dim} "
                                     f"dimensions), got shape {tuple(z.shape)}")
        input_dtype = z.dtype
        z = z.unflatten(-1, (self.num_codebooks, self.codebook_dim))
        if z.dtype not in ALLOWED_DTYPES:
            z = z.to(torch.float64)
        codes, level_indices = self._quantize(z, bool(skip_tanh))
        if self.usage is not None:
            self.usage._add(level_indices.reshape(-1, self.codebook_dim))
        indices = self._plan.pack(level_indices)[..., 0]
        return codes.flatten(-2).to(input_dtype), indices

    # --- decoding ---------------------------------------------------------------------------------

    def indices_to_level_indices(self, indices: Tensor) -> Tensor:
        """``indices (..., c)`` (any integer dtype) -> level indices ``(..., c, d)`` int64 in ``[0, L)``."""
        if not isinstance(indices, Tensor) or indices.dtype not in INDEX_DTYPES:
            raise TypeError(f"indices must be an integer tensor (..., {self.num_codebooks}), got "
                            f"{getattr(indices, 'dtype', type(indices).__name__)}")
        if indices.ndim == 0 or indices.shape[-1] != self.num_codebooks:
            raise ShapeMismatchError(f"indices must have a last axis of num_codebooks = {self.num_codebooks}, got shape "
                                     f"{tuple(indices.shape)}")
        if not tracing() and not functorch_active():
            self._plan.check_range(indices[..., None])
        return self._plan.unpack(indices[..., None].to(torch.int64))

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``indices (..., c)`` -> codes ``(..., c*d)`` in ``half_l``'s dtype (float32 unless the module was converted)."""
        level_indices = self.indices_to_level_indices(indices)
        return self._layouts[False].code(level_indices.to(self.half_l.dtype)).flatten(-2)

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}, num_codebooks={self.num_codebooks}, scale={self.scale}, noise_dropout={self.noise_dropout}"


class ResidualFSQBottleneck(nn.Module):
    """Stable Codec's post-hoc ``ResidualFSQBottleneck``: stages of :class:`DitheredFSQ`, each quantizing the
    residual of the stages before it.

    Args:
        stages: ``[(levels, scale), ...]``, one :class:`DitheredFSQ` each (every ``levels`` of one length ``C``).
        track_usage, backend: passed to every stage (not theirs).

    As theirs, the stages are put in eval mode with ``requires_grad_(False)`` when built (the bottleneck
    itself is in training mode until ``.eval()``); ``.train()`` on the bottleneck makes them dither.
    ``n_codebooks`` is the number of stages, and ``codebook_size`` is theirs, ``sum(map(len, stages)) *
    n_codebooks`` (``2 * n_codebooks**2`` for a list of pairs): kept for drop-in fidelity, it is not a
    codebook size (each stage's is ``stage.codebook_size``).

    Shapes: ``encode(x (b, C, n))`` -> a list of ``n_codebooks`` int64 ``(b, n, 1)`` index tensors (computed
    in float64 from ``tanh(x)``); ``decode(res_ids)`` (a list, or anything indexable by stage) -> float32
    ``(b, C, n)``, the sum of the stages' codes.
    """

    def __init__(self, stages: Sequence[tuple[Sequence[int], float]], *, track_usage: bool = False, backend: str = "auto"):
        super().__init__()
        if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence) or not stages or not all(
                isinstance(stage, Sequence) and len(stage) == 2 for stage in stages):
            raise TypeError(f"stages must be a non-empty list of (levels, scale) pairs, got {stages!r}")
        if len({len(levels) for levels, _ in stages}) != 1:
            raise ValueError(f"stages must all have levels of one length (the channels C), got {[list(levels) for levels, _ in stages]}")
        self.quantizers = nn.ModuleList([
            DitheredFSQ(levels=levels, scale=scale, track_usage=track_usage, backend=backend).eval().requires_grad_(False)
            for levels, scale in stages])
        self.n_codebooks = len(stages)
        self.codebook_size = sum(map(len, stages)) * self.n_codebooks

    def encode(self, x: Tensor) -> list[Tensor]:
        """``x (b, C, n)`` -> ``[indices (b, n, 1) int64 per stage]``."""
        if not isinstance(x, Tensor) or x.ndim != 3:
            raise ValueError(f"x must be a (b, C, n) tensor, got {getattr(x, 'shape', type(x).__name__)}")
        residual = torch.tanh(x.to(torch.float64)).transpose(1, 2)
        indices = []
        for stage in self.quantizers:
            codes, stage_indices = stage(residual, skip_tanh=True)
            residual = residual - codes.to(torch.float64)
            indices.append(stage_indices)
        return indices

    def decode(self, res_ids) -> Tensor:
        """``res_ids[i] (b, n, 1)`` for each stage ``i`` -> ``(b, C, n)``, the stages' codes summed in stage order."""
        total = cast(Tensor, sum(cast(DitheredFSQ, stage).indices_to_codes(res_ids[i]) for i, stage in enumerate(self.quantizers)))
        return total.transpose(1, 2)

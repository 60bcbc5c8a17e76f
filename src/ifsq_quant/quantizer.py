"""``FSQ`` and ``iFSQ``: the quantizer module (layout, projections, dtype policy) around the kernels.

Data flows one way (`docs/design.md`, "Map"): input -> rows ``(b, n, dim)`` (:mod:`.positions`) ->
``project_in`` -> ``(b, n, c, d)`` -> kernel (bound, bins, codes, level indices, packed indices;
:mod:`.kernels`) -> usage -> noise -> ``project_out`` -> the input's layout. What published code
leaves open (half precision, autocast, training draws) is read from ``self.spec``
(:class:`~ifsq_quant.spec.FSQSpec`); vector-quantize-pytorch's other methods and its releases are
in :mod:`.compat.vqp`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from typing import cast

import torch
from einops import rearrange
from torch import Tensor, nn

from . import kernels, noise
from .activations import Activation, HardClamp
from .bins import BinLayout, compute_dtype
from .buffers import ConstantBuffers
from .checks import check_float_input
from .compat import vqp
from .config import ActivationArgument, FSQConfig
from .contexts import functorch_active, tracing
from .indexing import IndexPlan
from .positions import Positions
from .sharding import not_a_view, runs_as_forward
from .usage import CodeUsage, UsageCheckpoints

__all__ = ["FSQ", "iFSQ", "CodebookUnavailableError"]


class CodebookUnavailableError(ValueError, AttributeError):
    """``implicit_codebook`` is not defined here. Also an ``AttributeError``, so that tools that
    probe attributes with ``hasattr`` (``torch.jit.trace`` does) pass over it."""


class FSQ(vqp.FSQMethods, UsageCheckpoints, ConstantBuffers, nn.Module):
    """Finite Scalar Quantization, a drop-in for vector-quantize-pytorch's ``FSQ``.

    Every argument of vector-quantize-pytorch's ``FSQ`` is accepted with the same meaning, and
    with the default ``activation="tanh"`` the codes and indices are bit-identical to it.

    Args:
        levels: number of levels ``L_i >= 2`` per codebook dimension (``d = len(levels)``).
        dim: input feature size; a ``Linear`` projects in and out when it differs from
            ``len(levels) * num_codebooks``.
        num_codebooks: split the features into this many codebooks of ``d`` dims each.
        keep_num_codebooks_dim: keep a codebook axis on the indices (default: ``num_codebooks > 1``).
        scale: accepted and ignored, as in vector-quantize-pytorch.
        allowed_dtypes: with ``force_quantization_f32``, the input dtypes not upcast to float32,
            as in vector-quantize-pytorch (see the dtype policy below).
        channel_first: a 3-D input is ``(batch, dim, seq)`` instead of ``(batch, seq, dim)``.
            4-D and 5-D inputs are always channel-first.
        projection_has_bias: bias of the projections.
        return_indices: compute indices (``False`` returns ``None`` and lifts the int64 limit).
        force_quantization_f32: disable autocast around the quantization and quantize
            half-precision inputs (not in ``allowed_dtypes``) in float32.
        preserve_symmetry: the ``"symmetric"`` layout (same as ``bins="symmetric"``).
        noise_dropout: in training, replace this fraction of code values by ``code + U(-0.5,
            0.5)`` clamped to ``[-1, 1]`` (indices come from the clean codes).
        bound_hard_clamp: use ``clamp(z, -1, 1)`` as the bound instead of the activation.
        orthogonal_rotation: rotate ``z`` by a fixed random orthogonal matrix before
            quantizing and back after.
        materialize_codebook: ``False`` makes ``implicit_codebook`` ``None``, as in
            vector-quantize-pytorch 1.34.1 (here the codebook is never stored either way;
            :meth:`enumerate_codes` builds it).
        activation: ``"tanh"`` (FSQ), ``"sigmoid"`` (iFSQ, ``2*sigmoid(1.6 z) - 1``), ``"erf"``,
            ``"clamp"``, an :class:`~ifsq_quant.activations.Activation` or a callable.
        bins: ``"round"`` (default), ``"symmetric"`` or ``"equal"`` (`docs/design.md`, section 2).
        eps: range widening of the ``"round"`` layout, ``half_l = (L - 1) (1 + eps) / 2`` (default ``1e-3``, as
            vector-quantize-pytorch); ``eps > -1``, a negative value shrinks the range (NeMo's ``1 - eps``).
        index_groups: split the ``d`` dims into consecutive groups, one index each (a trailing
            group axis on the indices), e.g. ``[2, 2]``.
        track_usage: keep a :class:`CodeUsage` in ``self.usage``, updated on training forwards.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"reference"`` (see :mod:`.kernels`).
        vqp_version: ``None`` (the newest vector-quantize-pytorch release's semantics) or the release
            whose codes, indices, outputs and random draws to reproduce, such as ``"1.17.8"``
            (:mod:`ifsq_quant.compat.vqp`). A checkpoint does not record it: pass the release it was
            trained with.

    Shapes: ``(b, n, dim)``; ``(b, dim, n)`` with ``channel_first``; ``(b, dim, *spatial)`` for
    4-D/5-D; ``(b, dim)``. The output has the input's shape; indices are ``(b, n)`` /
    ``(b, *spatial)`` / ``(b,)``, plus a codebook axis ``c`` when ``keep_num_codebooks_dim`` and
    a group axis ``G`` with ``index_groups``, int64 in ``[0, codebook_size)``.

    Dtype policy: the quantization runs in float32 (float64 for float64 inputs, and for levels
    above ``2**24``, which float32 cannot hold). A bf16/fp16 input that is not upcast
    (``force_quantization_f32=False``, or its dtype in ``allowed_dtypes``) is quantized as
    vector-quantize-pytorch does: the ``"symmetric"`` layout in that dtype op by op, the others
    in float32 (theirs promote to float32 before the bound); bf16/fp16
    outputs come back in the input dtype. Decoding (``indices_to_codes``,
    ``implicit_codebook``) returns the module's dtype (``.half()``, ``.double()``...): codes are
    computed in float32 (float64 for a float64 module, which then decodes exactly what its
    forward produced) and cast. NaN inputs quantize to level 0 of their dimension
    (code ``-1`` except in ``"equal"``): a defined, in-range result; ``+-inf`` saturate.
    """

    default_activation: str = "tanh"
    default_eps: float = 1e-3

    # buffers (registered in _build)
    _levels: Tensor
    _basis: Tensor
    _decode_like: Tensor
    orthogonal_rot: Tensor  # with orthogonal_rotation only

    def __init__(
        self,
        levels: Sequence[int],
        dim: int | None = None,
        num_codebooks: int = 1,
        keep_num_codebooks_dim: bool | None = None,
        scale: float | None = None,
        allowed_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64),
        channel_first: bool = False,
        projection_has_bias: bool = True,
        return_indices: bool | None = None,
        force_quantization_f32: bool = True,
        preserve_symmetry: bool = False,
        noise_dropout: float = 0.0,
        bound_hard_clamp: bool = False,
        orthogonal_rotation: bool = False,
        materialize_codebook: bool = True,
        *,
        activation: ActivationArgument | None = None,
        bins: str | None = None,
        eps: float | None = None,
        index_groups: Sequence[int] | None = None,
        track_usage: bool = False,
        backend: str = "auto",
        vqp_version: str | None = None,
    ):
        super().__init__()
        config = self._vqp_config(
            vqp_version, levels=levels, dim=dim, num_codebooks=num_codebooks, keep_num_codebooks_dim=keep_num_codebooks_dim,
            allowed_dtypes=allowed_dtypes, channel_first=channel_first, projection_has_bias=projection_has_bias,
            return_indices=return_indices, force_quantization_f32=force_quantization_f32, preserve_symmetry=preserve_symmetry,
            noise_dropout=noise_dropout, bound_hard_clamp=bound_hard_clamp, orthogonal_rotation=orthogonal_rotation,
            materialize_codebook=materialize_codebook, activation=activation, bins=bins, eps=eps, index_groups=index_groups,
            track_usage=track_usage, backend=backend)
        self.scale = scale  # unused, as in vector-quantize-pytorch
        self._build(config)

    @classmethod
    def from_config(cls, config: FSQConfig) -> FSQ:
        """The module of ``config`` (semantics ``config.spec``; vector-quantize-pytorch's methods keep their newest release's)."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._use_release(None, config.activation)
        module.scale = None
        module._build(config)
        return module

    def _build(self, config: FSQConfig) -> None:
        self.config, self.spec = config, config.spec
        levels = config.levels
        self.levels = list(levels)
        self.codebook_dim, self.num_codebooks = len(levels), config.num_codebooks
        self.effective_codebook_dim = config.effective_codebook_dim
        # FSQConfig resolved dim, keep_num_codebooks_dim and activation (its fields have the types of the arguments it takes)
        self.dim, self.keep_num_codebooks_dim = cast(int, config.dim), cast(bool, config.keep_num_codebooks_dim)
        self.channel_first = config.channel_first
        self.allowed_dtypes, self.force_quantization_f32 = config.allowed_dtypes, config.force_quantization_f32
        self.noise_dropout, self.backend, self.return_indices = config.noise_dropout, config.backend, config.return_indices
        self.activation, self.bins, self.eps = cast(Activation, config.activation), config.bins, config.eps
        self.index_groups = None if config.index_groups is None else list(config.index_groups)
        self.preserve_symmetry = config.bins == "symmetric"
        self.bound_hard_clamp = isinstance(config.activation, HardClamp)
        with torch.device("cpu"):  # host-side tables, also when the module is built on the meta device
            self.layout = BinLayout(levels, config.bins, self.activation, config.eps, config.shift, config.grid_scale, config.grid_steps)
            # built even without return_indices, for decoding and the codebook size
            self.index_plan = IndexPlan(levels, config.index_groups, check_int64=config.return_indices)
            self.register_constant("_levels", torch.tensor(levels, dtype=torch.int64))
            self.register_constant("_basis", torch.tensor(self.index_plan.basis, dtype=torch.int64))
        self.codebook_size = math.prod(levels)

        self.has_projections = self.dim != self.effective_codebook_dim
        bias, inner = config.projection_has_bias, self.effective_codebook_dim
        self.project_in = nn.Linear(self.dim, inner, bias=bias) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(inner, self.dim, bias=bias) if self.has_projections else nn.Identity()
        # Empty; follows .to()/.half()/.double(), so decoding knows the module's dtype and device.
        self.register_buffer("_decode_like", torch.empty(0), persistent=False)
        self.orthogonal_rotation, self.materialize_codebook = config.orthogonal_rotation, config.materialize_codebook
        if config.orthogonal_rotation:
            if len(set(levels)) != 1:
                warnings.warn("orthogonal_rotation mixes dimensions with different level counts; use equal levels", stacklevel=3)
            rotation = torch.empty(self.codebook_dim, self.codebook_dim)
            nn.init.orthogonal_(rotation)
            self.register_buffer("orthogonal_rot", rotation)
        self.usage = CodeUsage(levels) if config.track_usage else None

    # --- forward ---------------------------------------------------------------------------

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """Quantizes ``z``; returns ``(quantized, indices)`` (see the class docstring for shapes)."""
        check_float_input(z)
        spec = self.spec
        if spec.autocast_off_in_forward and z.is_cuda and torch.is_autocast_enabled("cuda"):
            with torch.autocast("cuda", enabled=False):
                return self.forward(z)
        input_shape, input_dtype = tuple(z.shape), z.dtype
        if spec.half_inputs == "before_projection" and z.dtype not in self.allowed_dtypes:
            z = z.float()
        channel_first = z.ndim >= 4 or (z.ndim == 3 and self.channel_first)
        z, positions = Positions.rows(z, channel_first)  # (b, n, dim)
        if z.shape[-1] != self.dim:
            raise ValueError(self._feature_axis_error(input_shape, channel_first))
        z = rearrange(self.project_in(z), "b n (c d) -> b n c d", c=self.num_codebooks)
        if self.orthogonal_rotation:
            z = z @ self.orthogonal_rot.to(z.dtype)

        autocast_off = (torch.autocast(z.device.type, enabled=False) if self.force_quantization_f32
                        and z.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(z.device.type) else nullcontext())
        with autocast_off:
            codes, indices = self._quantize_rows(z)
            codes = self.maybe_apply_noise(codes)
            if self.orthogonal_rotation:
                codes = codes @ self.orthogonal_rot.to(codes.dtype).t()
            codes = rearrange(codes, "b n c d -> b n (c d)")
            if spec.half_inputs == "after_projection":
                codes = codes.to(z.dtype)

        out = positions.restore(self.project_out(codes))
        if spec.half_inputs == "before_projection":
            out = out.to(input_dtype)
        if indices is not None:  # (b, n, c, G) -> (b, *spatial[, c][, G])
            indices = positions.restore(indices, move_first_trailing_axis=False)
            if self.index_groups is None:
                indices = indices[..., 0]
            if not self.keep_num_codebooks_dim:
                indices = indices.squeeze(-1 if self.index_groups is None else -2)
        return not_a_view(self, out), not_a_view(self, indices)

    def _quantize_rows(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """``z (b, n, c, d)`` -> codes of that shape (straight-through gradient) and indices ``(b, n, c, G)``;
        counts usage in training."""
        dtype = compute_dtype(z.dtype, self.layout)
        # a bf16/fp16 input that is not upcast goes to the kernels as it is (see kernels.quantize)
        keep_half = (self.spec.half_inputs == "after_projection" and z.dtype in kernels.HALF_DTYPES
                     and (not self.force_quantization_f32 or z.dtype in self.allowed_dtypes))
        x = z if keep_half else z.to(dtype)
        track = self.usage is not None and self.training
        plan = self.index_plan if self.return_indices else None
        if type(self).quantize is not vqp.FSQMethods.quantize:
            # A subclass's own quantize() (vector-quantize-pytorch's extension point) makes the codes.
            codes = self.quantize(z.to(dtype))
            indices = self.codes_to_indices(codes) if plan is not None else None
            level_indices = self.layout.code_to_level(codes.detach()) if track else None
            indices = None if indices is None else indices.reshape(*z.shape[:3], self.index_plan.num_groups)
        else:
            if self.training:
                x = noise.training_input(x, self.spec, self.noise_dropout, self._levels)
            result = kernels.quantize(x.reshape(-1, self.codebook_dim), self.layout, plan, self.backend, need_level_indices=track)
            codes, level_indices = result.codes.view(z.shape), result.level_indices
            indices = None if result.indices is None else result.indices.view(*z.shape[:3], self.index_plan.num_groups)
        if track:  # then there is a usage, and level indices were asked for
            usage, counted = cast(CodeUsage, self.usage), cast(Tensor, level_indices)
            usage._add(counted.reshape(-1, self.codebook_dim).to(torch.int64))
        return codes, indices

    def maybe_apply_noise(self, codes: Tensor) -> Tensor:
        """Noise dropout on the codes (training only): ``(..., d)`` -> same shape. As vector-quantize-pytorch,
        each value is perturbed with probability 1/2 whatever ``noise_dropout > 0`` is (see :mod:`.noise`)."""
        if not self.training or self.noise_dropout == 0 or self.spec.noise != "codes":
            return codes
        return noise.noisy_codes(codes, self.noise_dropout)

    def _feature_axis_error(self, shape: tuple[int, ...], channel_first: bool) -> str:
        """The message for an input whose feature axis does not hold ``dim`` features."""
        got = f"got an input of shape {shape}"
        if not channel_first:
            hint = "; a (batch, dim, seq) input needs channel_first=True" if len(shape) == 3 and shape[1] == self.dim else ""
            return f"expected {self.dim} features in the last axis (batch, ..., {self.dim}), {got}{hint}"
        layout = "4-D and 5-D inputs are channel-first" if len(shape) >= 4 else "with channel_first=True the input is"
        expected = f"(batch, {self.dim}, {', '.join('...' for _ in shape[2:])})"
        hint = f"; for a channel-last input (batch, ..., {self.dim}) pass x.movedim(-1, 1)" if shape[-1] == self.dim else ""
        return f"expected {self.dim} features in axis 1: {layout} {expected}, {got}{hint}"

    # --- codebook and decoding -------------------------------------------------------------

    @property
    def implicit_codebook(self) -> Tensor | None:
        """``(codebook_size, d)`` every code in index order (:meth:`enumerate_codes`), built on each access
        (not stored); ``None`` with ``materialize_codebook=False``, as in vector-quantize-pytorch."""
        return self.enumerate_codes() if self.materialize_codebook else None

    def enumerate_codes(self) -> Tensor:
        """``(codebook_size, d)`` every code in index order, in the module's dtype, before rotation and
        projection. Not defined with ``index_groups`` or above ``2**26`` codes."""
        self._check_codebook_enumerable()
        return self._level_indices_to_codes(self._every_level_index(self._levels.device)).to(self._decode_like.dtype)

    def _every_level_index(self, device: torch.device) -> Tensor:
        """``(codebook_size, d)`` int64: every code's level indices, in index order (one index group)."""
        return self.index_plan.unpack(torch.arange(self.codebook_size, device=device)[:, None])

    def _check_codebook_enumerable(self) -> None:
        if self.index_plan.num_groups != 1:
            raise CodebookUnavailableError("implicit_codebook enumerates one index per code; it is not defined with index_groups")
        if self.codebook_size > 2**26:
            raise CodebookUnavailableError(
                f"implicit_codebook would hold {self.codebook_size} codes; enumerate a range with indices_to_codes instead")

    def __getattr__(self, name: str) -> Tensor | nn.Module:
        # A property that raises AttributeError falls through to here: re-raise its own message.
        if name == "implicit_codebook" and self.__dict__.get("materialize_codebook", True):
            self._check_codebook_enumerable()
        return super().__getattr__(name)

    def _level_indices_to_codes(self, level_indices: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Level indices ``(..., d)`` -> codes ``(..., d)`` computed in the decode dtype of ``dtype`` (default: the module's)."""
        return self.layout.code(level_indices.to(compute_dtype(dtype or self._decode_like.dtype, self.layout)))

    def codes_from_indices(self, indices: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Indices ``(...)`` (``(..., G)`` with index_groups) -> codes ``(..., d)`` as the forward quantizes
        them: on the grid, rotation undone, before ``project_out``. Computed as the forward computes
        them for inputs of ``dtype`` (float32; float64 for float64 and levels above ``2**24``) and
        returned in ``dtype`` (default: the module's dtype).

        With more indices than codes, the codes are looked up in a table of all ``K`` of them, computed
        by the same operations (one gather instead of a division, a remainder and an affine map per
        element: the same values bit for bit, faster)."""
        dtype = dtype or self._decode_like.dtype
        self.index_plan.check_dtype(indices)
        if self.index_groups is not None or indices.numel() <= self.codebook_size:
            codes = self._level_indices_to_codes(self.indices_to_level_indices(indices), dtype)
        else:
            self.index_plan.check_range(self._group_axis(indices))
            table = self._level_indices_to_codes(self._every_level_index(indices.device), dtype)  # (K, d)
            codes = table.index_select(0, indices.reshape(-1).to(torch.int64)).reshape(*indices.shape, table.shape[1])
        if self.orthogonal_rotation:
            codes = codes @ self.orthogonal_rot.to(codes.dtype).t()
        return codes.to(dtype)

    def _group_axis(self, indices: Tensor) -> Tensor:
        """Indices without/with a trailing group axis -> ``(..., G)``; checks the codebook axis."""
        codebook_axis = -2 if self.index_groups is not None else -1
        if self.keep_num_codebooks_dim and (indices.ndim < -codebook_axis or indices.shape[codebook_axis] != self.num_codebooks):
            raise ValueError(
                f"indices need a codebook axis of size {self.num_codebooks} (num_codebooks) "
                f"{'before the group axis' if self.index_groups is not None else 'last'}, got shape {tuple(indices.shape)}")
        if self.index_groups is None:
            return indices[..., None]
        if indices.shape[-1:] != (self.index_plan.num_groups,):
            raise ValueError(f"with index_groups={self.index_groups} indices need a last axis of size "
                             f"{self.index_plan.num_groups}, got shape {tuple(indices.shape)}")
        return indices

    def indices_to_level_indices(self, indices: Tensor) -> Tensor:
        """Indices ``(...)`` (``(..., G)`` with index_groups) -> level indices ``(..., d)`` int64."""
        self.index_plan.check_dtype(indices)
        grouped = self._group_axis(indices)
        self.index_plan.check_range(grouped)
        return self.index_plan.unpack(grouped.to(torch.int64))

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """Codes ``(..., d)`` -> indices ``(...)`` (``(..., G)`` with index_groups), int64.

        Each value is snapped to the nearest level, so off-grid codes get the nearest code's index.
        """
        codes = self._check_codebook_input(codes, "codes")
        if not tracing() and not functorch_active() and not bool(torch.isfinite(codes).all()):
            raise ValueError("codes must be finite")
        indices = self.index_plan.pack(self.layout.code_to_level(codes.to(compute_dtype(codes.dtype, self.layout))))
        return indices if self.index_groups is not None else indices[..., 0]

    @runs_as_forward
    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Inverse of the forward's indices: codes in the forward output's layout (projected out).

        ``(b, n[, c][, G]) -> (b, n, dim)``; image/video indices ``(b, *spatial[, c][, G])`` ->
        ``(b, dim, *spatial)``; with ``channel_first`` the feature axis is second. In the module's
        dtype (that of its projection's weights, which a mixed-precision FSDP2 policy sets).
        """
        codes = self.codes_from_indices(indices, cast(nn.Linear, self.project_out).weight.dtype if self.has_projections else None)
        if self.keep_num_codebooks_dim:
            codes = rearrange(codes, "... c d -> ... (c d)")
        codes = self.project_out(codes)
        axes = indices.ndim - (self.index_groups is not None) - self.keep_num_codebooks_dim
        if axes >= 3 or (self.channel_first and axes == 2):
            codes = rearrange(codes, "b ... d -> b d ...")
        return codes

    def _check_codebook_input(self, z, name: str) -> Tensor:
        """``z``, checked to be a floating tensor ``(..., d)``."""
        if not isinstance(z, Tensor) or not z.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {getattr(z, 'dtype', type(z).__name__)}")
        if z.shape[-1:] != (self.codebook_dim,):
            hint = ""
            if z.ndim >= 3 and z.shape[1] == self.codebook_dim:
                hint = f"; channel-first {name} (batch, {self.codebook_dim}, ...), as the forward returns for images, need .movedim(1, -1)"
            raise ValueError(f"{name} must be channel-last, with last dimension {self.codebook_dim} (len(levels)), "
                             f"got shape {tuple(z.shape)}{hint}")
        return z

    def extra_repr(self) -> str:
        parts = [f"levels={self.levels}", f"activation={self.activation!r}", f"bins={self.bins!r}", f"eps={self.eps}"]
        if self.num_codebooks > 1:
            parts.append(f"num_codebooks={self.num_codebooks}")
        if self.index_groups is not None:
            parts.append(f"index_groups={self.index_groups}")
        if self.backend != "auto":
            parts.append(f"backend={self.backend!r}")
        return ", ".join(parts)


class iFSQ(FSQ):  # noqa: N801 - the method's name
    """iFSQ: :class:`FSQ` with the bound ``2*sigmoid(1.6 z) - 1`` and ``eps = 0``.

    With odd levels this is exactly the paper's Algorithm 1 and the official code
    (``simple_bound``, ``act_fun="scale_sigmoid_16"``). Even levels work through the same
    shift as FSQ's ``"round"`` layout.
    """

    default_activation = "sigmoid"
    default_eps = 0.0

    @classmethod
    def from_official_config(cls, config: dict, **overrides) -> FSQ:
        """Builds the module that computes the official iFSQ quantizer's codes and indices
        (:func:`ifsq_quant.compat.official.from_official_config`)."""
        from .compat import official

        return official.from_official_config(cls, config, **overrides)

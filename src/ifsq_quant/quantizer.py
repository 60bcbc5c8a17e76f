"""``FSQ`` and ``iFSQ`` modules: layouts, projections, codebooks and the dtype policy.

Data flows one way: input -> ``(b, n, c, d)`` -> kernel (bound, bins, codes, level indices,
packed indices) -> usage -> noise dropout -> projection out -> the input's layout.
"""

from __future__ import annotations

import math
import operator
import random
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from einops import rearrange
from torch import Tensor, nn

from . import kernels
from .activations import Activation, HardClamp, get_activation
from .bins import LAYOUTS, BinLayout, check_levels
from .compat import vqp as vqp_releases
from .contexts import functorch_active, tracing
from .indexing import IndexPlan
from .usage import CodeUsage

__all__ = ["FSQ", "iFSQ"]


class CodebookUnavailableError(ValueError, AttributeError):
    """``implicit_codebook`` is not defined here. Also an ``AttributeError``, so that tools that
    probe attributes with ``hasattr`` (``torch.jit.trace`` does) pass over it."""


def _as_int(value):
    """``value`` as a Python int when it is an integer (numpy integers included, as
    vector-quantize-pytorch accepts them), else unchanged for the caller's own error."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        return value
    return operator.index(value)


def compute_dtype(dtype: torch.dtype, layout: BinLayout | None = None) -> torch.dtype:
    """The dtype quantization computes in for ``dtype`` values: float64 stays, everything else
    float32, except float64 for a ``layout`` with levels float32 cannot hold (``L > 2**24``)."""
    return torch.float64 if dtype == torch.float64 or (layout is not None and layout.needs_float64) else torch.float32


def check_float_input(x, name: str = "input") -> None:
    """Raises ``TypeError``/``ValueError`` unless ``x`` is a floating-point tensor with a batch and a feature axis."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_meta:
        raise ValueError(f"{name} is a meta tensor: it has no values to quantize; use FakeTensorMode to trace shapes")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}; quantize features, not integers")
    if x.ndim < 2:
        raise ValueError(f"{name} must have a batch and a feature axis (2-D or more), got shape {tuple(x.shape)}")


class FSQ(nn.Module):
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
        activation: ``"tanh"`` (FSQ), ``"sigmoid"`` (iFSQ, ``2*sigmoid(1.6 z) - 1``), ``"erf"``,
            ``"clamp"``, an :class:`~ifsq_quant.activations.Activation` or a callable.
        bins: ``"round"`` (default), ``"symmetric"`` or ``"equal"`` (`docs/design.md`, section 2).
        eps: range widening of the ``"round"`` layout (default ``1e-3``, as vector-quantize-pytorch).
        index_groups: split the ``d`` dims into consecutive groups, one index each (a trailing
            group axis on the indices), e.g. ``[2, 2]``.
        track_usage: keep a :class:`CodeUsage` in ``self.usage``, updated on training forwards.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"reference"`` (see :mod:`.kernels`).

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
        *,
        activation: str | Activation | Callable[[Tensor], Tensor] | None = None,
        bins: str | None = None,
        eps: float | None = None,
        index_groups: Sequence[int] | None = None,
        track_usage: bool = False,
        backend: str = "auto",
        vqp_version: str | None = None,
    ):
        super().__init__()
        levels = check_levels(levels)
        if isinstance(allowed_dtypes, torch.dtype):
            allowed_dtypes = (allowed_dtypes,)
        if not isinstance(allowed_dtypes, (tuple, list, set, frozenset)) or not all(isinstance(t, torch.dtype) for t in allowed_dtypes):
            raise TypeError(f"allowed_dtypes must be a tuple of torch dtypes such as (torch.float32, torch.float64), got {allowed_dtypes!r}")
        # The vector-quantize-pytorch release whose semantics this module has (vqp_releases.py).
        self.vqp_version = vqp_version
        self.vqp = release = vqp_releases.semantics(vqp_version)
        if return_indices is None:
            return_indices = release.return_indices_default
        for name, is_default in (("allowed_dtypes", tuple(allowed_dtypes) == (torch.float32, torch.float64)),
                                 ("channel_first", not channel_first), ("projection_has_bias", projection_has_bias is True),
                                 ("return_indices", return_indices is release.return_indices_default),
                                 ("force_quantization_f32", force_quantization_f32 is True),
                                 ("preserve_symmetry", not preserve_symmetry), ("noise_dropout", noise_dropout == 0),
                                 ("bound_hard_clamp", not bound_hard_clamp), ("orthogonal_rotation", not orthogonal_rotation)):
            release.check_argument("FSQ", name, is_default)
        if preserve_symmetry and release.symmetry == "rounded_again":
            vqp_releases.refuse(release, "symmetry", " with preserve_symmetry=True")
        self.levels = list(levels)
        dim, num_codebooks = _as_int(dim), _as_int(num_codebooks)
        if isinstance(num_codebooks, bool) or not isinstance(num_codebooks, int) or num_codebooks < 1:
            raise ValueError(f"num_codebooks must be a positive integer, got {num_codebooks!r}")
        if keep_num_codebooks_dim is None:
            keep_num_codebooks_dim = num_codebooks > 1
        if num_codebooks > 1 and not keep_num_codebooks_dim:
            raise ValueError("keep_num_codebooks_dim=False needs num_codebooks=1: several codebooks need their own index axis")
        if isinstance(noise_dropout, bool) or not isinstance(noise_dropout, (int, float)):
            raise TypeError(f"noise_dropout must be a number in [0, 1], got {noise_dropout!r} ({type(noise_dropout).__name__})")
        if not 0.0 <= noise_dropout <= 1.0:
            raise ValueError(f"noise_dropout must be in [0, 1], got {noise_dropout!r}")
        if backend not in kernels.BACKENDS:
            raise ValueError(f"backend must be one of {kernels.BACKENDS}, got {backend!r}")

        if bins is None:
            bins = "symmetric" if preserve_symmetry else "round"
        elif preserve_symmetry and bins != "symmetric":
            raise ValueError(f'preserve_symmetry=True is the "symmetric" layout; it contradicts bins={bins!r}')
        if bins not in LAYOUTS:
            raise ValueError(f"bins must be one of {LAYOUTS}, got {bins!r}")
        if bound_hard_clamp:
            # The hard clamp replaces FSQ's default tanh, as in vector-quantize-pytorch; any other bound
            # (given, or the default of a subclass such as iFSQ's sigmoid) contradicts it.
            contradicted = (activation is not None and not isinstance(get_activation(activation), HardClamp)) or (
                activation is None and self.default_activation != FSQ.default_activation)
            if contradicted:
                given = self.default_activation if activation is None else activation
                raise ValueError(f"bound_hard_clamp=True replaces the bound by clamp(z, -1, 1); it contradicts "
                                 f"{type(self).__name__}'s activation={given!r} (use FSQ(..., bound_hard_clamp=True) or "
                                 "activation='clamp')")
            activation = "clamp"
        self.activation = get_activation(self.default_activation if activation is None else activation)
        # the bound of bound(..., hard_clamp=False) and symmetry_preserving_bound(...) on a hard-clamped module
        self._soft_activation = get_activation(self.default_activation) if bound_hard_clamp else self.activation
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float))):
            raise TypeError(f"eps must be a number >= 0, got {eps!r} ({type(eps).__name__})")
        self.eps = self.default_eps if eps is None else float(eps)
        self.bins = bins
        with torch.device("cpu"):  # host-side tables, also when the module is built on the meta device
            self.layout = BinLayout(levels, bins, self.activation, self.eps)

        self.codebook_dim = len(levels)
        self.num_codebooks = num_codebooks
        self.effective_codebook_dim = self.codebook_dim * num_codebooks
        self.keep_num_codebooks_dim = keep_num_codebooks_dim
        self.dim = self.effective_codebook_dim if dim is None else dim
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.channel_first = channel_first
        self.scale = scale  # unused, as in vector-quantize-pytorch
        self.allowed_dtypes = tuple(allowed_dtypes)
        self.force_quantization_f32 = force_quantization_f32
        self.preserve_symmetry = bins == "symmetric"
        self.noise_dropout = float(noise_dropout)
        self.bound_hard_clamp = bound_hard_clamp
        self.backend = backend

        self.has_projections = self.dim != self.effective_codebook_dim
        self.project_in = nn.Linear(self.dim, self.effective_codebook_dim, bias=projection_has_bias) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(self.effective_codebook_dim, self.dim, bias=projection_has_bias) if self.has_projections else nn.Identity()

        self.return_indices = return_indices
        if index_groups is not None:
            if isinstance(index_groups, (str, bytes)) or not hasattr(index_groups, "__iter__"):
                raise TypeError(f"index_groups must be a list of positive integers, got {index_groups!r}")
            index_groups = [_as_int(g) for g in index_groups]
        self.index_groups = index_groups
        # Built even without return_indices, for indices_to_codes and the codebook size.
        with torch.device("cpu"):
            self.index_plan = IndexPlan(levels, index_groups, check_int64=return_indices)
        self.codebook_size = math.prod(levels)
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int64), persistent=False)
        self.register_buffer("_basis", torch.tensor(self.index_plan.basis, dtype=torch.int64), persistent=False)
        # Empty; follows .to()/.half()/.double(), so decoding knows the module's dtype and device.
        self.register_buffer("_decode_like", torch.empty(0), persistent=False)

        self.orthogonal_rotation = orthogonal_rotation
        if orthogonal_rotation:
            if len(set(levels)) != 1:
                warnings.warn("orthogonal_rotation mixes dimensions with different level counts; use equal levels", stacklevel=2)
            rotation = torch.empty(self.codebook_dim, self.codebook_dim)
            nn.init.orthogonal_(rotation)
            self.register_buffer("orthogonal_rot", rotation)

        self.usage = CodeUsage(levels) if track_usage else None
        if self.noise_dropout not in (0.0, 0.5) and self.vqp.noise == "codes":
            warnings.warn(f"noise_dropout={self.noise_dropout}: as in vector-quantize-pytorch, each code value is perturbed "
                          "with probability 0.5 whatever noise_dropout > 0 is (its mask is Tensor.bernoulli_())", stacklevel=2)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # Usage counts load across track_usage settings, with a warning: a module without usage
        # tracking ignores a checkpoint's counts; one with it keeps its own counts where the
        # checkpoint has none (they are statistics, not weights).
        usage_keys = [k for k in state_dict if k.startswith(prefix + "usage.")]
        if self.usage is not None and not usage_keys:
            state_dict.update(self.usage.state_dict(prefix=prefix + "usage."))
            warnings.warn(f"{prefix}usage: the checkpoint has no usage counts (saved with track_usage=False); this module "
                          "keeps its own counts", stacklevel=4)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if self.usage is None and usage_keys:
            for key in usage_keys:
                if key in unexpected_keys:
                    unexpected_keys.remove(key)
            warnings.warn(f"{prefix}usage: the checkpoint has usage counts but this module was built with track_usage=False; "
                          "they were not loaded", stacklevel=4)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # Constants outside the state_dict are rebuilt after every move, so that a module built on
        # the meta device and moved with to_empty() holds them instead of uninitialized memory.
        self._levels = torch.tensor(self.levels, dtype=torch.int64, device=self._levels.device)
        self._basis = torch.tensor(self.index_plan.basis, dtype=torch.int64, device=self._basis.device)
        return self

    # --- codebook --------------------------------------------------------------------------

    @property
    def implicit_codebook(self) -> Tensor:
        """``(codebook_size, d)`` every code in index order, in the module's dtype, built on each
        access (not stored). Not defined with ``index_groups`` or above ``2**26`` codes."""
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

    def __getattr__(self, name: str):
        # A property that raises AttributeError falls through to here: re-raise its own message.
        if name == "implicit_codebook":
            self._check_codebook_enumerable()
        return super().__getattr__(name)

    @property
    def _decode_dtype(self) -> torch.dtype:
        """The dtype decoded codes are computed in: float64 for a float64 module or levels above 2**24, else float32."""
        return compute_dtype(self._decode_like.dtype, self.layout)

    def _level_indices_to_codes(self, level_indices: Tensor) -> Tensor:
        """Level indices ``(..., d)`` -> codes ``(..., d)`` in the decode dtype."""
        return self.layout.code(level_indices.to(self._decode_dtype))

    def _indices_to_unrotated_codes(self, indices: Tensor) -> Tensor:
        """Indices ``(...)`` (``(..., G)`` with index_groups) -> codes ``(..., d)`` in the decode dtype.

        With more indices than codes, the codes are looked up in a table of all ``K`` of them,
        computed by the same operations (one gather instead of a division, a remainder and an
        affine map per element: the same values bit for bit, faster)."""
        self.index_plan.check_dtype(indices)
        if self.index_groups is not None or indices.numel() <= self.codebook_size:
            return self._level_indices_to_codes(self.indices_to_level_indices(indices))
        self.index_plan.check_range(self._group_axis(indices))
        table = self._level_indices_to_codes(self._every_level_index(indices.device))  # (K, d)
        rows = indices.reshape(-1).to(torch.int64)
        return table.index_select(0, rows).reshape(*indices.shape, table.shape[1])

    def _rotate_back(self, codes: Tensor) -> Tensor:
        """Undoes the orthogonal rotation in ``codes``' dtype."""
        return codes @ self.orthogonal_rot.to(codes.dtype).t()

    def _group_axis(self, indices: Tensor) -> Tensor:
        """Indices without/with a trailing group axis -> ``(..., G)``; checks the codebook axis."""
        codebook_axis = -2 if self.index_groups is not None else -1
        if self.keep_num_codebooks_dim and (indices.ndim < -codebook_axis or indices.shape[codebook_axis] != self.num_codebooks):
            raise ValueError(
                f"indices need a codebook axis of size {self.num_codebooks} (num_codebooks) "
                f"{'before the group axis' if self.index_groups is not None else 'last'}, got shape {tuple(indices.shape)}"
            )
        if self.index_groups is None:
            return indices[..., None]
        if indices.shape[-1:] != (self.index_plan.num_groups,):
            raise ValueError(
                f"with index_groups={self.index_groups} indices need a last axis of size "
                f"{self.index_plan.num_groups}, got shape {tuple(indices.shape)}"
            )
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

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Inverse of the forward's indices: codes in the forward output's layout (projected out).

        ``(b, n[, c][, G]) -> (b, n, dim)``; image/video indices ``(b, *spatial[, c][, G])`` ->
        ``(b, dim, *spatial)``; with ``channel_first`` the feature axis is second.
        """
        codes = self._indices_to_unrotated_codes(indices)
        if self.orthogonal_rotation:
            codes = self._rotate_back(codes)
        if self.keep_num_codebooks_dim:
            codes = rearrange(codes, "... c d -> ... (c d)")
        codes = self.project_out(codes.to(self._decode_like.dtype))
        axes = indices.ndim - (self.index_groups is not None) - self.keep_num_codebooks_dim
        if axes >= 3 or (self.channel_first and axes == 2):
            codes = rearrange(codes, "b ... d -> b d ...")
        return codes

    # --- vector-quantize-pytorch's other method names, for code that calls them --------------

    def quantize(self, z: Tensor) -> Tensor:
        """Codes ``(..., d)`` of ``z (..., d)`` (already projected in): bound and round with the
        straight-through gradient; no projection or rotation (and no noise, except in the releases
        whose quantize() added it in training)."""
        if self.training and isinstance(z, Tensor):
            z = self._release_training_input(z)
        return self._quantize_with(self.layout, z)

    def bound(self, z: Tensor, eps: float | None = None, hard_clamp: bool = False) -> Tensor:
        """Codes of ``z (..., d)`` in the ``"round"`` layout (vector-quantize-pytorch's ``bound``);
        ``eps`` defaults to this module's, ``hard_clamp`` to ``False`` as theirs (``quantize``
        applies the module's ``bound_hard_clamp``). With a ``vqp_version`` before 1.22.16 it is
        that release's unrounded value ``f(z + shift) * half_l - offset`` (level units), as theirs."""
        layout = self._layout_like("round", eps, hard_clamp)
        if self.vqp.public_bound == "unrounded":
            z = self._check_codebook_input(z, "z")
            z = z.to(compute_dtype(z.dtype, layout))
            c = layout.constants(z.device, z.dtype)
            return layout.bound(z) * c["scale"] + c["bias"]
        return self._quantize_with(layout, z)

    def symmetry_preserving_bound(self, z: Tensor, hard_clamp: bool = False) -> Tensor:
        """Codes of ``z (..., d)`` in the ``"symmetric"`` layout (``preserve_symmetry=True``);
        ``hard_clamp`` defaults to ``False`` as theirs. With a ``vqp_version`` 1.21.x it is that
        release's unfloored ``2 / (L - 1) * ((L - 1) * (f(z) + 1) / 2 + 0.5) - 1``."""
        layout = self._layout_like("symmetric", None, hard_clamp)
        if not self.vqp.symmetric_bound_floored:
            z = self._check_codebook_input(z, "z")
            levels_minus_1 = (layout.num_levels - 1).to(z.device)  # an integer tensor, as theirs
            bracket = levels_minus_1 * (layout.bound(z) + 1) / 2.0 + 0.5
            return 2.0 / levels_minus_1 * bracket - 1.0
        return self._quantize_with(layout, z)

    def _layout_like(self, kind: str, eps: float | None, hard_clamp: bool | None) -> BinLayout:
        """This module's layout, or one that differs in ``kind``, ``eps`` or the hard clamp."""
        eps = self.eps if eps is None else eps
        clamp = self.bound_hard_clamp if hard_clamp is None else hard_clamp
        if (kind, eps, clamp) == (self.layout.kind, self.eps, self.bound_hard_clamp):
            return self.layout
        return BinLayout(self.levels, kind, HardClamp() if clamp else self._soft_activation, eps)

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

    def _quantize_with(self, layout: BinLayout, z: Tensor) -> Tensor:
        z = self._check_codebook_input(z, "z")
        # theirs never upcasts here: a bf16/fp16 z goes to the kernels as it is (see kernels.quantize)
        flat = (z if z.dtype in kernels.HALF_DTYPES else z.to(compute_dtype(z.dtype, layout))).reshape(-1, self.codebook_dim)
        return kernels.quantize(flat, layout, None, self.backend).codes.view(z.shape)

    def _indices_to_codes(self, indices: Tensor) -> Tensor:
        """Indices -> codes ``(..., d)`` before rotation and projection."""
        return self._level_indices_to_codes(self.indices_to_level_indices(indices))

    def _scale_and_shift(self, codes: Tensor) -> Tensor:
        """Codes -> level indices as unrounded floats, ``(..., d)`` (inverse of :meth:`_scale_and_shift_inverse`)."""
        return self.layout.level_value(codes)

    def _scale_and_shift_inverse(self, level_indices: Tensor) -> Tensor:
        """Level indices ``(..., d)`` -> codes ``(..., d)``."""
        return self.layout.code(level_indices.to(self._decode_dtype if not level_indices.is_floating_point() else level_indices.dtype))

    # --- forward ---------------------------------------------------------------------------

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """Quantizes ``z``; returns ``(quantized, indices)`` (see the class docstring for shapes)."""
        check_float_input(z)
        release = self.vqp
        if release.forward_autocast_off and z.is_cuda and torch.is_autocast_enabled("cuda"):
            with torch.autocast("cuda", enabled=False):  # those releases decorate forward with it
                return self.forward(z)
        input_shape, input_dtype = tuple(z.shape), z.dtype
        if release.half_inputs == "upcast_before_projection" and z.dtype not in self.allowed_dtypes:
            z = z.float()
        channel_last_needed = z.ndim >= 4 or (z.ndim == 3 and self.channel_first)
        if channel_last_needed:
            z = rearrange(z, "b d ... -> b ... d")
        spatial = z.shape[1:-1]
        z = z.reshape(z.shape[0], math.prod(spatial), z.shape[-1])  # (b, n, dim); copies only where it must
        if z.shape[-1] != self.dim:
            raise ValueError(self._feature_axis_error(input_shape, channel_last_needed))

        z = self.project_in(z)
        z = rearrange(z, "b n (c d) -> b n c d", c=self.num_codebooks)
        if self.orthogonal_rotation:
            z = z @ self.orthogonal_rot.to(z.dtype)

        autocast_off = (torch.autocast(z.device.type, enabled=False) if self.force_quantization_f32
                        and z.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(z.device.type) else nullcontext())
        with autocast_off:
            orig_dtype = z.dtype
            dtype = compute_dtype(orig_dtype, self.layout)
            # vector-quantize-pytorch quantizes a bf16/fp16 input in its own dtype unless forced to float32
            in_input_dtype = (release.half_inputs == "upcast_after_projection" and orig_dtype in kernels.HALF_DTYPES
                              and (not self.force_quantization_f32 or orig_dtype in self.allowed_dtypes))
            track = self.usage is not None and self.training
            if type(self).quantize is not FSQ.quantize:
                # A subclass's own quantize() (vector-quantize-pytorch's extension point) makes the codes.
                codes = self.quantize(z.to(dtype))
                indices = self.codes_to_indices(codes) if self.return_indices else None
                if track:
                    self.usage._add(self.layout.code_to_level(codes.detach().reshape(-1, self.codebook_dim)))
                result = kernels.QuantizeOutput(codes, None if indices is None else indices.reshape(-1, self.index_plan.num_groups), None)
            else:
                quantized_input = z if in_input_dtype else z.to(dtype)
                if self.training:
                    quantized_input = self._release_training_input(quantized_input)
                result = kernels.quantize(quantized_input.reshape(-1, self.codebook_dim), self.layout,
                                          self.index_plan if self.return_indices else None, self.backend, need_level_indices=track)
                if track:
                    self.usage._add(result.level_indices.to(torch.int64))
            codes = result.codes.view(z.shape)
            codes = self.maybe_apply_noise(codes)
            if self.orthogonal_rotation:
                codes = self._rotate_back(codes)
            codes = rearrange(codes, "b n c d -> b n (c d)")
            if release.half_inputs == "upcast_after_projection":
                codes = codes.to(orig_dtype)

        out = self.project_out(codes)
        out = out.reshape(out.shape[0], *spatial, out.shape[-1])
        if channel_last_needed:
            out = rearrange(out, "b ... d -> b d ...")
        if release.half_inputs == "upcast_before_projection":
            out = out.to(input_dtype)

        indices = None
        if self.return_indices:
            indices = result.indices.view(*z.shape[:3], self.index_plan.num_groups)
            indices = indices.reshape(indices.shape[0], *spatial, *indices.shape[2:])
            if self.index_groups is None:
                indices = indices[..., 0]
            if not self.keep_num_codebooks_dim:
                indices = indices.squeeze(-1 if self.index_groups is None else -2)
        return out, indices

    def _feature_axis_error(self, shape: tuple[int, ...], channel_first: bool) -> str:
        """The message for an input whose feature axis does not hold ``dim`` features."""
        got = f"got an input of shape {shape}"
        if not channel_first:
            hint = "; a (batch, dim, seq) input needs channel_first=True" if len(shape) == 3 and shape[1] == self.dim else ""
            return f"expected {self.dim} features in the last axis (batch, ..., {self.dim}), {got}{hint}"
        layout = "4-D and 5-D inputs are channel-first" if len(shape) >= 4 else "with channel_first=True the input is"
        expected = f"(batch, {self.dim}, {', '.join('...' for _ in shape[2:])})"
        hint = ""
        if shape[-1] == self.dim:
            hint = f"; for a channel-last input (batch, ..., {self.dim}) pass x.movedim(-1, 1)"
        return f"expected {self.dim} features in axis 1: {layout} {expected}, {got}{hint}"

    def _release_training_input(self, z: Tensor) -> Tensor:
        """The random draws and input noise of this module's release in a training forward:
        ``z (b, n, c, d)`` -> ``z`` (perturbed where the release adds noise dropout to the input)."""
        release, p = self.vqp, self.noise_dropout
        if release.training_draws == "broken":
            vqp_releases.refuse(release, "training_draws", " in training")
        if release.training_draws == "python_random":
            random.random()  # those releases draw it for a noise option that is off by default
        elif release.training_draws in ("bernoulli_4d", "bernoulli_batch"):
            # two per-sample masks and one offset per value, drawn also with noise_dropout=0
            shape = (z.shape[0], 1, 1, 1) if release.training_draws == "bernoulli_4d" else (z.shape[0],)
            torch.bernoulli(torch.full(shape, p, device=z.device))
            torch.bernoulli(torch.full(shape, p, device=z.device))
            torch.rand_like(z)
        if p == 0 or release.noise == "codes":
            return z
        if release.noise not in ("input_scaled", "input"):
            vqp_releases.refuse(release, "noise", f" with noise_dropout={p} in training")
        mask = torch.bernoulli(torch.full_like(z, p)).bool()
        offset = torch.rand_like(z) - 0.5
        if release.noise == "input_scaled":
            offset = offset / (self._levels.to(z.device) // 2)
        return torch.where(mask, z + offset, z)

    def maybe_apply_noise(self, codes: Tensor) -> Tensor:
        """Noise dropout (training only): codes ``(..., d)`` -> same shape.

        As in vector-quantize-pytorch, each value is perturbed with probability 1/2 whatever
        ``noise_dropout > 0`` is (its mask is ``Tensor.bernoulli_()``, whose probability is 0.5).
        """
        if not self.training or self.noise_dropout == 0 or self.vqp.noise != "codes":
            return codes
        # The same random draws, in the same order, as vector-quantize-pytorch (equal under one seed).
        mask = torch.full_like(codes, self.noise_dropout).bernoulli_().bool()
        offset = torch.rand_like(codes) - 0.5
        return torch.where(mask, codes + offset, codes).clamp(-1.0, 1.0)

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

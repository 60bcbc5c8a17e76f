"""Residual FSQ: a stack of :class:`~ifsq_quant.FSQ` stages, each quantizing what the previous left.

``ResidualFSQ`` and ``GroupedResidualFSQ`` are drop-ins for vector-quantize-pytorch's classes
of the same names (same constructor arguments, same return values and shapes, and in eval
mode bit-identical codes and indices), with this package's stage options on top
(``activation``, ``bins``, ``eps``, ``backend``) so that the stages can be iFSQ stages.
``vqp_version="1.x.y"`` gives a release's semantics (:mod:`.compat.vqp`); by default the latest.

How a forward works (``q`` stages, ``d = len(levels)``; the latest release)::

    z = soft_clamp(project_in(x))            # (N, d), N positions
    residual = z
    for i in range(q):                       # stage i works at the scale L ** -i
        code_i = stage_i(residual / L**-i)   # codes in [-1, 1]
        quantized += code_i * L**-i
        residual -= (code_i * L**-i).detach()
    out = project_out(quantized)

The per-stage scale ``L ** -i`` (per dimension) shrinks each stage's grid by the number of
levels, so stage ``i + 1`` subdivides one bin of stage ``i``: the residual grid of a
symmetric layout (the default, as in vector-quantize-pytorch). Releases before 1.26.0 use round
stages, scales ``(L - 1) ** -i`` and no input clamp; before 1.18.5 the first residual is stage 0's
unrounded bound of ``z`` instead of ``z``.

Quantize dropout (training with gradients): one stage index ``k`` is drawn per forward and the
stages after ``k`` are skipped; their indices are ``-1`` (vector-quantize-pytorch's marker), and
:meth:`ResidualFSQ.get_output_from_indices` reads ``-1`` as "stage dropped" (a zero code). With
reentrant activation checkpointing (``torch.utils.checkpoint(..., use_reentrant=True)``) the
forward runs without gradients, so it drops no stage, while the recompute in the backward does:
the loss and the indices then come from one computation and the gradients from another (as in
vector-quantize-pytorch); a warning says so once. Use ``use_reentrant=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import cast

import torch
from torch import Tensor, nn

from .bins import check_levels, compute_dtype
from .buffers import ConstantBuffers
from .checks import check_float_input, integer
from .compat import vqp
from .config import ActivationArgument
from .contexts import functorch_active, tracing
from .dropout import DROPPED, QuantizeDropout
from .indexing import IndexPlan
from .positions import Positions
from .quantizer import FSQ
from .sharding import not_a_view, runs_as_forward

__all__ = ["ResidualFSQ", "GroupedResidualFSQ"]

# Stage arguments that would change a stage's input or index shape; the residual module owns them.
_OWNED_STAGE_ARGS = {
    "channel_first": "use is_channel_first=... on the residual module",
    "preserve_symmetry": 'use bins="symmetric" (the default of residual stages) or bins="round"/"equal"',
}
HALF_AND_FULL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class ResidualFSQ(ConstantBuffers, nn.Module):
    """Residual FSQ, a drop-in for vector-quantize-pytorch's ``ResidualFSQ``.

    Args:
        levels: levels ``L_i`` per codebook dimension, shared by every stage (``d = len(levels)``).
        num_quantizers: number of stages ``q``.
        dim: input feature size (default ``d``); a ``Linear`` projects in and out when it differs.
        is_channel_first: the input is ``(b, dim, *spatial)`` instead of ``(b, ..., dim)``.
        quantize_dropout: in training, skip the stages after a random one (needs ``q > 1``).
        quantize_dropout_cutoff_index: the first stage that may be the last one kept.
        quantize_dropout_multiple_of: round the number of kept stages up to a multiple of this.
        soft_clamp_input_value: before the stages, ``z = tanh(z / c) * c``; a number or one per
            dimension. With ``bound_hard_clamp`` it is ``1 + 1 / (L - 1)`` and may not be given.
        bound_hard_clamp: stages bound with ``clamp(z, -1, 1)`` (vector-quantize-pytorch's
            default, ``True``, since 1.26.0). Default ``None``: the release's default unless
            ``activation`` is given, since the hard clamp replaces the activation; ``True`` with
            another activation is an error.
        projection_has_bias: forwarded to the stages, as vector-quantize-pytorch does. The stages
            have no projection, so it has no effect: the residual module's own ``project_in`` /
            ``project_out`` always have a bias (also as vector-quantize-pytorch), so its
            checkpoints load with ``strict=True`` whatever this flag says.
        residual_f32: compute the residuals, the per-stage scaling and the sum of the stages in
            float32 (float64 for float64) whatever the input dtype, and cast the sum back to the
            dtype ``project_in`` produced. Default ``False``: vector-quantize-pytorch's
            arithmetic, op for op, in the dtype PyTorch's type promotion gives (the input's
            dtype in a ``.half()`` / ``.bfloat16()`` module), so a half-precision model keeps
            its tokens after the swap; ``True`` keeps more precision for the fine stages (see
            ``docs/design.md``, "Dtype policy").
        activation: stage bound when not hard-clamped: ``"tanh"``, ``"sigmoid"`` (iFSQ),
            ``"erf"``, an :class:`~ifsq_quant.activations.Activation` or a callable.
        bins: stage bin layout: the release's (``"symmetric"``, vector-quantize-pytorch's
            residual stages use ``preserve_symmetry=True`` since 1.26.0; ``"round"`` before),
            ``"round"`` or ``"equal"``.
        eps: range widening of the ``"round"`` layout (only with ``bins="round"``).
        backend: stage kernel backend (see :class:`~ifsq_quant.FSQ`).
        vqp_version: ``None`` (the latest release's semantics) or the vector-quantize-pytorch
            release whose semantics to reproduce, such as ``"1.17.8"`` (:mod:`.compat.vqp`).
        **kwargs: forwarded to every stage :class:`~ifsq_quant.FSQ` (e.g. ``noise_dropout``,
            ``force_quantization_f32``, ``allowed_dtypes``, ``orthogonal_rotation``, ``track_usage``).

    Shapes (``q = num_quantizers``):
        input ``(b, ..., dim)``, or ``(b, dim, *spatial)`` with ``is_channel_first`` (the only
        switch: unlike :class:`~ifsq_quant.FSQ`, a 4-D/5-D input is not taken as channel-first
        by itself, as in vector-quantize-pytorch's ``ResidualFSQ``);
        quantized: the input's shape; indices ``(b, ..., q)``, or ``(b, q, *spatial)`` with
        ``is_channel_first`` (vector-quantize-pytorch's layout), int64 in
        ``[0, codebook_size)`` or ``-1`` for a stage dropped by quantize dropout;
        all codes (``return_all_codes=True``): ``(q, b, ..., d)``, channel-last, scaled by each
        stage's scale, zero for dropped stages. Decoding takes channel-last indices
        ``(b, ..., q)`` in every layout, as vector-quantize-pytorch (``channel_first=True`` reads
        the forward's channel-first indices instead).

    Attributes: ``layers`` (the stages), ``scales`` (``(q, d)``), ``codebook_size`` (of one
    stage), ``codebooks`` (``(q, codebook_size, d)``, unscaled), ``has_projections``.
    """

    # constants (register_constant)
    scales: Tensor
    soft_clamp_input_value: Tensor | None

    def __init__(
        self,
        *,
        levels: Sequence[int],
        num_quantizers: int,
        dim: int | None = None,
        is_channel_first: bool = False,
        quantize_dropout: bool = False,
        quantize_dropout_cutoff_index: int = 0,
        quantize_dropout_multiple_of: int = 1,
        soft_clamp_input_value: float | Sequence[float] | Tensor | None = None,
        bound_hard_clamp: bool | None = None,
        projection_has_bias: bool = True,
        activation: ActivationArgument | None = None,
        bins: str | None = None,
        eps: float | None = None,
        backend: str = "auto",
        residual_f32: bool = False,
        vqp_version: str | None = None,
        **kwargs,
    ):
        super().__init__()
        self.levels = levels = list(check_levels(levels))
        self.num_quantizers = integer(num_quantizers, "num_quantizers")
        self.codebook_dim = codebook_dim = len(levels)
        self.dim = codebook_dim if dim is None else integer(dim, "dim")
        self.is_channel_first = bool(is_channel_first)
        self.residual_f32 = bool(residual_f32)
        self.vqp_version = vqp_version
        self.vqp = release = vqp.semantics(vqp_version)
        self.spec = spec = vqp.residual_spec(release)
        for key, hint in _OWNED_STAGE_ARGS.items():
            if key in kwargs:
                raise TypeError(f"{key} is not a stage argument of ResidualFSQ; {hint}")
        # The stages must return one index per position, so no codebook or group axes.
        if kwargs.get("num_codebooks", 1) != 1:
            raise ValueError(f"num_codebooks must be 1 for residual stages, got {kwargs['num_codebooks']!r}; "
                             "use GroupedResidualFSQ to split features")
        if kwargs.get("keep_num_codebooks_dim"):
            raise ValueError("keep_num_codebooks_dim=True is not supported by residual stages (indices are (..., num_quantizers))")
        if kwargs.get("index_groups") is not None:
            raise ValueError("index_groups is not supported by residual stages (indices are (..., num_quantizers))")
        self.bound_hard_clamp, bins = vqp.residual_options(
            release, is_channel_first=is_channel_first, soft_clamp_input_value=soft_clamp_input_value,
            bound_hard_clamp=bound_hard_clamp, activation=activation, bins=bins, eps=eps, stage_kwargs=kwargs)
        kwargs["return_indices"] = True

        # Always with a bias: vector-quantize-pytorch gives projection_has_bias to the stages only.
        self.has_projections = self.dim != codebook_dim
        self.project_in = nn.Linear(self.dim, codebook_dim) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, self.dim) if self.has_projections else nn.Identity()
        self.layers = nn.ModuleList(
            FSQ(levels=levels, dim=codebook_dim, bound_hard_clamp=self.bound_hard_clamp, activation=activation, bins=bins, eps=eps,
                backend=backend, projection_has_bias=projection_has_bias, vqp_version=vqp_version, **kwargs)
            for _ in range(self.num_quantizers))
        self.codebook_size = self._stages[0].codebook_size

        self.quantize_dropout = bool(quantize_dropout) and self.num_quantizers > 1
        self.quantize_dropout_cutoff_index = integer(quantize_dropout_cutoff_index, "quantize_dropout_cutoff_index", minimum=0)
        if self.quantize_dropout and self.quantize_dropout_cutoff_index >= self.num_quantizers:
            raise ValueError(f"quantize_dropout_cutoff_index must be below num_quantizers={self.num_quantizers}, "
                             f"got {self.quantize_dropout_cutoff_index}")
        self.quantize_dropout_multiple_of = integer(quantize_dropout_multiple_of, "quantize_dropout_multiple_of")
        self.dropout = QuantizeDropout(spec.dropout, spec.refusals, self.quantize_dropout, self.quantize_dropout_cutoff_index,
                                       self.quantize_dropout_multiple_of, self.num_quantizers)

        # Stage i's scale: the same float32 ops as vector-quantize-pytorch ((L - 1) ** -i or L ** -i), so
        # residuals match it bit for bit. A buffer (it follows .half()/.double() as theirs); residual_f32
        # reads the exact copy (constant_value).
        with torch.device("cpu"):  # host-side values, also when the module is built on the meta device
            levels_f = torch.tensor(levels).float()
            base = levels_f - 1 if spec.stage_scale_base == "levels_minus_one" else levels_f
            scales = torch.stack([base ** -i for i in range(self.num_quantizers)])
            if self.bound_hard_clamp:
                if soft_clamp_input_value is not None:
                    raise ValueError("soft_clamp_input_value must not be given with bound_hard_clamp=True (it is then 1 + 1/(L-1)); "
                                     "pass bound_hard_clamp=False to choose your own")
                # Squash into slightly more than [-1, 1] so the hard clamp rarely saturates.
                soft_clamp_input_value = 1 + (1 / (torch.tensor(levels) - 1))
            self.register_constant("scales", scales)
            self.register_constant("soft_clamp_input_value",
                                   None if soft_clamp_input_value is None else _soft_clamp(soft_clamp_input_value, codebook_dim))
        # Per floating dtype, the stages whose scale underflows so far that 1 / scale overflows (deep
        # stacks of many levels), with the dimensions where it does: stage -> (d,) bool mask.
        vanishing = {dtype: torch.isinf(1 / scales.to(dtype)) for dtype in HALF_AND_FULL}
        self._vanishing_scales = {dtype: {i: v[i] for i in range(self.num_quantizers) if bool(v[i].any())}
                                  for dtype, v in vanishing.items()}

    @property
    def _stages(self) -> Sequence[FSQ]:
        """:attr:`layers`, typed as the stages they hold (to a type checker an ``nn.ModuleList`` holds plain modules)."""
        return cast("Sequence[FSQ]", self.layers)

    @property
    def module_dtype(self) -> torch.dtype:
        """The floating dtype of the module: its projections' (which ``.half()`` and a mixed-precision FSDP2
        policy set), else its ``scales`` buffer's (``.half()``, ``.double()``, ...)."""
        return cast(nn.Linear, self.project_in).weight.dtype if self.has_projections else self.scales.dtype

    def _work_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype the residual arithmetic runs in for a ``dtype`` module/input (see ``residual_f32``):
        with the first residual a stage's bound, that bound's compute dtype (float32 for half precision)."""
        work = compute_dtype(dtype) if self.residual_f32 else dtype
        return torch.promote_types(work, compute_dtype(dtype)) if self.spec.first_residual == "bound" else work

    def _stage_sum(self, parts: list[Tensor], dtype: torch.dtype) -> Tensor:
        """The sum of the stages' scaled codes, as the forward gives it to ``project_out``: in the dtype
        type promotion gives, or cast to ``dtype`` (``project_in``'s) with ``residual_f32``."""
        total = _sum_stages(parts)
        total = total.to(dtype) if self.residual_f32 else total
        if (self.spec.first_residual == "bound" and self.has_projections and total.dtype != self.project_out.weight.dtype
                and not torch.is_autocast_enabled(total.device.type)):
            self.spec.refusals.refuse("half_projection", f" in a {self.module_dtype} module")
        return total

    def _constant(self, name: str, device: torch.device, work: torch.dtype) -> Tensor | None:
        """The scales / soft clamp: with ``residual_f32`` as built, in ``work``; else the buffer in the module's dtype."""
        value = self.constant_value(name) if self.residual_f32 else getattr(self, name)
        return None if value is None else value.to(device=device, dtype=work if self.residual_f32 else self.module_dtype)

    # --- codebooks and decoding ------------------------------------------------------------

    @property
    def codebooks(self) -> Tensor:
        """``(q, codebook_size, d)``: every stage's codes in index order, unscaled (built on access)."""
        return torch.stack([layer.enumerate_codes() for layer in self._stages])

    def _indices_channel_last(self, indices: Tensor, channel_first: bool) -> Tensor:
        """Validates indices and returns them as ``(b, ..., q)`` int64, padded with -1 to ``q``."""
        IndexPlan.check_dtype(indices)
        if indices.ndim < 2:
            raise ValueError(f"indices must have a batch and a quantizer axis, got shape {tuple(indices.shape)}")
        if channel_first:
            indices = indices.movedim(1, -1)  # the forward's (b, q, *spatial)
        given = indices.shape[-1]
        if given > self.num_quantizers:
            where = "axis 1 (channel_first=True)" if channel_first else "the last axis (decoding takes channel-last (b, ..., q) indices)"
            raise ValueError(f"indices have {given} quantizer entries in {where} but num_quantizers={self.num_quantizers}; "
                             f"got shape {tuple(indices.shape)}")
        indices = indices.to(torch.int64)
        if given < self.num_quantizers:
            # Coarse indices (the first stages only) are what quantize dropout trains for.
            if not self.quantize_dropout:
                raise ValueError(f"indices have {given} of {self.num_quantizers} quantizer entries; reconstructing from fewer "
                                 "stages needs quantize_dropout=True")
            indices = nn.functional.pad(indices, (0, self.num_quantizers - given), value=DROPPED)
        if indices.numel() and not tracing() and not functorch_active():  # no values to check in a traced graph
            bad = (indices < DROPPED) | (indices >= self.codebook_size)
            if bool(bad.any()):
                raise ValueError(f"indices out of range: got {int(indices[bad][0])}; valid are 0 .. {self.codebook_size - 1} "
                                 "and -1 (stage dropped)")
        return indices

    def _scaled_codes(self, indices: Tensor, channel_first: bool) -> tuple[list[Tensor], tuple[int, ...]]:
        """Every stage's scaled codes ``(N, d)`` in the forward's working dtype (zero where dropped), and the lead shape.

        Each code is computed as the stage's forward computes it (:meth:`FSQ.codes_from_indices`) and
        scaled with the forward's scale, so that summing them in order reproduces the forward's
        ``quantized`` bit for bit in eval mode."""
        indices = self._indices_channel_last(indices, channel_first)
        lead = tuple(indices.shape[:-1])
        flat = indices.reshape(-1, self.num_quantizers)
        dropped = flat == DROPPED
        safe = flat.masked_fill(dropped, 0)  # decode a dummy code, zeroed below
        work = self._work_dtype(self.module_dtype)
        scales = cast(Tensor, self._constant("scales", indices.device, work))  # (always registered)
        codes = []
        for i, layer in enumerate(self._stages):
            if flat.shape[0] <= layer.codebook_size:
                codes.append(layer.codes_from_indices(safe[:, i], dtype=work).masked_fill(dropped[:, i, None], 0.0) * scales[i])
                continue
            # More rows than codes: one gather from a table of every scaled code plus a zero row for a
            # dropped stage (row K), whose values are the row-by-row ones (the same operations), bit for bit.
            every = torch.arange(layer.codebook_size, device=indices.device)
            table = layer.codes_from_indices(every, dtype=work) * scales[i]  # (K, d)
            table = torch.cat([table, table.new_zeros(1, table.shape[1])])
            codes.append(table.index_select(0, safe[:, i].masked_fill(dropped[:, i], layer.codebook_size)))
        return codes, lead

    def get_codes_from_indices(self, indices: Tensor, *, channel_first: bool = False) -> Tensor:
        """Indices -> every stage's scaled codes ``(q, b, ..., d)`` (zero where the index is -1).

        ``indices`` are channel-last, ``(b, ..., q')``, in every layout (as vector-quantize-pytorch,
        whose decoding ignores ``is_channel_first``); ``channel_first=True`` reads them as the
        forward returns them with ``is_channel_first``, ``(b, q', *spatial)``. ``q' < q`` (the
        first stages only) is allowed with ``quantize_dropout`` and reads as the later stages
        dropped. int64 and int32 indices (and smaller integer types) are accepted. The codes are
        in the module's dtype (:attr:`module_dtype`).
        """
        codes, lead = self._scaled_codes(indices, channel_first)
        return torch.stack(codes).to(self.module_dtype).reshape(self.num_quantizers, *lead, self.codebook_dim)

    @runs_as_forward
    def get_output_from_indices(self, indices: Tensor, *, channel_first: bool = False) -> Tensor:
        """Indices -> the forward's ``quantized`` in the module's dtype.

        ``(b, ..., q) -> (b, ..., dim)``, channel-last in every layout (as vector-quantize-pytorch);
        with ``channel_first=True`` the forward's channel-first indices ``(b, q, *spatial)`` ->
        ``(b, dim, *spatial)``, the forward's own layout. ``-1`` marks a dropped stage. In eval mode
        it equals the forward's output bit for bit, dtype included, for inputs in the module's dtype
        (float32, float64, float16, bfloat16), with or without ``residual_f32``. That dtype is the
        module's, except where the forward promotes: with a ``vqp_version`` before 1.18.5 a
        half-precision module's forward and decode return float32 (the first residual is the float32
        bound); that release's own decode returns the module's dtype and equals neither.
        """
        codes, lead = self._scaled_codes(indices, channel_first)
        out = self.project_out(self._stage_sum(codes, self.module_dtype).reshape(*lead, self.codebook_dim))
        return out.movedim(-1, 1) if channel_first else out

    # --- forward ---------------------------------------------------------------------------

    def forward(self, x: Tensor, return_all_codes: bool = False,
                rand_quantize_dropout_fixed_seed: int | None = None) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """Quantizes ``x``; returns ``(quantized, indices)`` or, with ``return_all_codes``,
        ``(quantized, indices, all_codes)`` (shapes in the class docstring).

        ``rand_quantize_dropout_fixed_seed`` fixes the quantize dropout draw (training only).
        """
        check_float_input(x)
        # the stages see vector-quantize-pytorch's (b, n, d): some releases' draws depend on the batch size
        x, positions = Positions.rows(x, self.is_channel_first)
        if x.shape[-1] != self.dim:
            where = "channel (second)" if self.is_channel_first else "last"
            hint = "" if self.is_channel_first else "; for (b, dim, *spatial) inputs pass is_channel_first=True"
            raise ValueError(f"expected {self.dim} features in the {where} axis, got {x.shape[-1]}{hint}")

        x = self.project_in(x)
        out_dtype, work = x.dtype, self._work_dtype(x.dtype)
        x = x.to(work)
        # vector-quantize-pytorch's ops on the buffers as they are: type promotion decides the dtype (a
        # half-precision module keeps half-precision residuals); residual_f32 computes in `work`
        clamp_value = self._constant("soft_clamp_input_value", x.device, work)
        scales = cast(Tensor, self._constant("scales", x.device, work))  # (always registered)
        if clamp_value is not None:
            x = (x / clamp_value).tanh() * clamp_value

        drop = self.dropout.active(self.training)
        last_kept = self.dropout.last_kept(x.device, rand_quantize_dropout_fixed_seed) if drop else self.num_quantizers - 1
        parts, all_indices = [], []
        vanishing = self._vanishing_scales.get(scales.dtype, {})
        with torch.autocast(x.device.type, enabled=False) if x.device.type in ("cuda", "cpu") else nullcontext():
            residual = self._stages[0].bound(x) if self.spec.first_residual == "bound" else x
            for i, layer in enumerate(self.layers):
                if i > last_kept:
                    all_indices.append(torch.full(x.shape[:2], DROPPED, dtype=torch.int64, device=x.device))
                    continue
                # no gradient through 1 / scale = inf (the stage's STE gradient there, f'(+-inf), is 0 anyway)
                stage_input = residual if i not in vanishing else torch.where(vanishing[i].to(x.device), residual.detach(), residual)
                codes, indices = layer(stage_input / scales[i])
                quantized = codes * scales[i]
                residual = residual - quantized.detach()  # the gradient reaches x through every stage's STE
                parts.append(quantized)
                all_indices.append(indices)

        out = positions.restore(self.project_out(self._stage_sum(parts, out_dtype)))
        indices = positions.restore(torch.stack(all_indices, dim=-1))
        out, indices = not_a_view(self, out), not_a_view(self, indices)
        if not return_all_codes:
            return out, indices
        return out, indices, self.get_codes_from_indices(indices, channel_first=self.is_channel_first)

    def extra_repr(self) -> str:
        stage = self.layers[0]
        parts = [f"levels={self.levels}", f"num_quantizers={self.num_quantizers}", f"dim={self.dim}",
                 f"bins={stage.bins!r}", f"activation={stage.activation!r}"]
        if self.quantize_dropout:
            parts.append(f"quantize_dropout=True, cutoff_index={self.quantize_dropout_cutoff_index}, "
                         f"multiple_of={self.quantize_dropout_multiple_of}")
        if self.is_channel_first:
            parts.append("is_channel_first=True")
        if self.residual_f32:
            parts.append("residual_f32=True")
        if self.vqp_version is not None:
            parts.append(f"vqp_version={self.vqp_version!r}")
        return ", ".join(parts)


def _soft_clamp(value, d: int) -> Tensor:
    """``soft_clamp_input_value`` checked: a number or ``d`` numbers, positive and finite -> a float tensor."""
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, (int, float, Sequence, Tensor)):
        raise TypeError(f"soft_clamp_input_value must be a number, a list of numbers or a tensor, got {value!r} "
                        f"({type(value).__name__})")
    if isinstance(value, Sequence) and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise TypeError(f"soft_clamp_input_value must hold numbers, got {value!r}")
    if isinstance(value, Tensor) and value.is_meta:
        raise ValueError("soft_clamp_input_value is a meta tensor: it has no values; give the numbers (a float, a list or a "
                         "tensor with values)")
    t = value.detach() if isinstance(value, Tensor) else torch.tensor(value, dtype=torch.float32, device="cpu")
    t = t if t.is_floating_point() else t.float()
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, d)):
        raise ValueError(f"soft_clamp_input_value must be a number or {d} numbers (one per dimension), got shape {tuple(t.shape)}")
    if not bool((t > 0).all()) or not bool(torch.isfinite(t).all()):
        raise ValueError(f"soft_clamp_input_value must be positive and finite, got {t.tolist()}")
    return t


def _sum_stages(parts: list[Tensor]) -> Tensor:
    # Stage by stage from 0.0, in the forward's order (vector-quantize-pytorch's ``quantized_out = 0.``
    # then ``+=``), so a decode is bit-exact.
    total: float | Tensor = 0.0
    for part in parts:
        total = total + part
    return cast(Tensor, total)  # (there is always a stage)


class GroupedResidualFSQ(nn.Module):
    """Grouped residual FSQ, a drop-in for vector-quantize-pytorch's ``GroupedResidualFSQ``.

    The feature axis is split into ``groups`` equal chunks, each quantized by its own
    :class:`ResidualFSQ` (built with ``dim // groups`` and ``**kwargs``, ``vqp_version``
    included). In training all groups share one quantize dropout draw; under
    ``torch.distributed`` its seed is summed over the ranks with one ``all_reduce``, done only on
    training forwards that actually drop stages (``quantize_dropout=True`` with gradients
    enabled; vector-quantize-pytorch does it on every training forward). Every rank must then call
    forward the same number of times, as with any collective. Releases before 1.19.3 draw the seed
    on every forward, eval included (from Python's ``random`` before 1.18.7), and so does this
    module with their ``vqp_version``.

    Args:
        dim: input feature size (divisible by ``groups``).
        groups: number of groups ``g``.
        accept_image_fmap: the features are on axis 1 (``(b, dim, *spatial)``). In
            vector-quantize-pytorch this and ``is_channel_first`` must be set together; here
            either one implies the other (setting ``is_channel_first=False`` with it is an error).
        **kwargs: forwarded to every :class:`ResidualFSQ` (``levels``, ``num_quantizers``, ...).

    Shapes: quantized: the input's shape; indices ``(g, *per-group indices)``, i.e.
    ``(g, b, ..., q)`` or ``(g, b, q, *spatial)``; with ``return_all_codes`` a third item, a
    tuple of ``g`` tensors ``(q, b, ..., d)`` (as vector-quantize-pytorch). Decoding takes
    channel-last ``(g, b, ..., q)`` indices and returns ``(b, ..., dim)`` (``channel_first=True``:
    the forward's channel-first indices and layout).
    """

    def __init__(self, *, dim: int, groups: int = 1, accept_image_fmap: bool = False, **kwargs):
        super().__init__()
        self.dim = dim = integer(dim, "dim")
        self.groups = groups = integer(groups, "groups")
        if dim % groups != 0:
            raise ValueError(f"dim ({dim}) must be divisible by groups ({groups})")
        channel_first = bool(accept_image_fmap) or bool(kwargs.get("is_channel_first", False))
        if accept_image_fmap and kwargs.get("is_channel_first", True) is False:
            raise ValueError("accept_image_fmap=True puts the features on axis 1; it contradicts is_channel_first=False")
        vqp.check_grouped_options(vqp.semantics(kwargs.get("vqp_version")), channel_first)
        if channel_first:
            kwargs["is_channel_first"] = True
        self.accept_image_fmap = channel_first
        self.rvqs = nn.ModuleList(ResidualFSQ(dim=dim // groups, **kwargs) for _ in range(groups))
        self.codebook_size = self._residuals[0].codebook_size

    @property
    def _residuals(self) -> Sequence[ResidualFSQ]:
        """:attr:`rvqs`, typed as the modules they hold (to a type checker an ``nn.ModuleList`` holds plain modules)."""
        return cast("Sequence[ResidualFSQ]", self.rvqs)

    @property
    def split_dim(self) -> int:
        return 1 if self.accept_image_fmap else -1

    @property
    def codebooks(self) -> Tensor:
        """``(g, q, codebook_size, d)``."""
        return torch.stack([rvq.codebooks for rvq in self._residuals])

    def _group_chunks(self, indices) -> list[Tensor]:
        """``indices`` (a tensor with a leading group axis, or one tensor per group) as ``g`` tensors of one shape."""
        if isinstance(indices, Tensor):
            if indices.ndim == 0 or indices.shape[0] != self.groups:
                raise ValueError(f"indices must have a leading group axis of size {self.groups}, got shape {tuple(indices.shape)}")
            return list(indices.unbind(0))
        if not isinstance(indices, Sequence) or len(indices) != self.groups or not all(isinstance(t, Tensor) for t in indices):
            raise ValueError(f"indices must be a tensor (groups, ...) or {self.groups} tensors (one per group), "
                             f"got {type(indices).__name__}{'' if not isinstance(indices, Sequence) else f' of length {len(indices)}'}")
        shapes = {tuple(t.shape) for t in indices}
        if len(shapes) != 1:
            raise ValueError(f"the groups' indices must have one shape, got {sorted(shapes)}")
        return list(indices)

    def get_codes_from_indices(self, indices: Tensor, *, channel_first: bool = False) -> Tensor:
        """``(g, *per-group indices)`` -> ``(g, q, b, ..., d)``."""
        chunks = self._group_chunks(indices)
        return torch.stack([rvq.get_codes_from_indices(chunk, channel_first=channel_first) for rvq, chunk in zip(self._residuals, chunks)])

    @runs_as_forward
    def get_output_from_indices(self, indices: Tensor, *, channel_first: bool = False) -> Tensor:
        """``(g, b, ..., q)`` -> ``(b, ..., dim)``; with ``channel_first=True`` the forward's
        ``(g, b, q, *spatial)`` -> ``(b, dim, *spatial)``."""
        chunks = self._group_chunks(indices)
        outs = [rvq.get_output_from_indices(chunk, channel_first=channel_first) for rvq, chunk in zip(self._residuals, chunks)]
        return torch.cat(outs, dim=1 if channel_first else -1)

    def forward(self, x: Tensor, return_all_codes: bool = False):
        """Returns ``(quantized, indices)`` or ``(quantized, indices, all_codes)`` (see the class docstring)."""
        check_float_input(x)
        if x.shape[self.split_dim] != self.dim:
            where = "second" if self.accept_image_fmap else "last"
            raise ValueError(f"expected {self.dim} features in the {where} axis, got {x.shape[self.split_dim]}")
        seed = self._residuals[0].dropout.group_seed(self.training, x.device)  # one seed for all groups: they drop the same stages
        outs = [rvq(chunk, return_all_codes=return_all_codes, rand_quantize_dropout_fixed_seed=seed)
                for rvq, chunk in zip(self.rvqs, x.chunk(self.groups, dim=self.split_dim))]
        quantized = torch.cat([o[0] for o in outs], dim=self.split_dim)
        indices = torch.stack([o[1] for o in outs])
        if not return_all_codes:
            return quantized, indices
        return quantized, indices, tuple(o[2] for o in outs)

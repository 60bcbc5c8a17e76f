"""Residual FSQ: a stack of :class:`~ifsq_quant.FSQ` stages, each quantizing what the previous left.

``ResidualFSQ`` and ``GroupedResidualFSQ`` are drop-ins for vector-quantize-pytorch's classes
of the same names (same constructor arguments, same return values and shapes, and in eval
mode bit-identical codes and indices), with this package's stage options on top
(``activation``, ``bins``, ``eps``, ``backend``) so that the stages can be iFSQ stages.
``vqp_version="1.x.y"`` gives a release's semantics (:mod:`.vqp_releases`); by default the latest.

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

import math
import operator
import random
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .activations import Activation, HardClamp, get_activation
from .bins import check_levels
from .compat import vqp as vqp_releases
from .contexts import cached, functorch_active, tracing
from .indexing import IndexPlan
from .quantizer import FSQ, check_float_input, compute_dtype

__all__ = ["ResidualFSQ", "GroupedResidualFSQ"]

DROPPED = -1  # index of a stage skipped by quantize dropout (vector-quantize-pytorch's marker)
GROUPED_PYTHON_SEED_BOUND = 10_000_000  # the grouped seed of releases that draw it from Python's random
TORCH_SEED_BOUND = 10_000  # the dropout seed drawn from torch's RNG

# Stage arguments that would change a stage's input or index shape; the residual module owns them.
_OWNED_STAGE_ARGS = {
    "channel_first": "use is_channel_first=... on the residual module",
    "preserve_symmetry": 'use bins="symmetric" (the default of residual stages) or bins="round"/"equal"',
}


def _int_arg(value, name: str, minimum: int = 1) -> int:
    """``value`` as a Python int (any integer type: ``int``, numpy integers, ...), at least ``minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got a bool ({value!r})")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})") from None
    if number < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return number


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _dropout_seed(device: torch.device, synchronize: bool = True, over_ranks: bool = True) -> int | None:
    """A seed drawn from torch's RNG on ``device`` (so ``torch.manual_seed`` fixes it), summed over ranks.

    The sum is the same on every rank, so all ranks drop the same stages (as
    vector-quantize-pytorch does). With ``synchronize=False`` the number is drawn (the RNG
    advances exactly as with it, so later random draws match vector-quantize-pytorch's) but
    neither reduced over ranks nor read back to the host; ``None`` is returned. With
    ``over_ranks=False`` it is read back without the sum (each rank keeps its own).
    """
    seed = torch.randint(0, TORCH_SEED_BOUND, (), device=device)
    if not synchronize:
        return None
    if over_ranks and _distributed():
        dist.all_reduce(seed)
    return int(seed.item())


class ResidualFSQ(nn.Module):
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
            release whose semantics to reproduce, such as ``"1.17.8"`` (:mod:`.vqp_releases`).
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
        activation: str | Activation | Callable[[Tensor], Tensor] | None = None,
        bins: str | None = None,
        eps: float | None = None,
        backend: str = "auto",
        residual_f32: bool = False,
        vqp_version: str | None = None,
        **kwargs,
    ):
        super().__init__()
        levels = list(check_levels(levels))
        self.levels = levels
        self.num_quantizers = _int_arg(num_quantizers, "num_quantizers")
        codebook_dim = len(levels)
        self.codebook_dim = codebook_dim
        self.dim = codebook_dim if dim is None else _int_arg(dim, "dim")
        self.is_channel_first = bool(is_channel_first)
        self.residual_f32 = bool(residual_f32)
        self.vqp_version = vqp_version
        self.vqp = release = vqp_releases.semantics(vqp_version)
        for name, is_default in (("is_channel_first", not is_channel_first), ("soft_clamp_input_value", soft_clamp_input_value is None),
                                 ("bound_hard_clamp", bound_hard_clamp is None or bool(bound_hard_clamp) == release.hard_clamp_default)):
            release.check_argument("ResidualFSQ", name, is_default)

        for key, hint in _OWNED_STAGE_ARGS.items():
            if key in kwargs:
                raise TypeError(f"{key} is not a stage argument of ResidualFSQ; {hint}")
        # The stages must return one index per position, so no codebook or group axes.
        if kwargs.get("num_codebooks", 1) != 1:
            raise ValueError(
                f"num_codebooks must be 1 for residual stages, got {kwargs['num_codebooks']!r}; use GroupedResidualFSQ to split features"
            )
        if kwargs.get("keep_num_codebooks_dim"):
            raise ValueError("keep_num_codebooks_dim=True is not supported by residual stages (indices are (..., num_quantizers))")
        if kwargs.get("index_groups") is not None:
            raise ValueError("index_groups is not supported by residual stages (indices are (..., num_quantizers))")
        if kwargs.get("return_indices", release.return_indices_default) is not True:
            if not release.return_indices_default and "return_indices" not in kwargs:
                raise ValueError(f"vqp_version={release.release!r}: the stages of that release return no indices unless "
                                 "return_indices=True is passed (its ResidualFSQ fails without it)")
            raise ValueError("return_indices=False is not supported: residual quantization returns its indices")
        kwargs["return_indices"] = True

        # The hard clamp *is* the bound, so an explicit activation turns it off by default.
        if bound_hard_clamp is None:
            bound_hard_clamp = activation is None and release.hard_clamp_default
        if bound_hard_clamp and activation is not None and not isinstance(get_activation(activation), HardClamp):
            raise ValueError(
                f"bound_hard_clamp=True replaces the stage activation by clamp(z, -1, 1); it contradicts "
                f"activation={activation!r} (leave bound_hard_clamp unset or False to use the activation)"
            )
        self.bound_hard_clamp = bool(bound_hard_clamp)
        if bins is None:
            bins = release.stage_bins
        if eps is not None and bins != "round":
            raise ValueError(f'eps only affects bins="round"; it has no effect with bins={bins!r}')
        if release.first_residual == "bound" and bins != "round":
            raise ValueError(f"vqp_version={release.release!r}: that release's first residual is the round layout's "
                             f'unrounded bound, which bins={bins!r} does not define; use bins="round" (its default)')

        # Always with a bias: vector-quantize-pytorch gives projection_has_bias to the stages only.
        self.has_projections = self.dim != codebook_dim
        self.project_in = nn.Linear(self.dim, codebook_dim) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, self.dim) if self.has_projections else nn.Identity()

        self.layers = nn.ModuleList(
            FSQ(levels=levels, dim=codebook_dim, bound_hard_clamp=self.bound_hard_clamp, activation=activation,
                bins=bins, eps=eps, backend=backend, projection_has_bias=projection_has_bias, vqp_version=vqp_version, **kwargs)
            for _ in range(self.num_quantizers)
        )
        self.codebook_size = self.layers[0].codebook_size

        self.quantize_dropout = bool(quantize_dropout) and self.num_quantizers > 1
        cutoff = _int_arg(quantize_dropout_cutoff_index, "quantize_dropout_cutoff_index", minimum=0)
        if self.quantize_dropout and cutoff >= self.num_quantizers:
            raise ValueError(
                f"quantize_dropout_cutoff_index must be below num_quantizers={self.num_quantizers}, got {cutoff}"
            )
        self.quantize_dropout_cutoff_index = cutoff
        self.quantize_dropout_multiple_of = _int_arg(quantize_dropout_multiple_of, "quantize_dropout_multiple_of")

        with torch.device("cpu"):  # host-side copies, also when the module is built on the meta device
            # Same float32 ops as vector-quantize-pytorch ((L - 1) ** -i or L ** -i), so residuals
            # match it bit for bit. A buffer (it follows .half()/.double() as theirs); residual_f32
            # uses the exact copy.
            levels_f = torch.tensor(levels).float()
            base = levels_f - 1 if release.stage_scale == "levels_minus_one" else levels_f
            self._scales_f32 = torch.stack([base ** -i for i in range(self.num_quantizers)])
            if self.bound_hard_clamp:
                if soft_clamp_input_value is not None:
                    raise ValueError(
                        "soft_clamp_input_value must not be given with bound_hard_clamp=True (it is then 1 + 1/(L-1)); "
                        "pass bound_hard_clamp=False to choose your own"
                    )
                # Squash into slightly more than [-1, 1] so the hard clamp rarely saturates.
                soft_clamp_input_value = 1 + (1 / (torch.tensor(levels) - 1))
            if soft_clamp_input_value is not None:
                soft_clamp_input_value = self._check_soft_clamp(soft_clamp_input_value, codebook_dim)
            self._soft_clamp_exact = soft_clamp_input_value
        self.register_buffer("scales", self._scales_f32.clone(), persistent=False)
        self.register_buffer("soft_clamp_input_value", None if soft_clamp_input_value is None else soft_clamp_input_value.clone(),
                             persistent=False)
        self._exact_cache: dict[tuple, Tensor] = {}
        # Per floating dtype, the stages whose scale underflows so far that 1 / scale overflows (deep
        # stacks of many levels), with the dimensions where it does: (q,) stage -> (d,) bool mask.
        self._vanishing_scales = {}
        with torch.device("cpu"):
            for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
                vanishing = torch.isinf(1 / self._scales_f32.to(dtype))
                self._vanishing_scales[dtype] = {i: vanishing[i] for i in range(self.num_quantizers) if bool(vanishing[i].any())}

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # The buffers outside the state_dict are rebuilt from the exact host copies after every move
        # (in the dtype the move gave them), so that a module built on the meta device and moved with
        # to_empty() holds them instead of uninitialized memory.
        self.scales = self._scales_f32.to(device=self.scales.device, dtype=self.scales.dtype)
        if self.soft_clamp_input_value is not None:
            self.soft_clamp_input_value = self._soft_clamp_exact.to(device=self.soft_clamp_input_value.device,
                                                                     dtype=self.soft_clamp_input_value.dtype)
        return self

    def _exact(self, name: str, device: torch.device, dtype: torch.dtype) -> Tensor | None:
        """The scales / soft clamp as built (not cast by ``.half()``), in ``dtype`` on ``device`` (cached)."""
        source = self._scales_f32 if name == "scales" else self._soft_clamp_exact
        if source is None:
            return None
        return cached(self._exact_cache, (name, torch.device(device), dtype), lambda: source.to(device=device, dtype=dtype))

    @property
    def module_dtype(self) -> torch.dtype:
        """The floating dtype of the module (of its ``scales`` buffer: follows ``.half()``, ``.double()``, ...)."""
        return self.scales.dtype

    @staticmethod
    def _check_soft_clamp(value, d: int) -> Tensor:
        if isinstance(value, (bool, str, bytes)) or not isinstance(value, (int, float, Sequence, Tensor)):
            raise TypeError(f"soft_clamp_input_value must be a number, a list of numbers or a tensor, got {value!r} "
                            f"({type(value).__name__})")
        if isinstance(value, Sequence) and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise TypeError(f"soft_clamp_input_value must hold numbers, got {value!r}")
        t = value if isinstance(value, Tensor) else torch.tensor(value, dtype=torch.float32)
        if not t.is_floating_point():
            t = t.float()
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, d)):
            raise ValueError(f"soft_clamp_input_value must be a number or {d} numbers (one per dimension), got shape {tuple(t.shape)}")
        if not bool((t > 0).all()) or not bool(torch.isfinite(t).all()):
            raise ValueError(f"soft_clamp_input_value must be positive and finite, got {t.tolist()}")
        return t

    # --- codebooks and indices -------------------------------------------------------------

    @property
    def codebooks(self) -> Tensor:
        """``(q, codebook_size, d)``: every stage's codes in index order, unscaled (built on access)."""
        return torch.stack([layer.implicit_codebook for layer in self.layers])

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
                raise ValueError(
                    f"indices have {given} of {self.num_quantizers} quantizer entries; reconstructing from fewer "
                    "stages needs quantize_dropout=True"
                )
            indices = nn.functional.pad(indices, (0, self.num_quantizers - given), value=DROPPED)
        if indices.numel() and not tracing() and not functorch_active():  # no values to check in a traced graph
            bad = (indices < DROPPED) | (indices >= self.codebook_size)
            if bool(bad.any()):
                value = int(indices[bad][0])
                raise ValueError(
                    f"indices out of range: got {value}; valid are 0 .. {self.codebook_size - 1} and -1 (stage dropped)"
                )
        return indices

    def _work_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype the residual arithmetic runs in for a ``dtype`` module/input (see ``residual_f32``)."""
        if self.residual_f32:
            return compute_dtype(dtype)
        return dtype

    def _stage_scales(self, device: torch.device, work: torch.dtype) -> Tensor:
        return self._exact("scales", device, work) if self.residual_f32 else self.scales.to(device)

    def _scaled_codes(self, indices: Tensor, channel_first: bool) -> tuple[list[Tensor], tuple[int, ...]]:
        """Every stage's scaled codes ``(N, d)`` in the forward's working dtype, and the lead shape.

        Each code is computed as the stage's forward computes it (float32, float64 in a float64
        module; then cast to the working dtype) and scaled with the forward's scale, so that
        summing them in order reproduces the forward's ``quantized`` bit for bit in eval mode.
        """
        indices = self._indices_channel_last(indices, channel_first)
        lead = tuple(indices.shape[:-1])
        flat = indices.reshape(-1, self.num_quantizers)
        dropped = flat == DROPPED
        safe = flat.masked_fill(dropped, 0)  # look up a dummy code, zeroed below
        work = self._work_dtype(self.module_dtype)
        scales = self._stage_scales(indices.device, work)
        codes = []
        for i, layer in enumerate(self.layers):
            code_dtype = compute_dtype(work, layer.layout)
            if flat.shape[0] > layer.codebook_size and layer.index_groups is None and not layer.orthogonal_rotation:
                codes.append(self._stage_table_lookup(layer, safe[:, i], dropped[:, i], code_dtype, work, scales[i]))
                continue
            # The stage's level indices and layout directly: its forward computes codes in
            # code_dtype, whatever the dtype FSQ.indices_to_codes would return.
            code = layer.layout.code(layer.indices_to_level_indices(safe[:, i]).to(code_dtype))  # (N, d)
            if layer.orthogonal_rotation:
                code = code @ layer.orthogonal_rot.t().to(code_dtype)
            codes.append(code.to(work).masked_fill(dropped[:, i, None], 0.0) * scales[i])
        return codes, lead

    @staticmethod
    def _stage_table_lookup(layer, stage: Tensor, dropped: Tensor, code_dtype: torch.dtype, work: torch.dtype,
                            scale: Tensor) -> Tensor:
        """One stage's scaled codes ``(N, d)`` of its indices ``stage (N,)`` (0 where ``dropped``), looked
        up in a table of all ``K`` scaled codes plus a zero row for dropped stages (row ``K``): with
        more rows than codes, one gather is cheaper than decoding each row. The table's values come
        from the same operations as the row-by-row decoding, so the results are the same bit for bit."""
        layer.index_plan.check_range(stage[:, None])
        table = layer.layout.code(layer._every_level_index(stage.device).to(code_dtype)).to(work) * scale  # (K, d)
        table = torch.cat([table, table.new_zeros(1, table.shape[1])])  # (K + 1, d)
        return table.index_select(0, stage.to(torch.int64).masked_fill(dropped, layer.codebook_size))

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
        out = torch.stack(codes).to(self.module_dtype)
        return out.reshape(self.num_quantizers, *lead, self.codebook_dim)

    def get_output_from_indices(self, indices: Tensor, *, channel_first: bool = False) -> Tensor:
        """Indices -> the forward's ``quantized`` in the module's dtype.

        ``(b, ..., q) -> (b, ..., dim)``, channel-last in every layout (as vector-quantize-pytorch);
        with ``channel_first=True`` the forward's channel-first indices ``(b, q, *spatial)`` ->
        ``(b, dim, *spatial)``, the forward's own layout. ``-1`` marks a dropped stage. In eval mode
        it equals the forward's output bit for bit for inputs in the module's dtype (float32,
        float64, float16, bfloat16), with or without ``residual_f32``.
        """
        codes, lead = self._scaled_codes(indices, channel_first)
        out = self._sum_stages(codes).to(self.module_dtype)
        out = self.project_out(out.reshape(*lead, self.codebook_dim))
        if channel_first:
            out = out.movedim(-1, 1)
        return out

    @staticmethod
    def _sum_stages(parts: list[Tensor]) -> Tensor:
        # Stage by stage from 0.0, in the forward's order (vector-quantize-pytorch's
        # ``quantized_out = 0.`` then ``+=``), so a round trip is bit-exact.
        total = 0.0
        for part in parts:
            total = total + part
        return total

    # --- forward ---------------------------------------------------------------------------

    def _dropout_last_kept(self, device: torch.device, seed: int | None) -> int:
        """The index of the last stage kept by quantize dropout (stages after it are skipped),
        drawn as the module's release draws it."""
        release = self.vqp
        if self.quantize_dropout_multiple_of != 1 and not release.dropout_multiple_of_works:
            vqp_releases.refuse(release, "dropout_multiple_of_works")
        if seed is not None:
            rng = random.Random(seed)
        elif release.dropout_seed == "python_random" or (release.dropout_seed == "python_random_local" and not _distributed()):
            rng = random  # the global Python RNG, as those releases
        elif release.dropout_seed in ("torch", "torch_cpu"):
            seed_device = torch.device("cpu") if release.dropout_seed == "torch_cpu" else device
            rng = random.Random(_dropout_seed(seed_device, over_ranks=not release.seed_sync_needs_grad or torch.is_grad_enabled()))
        else:
            vqp_releases.refuse(release, "dropout_seed")
        last = rng.randrange(self.quantize_dropout_cutoff_index, self.num_quantizers)
        m = self.quantize_dropout_multiple_of
        if m != 1:
            last = math.ceil((last + 1) / m) * m - 1  # keep a multiple of m stages
        return last

    def _drops_stages(self) -> bool:
        """Whether this forward draws quantize dropout (training; with gradients, in the releases that ask for them)."""
        if not (self.training and self.quantize_dropout):
            return False
        if self.vqp.dropout_needs_grad and not torch.is_grad_enabled():
            warnings.warn("ResidualFSQ: a training forward with quantize_dropout=True ran without gradients, so no stage was "
                          "dropped; under reentrant activation checkpointing (use_reentrant=True) the recompute in the backward "
                          "drops stages, so the gradients come from another computation than the loss (use use_reentrant=False)",
                          stacklevel=3)
            return False
        return True

    def forward(
        self,
        x: Tensor,
        return_all_codes: bool = False,
        rand_quantize_dropout_fixed_seed: int | None = None,
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """Quantizes ``x``; returns ``(quantized, indices)`` or, with ``return_all_codes``,
        ``(quantized, indices, all_codes)`` (shapes in the class docstring).

        ``rand_quantize_dropout_fixed_seed`` fixes the quantize dropout draw (training only).
        """
        check_float_input(x)
        if self.is_channel_first:
            x = x.movedim(1, -1)
        # Positions flattened to (b, N, dim) with an explicit N (an inferred axis cannot be reshaped
        # when the batch is empty): the stages see vector-quantize-pytorch's (b, n, d).
        lead = x.shape[:-1]
        x = x.reshape(lead[0], math.prod(lead[1:]), x.shape[-1])
        if x.shape[-1] != self.dim:
            where = "channel (second)" if self.is_channel_first else "last"
            hint = "" if self.is_channel_first else "; for (b, dim, *spatial) inputs pass is_channel_first=True"
            raise ValueError(f"expected {self.dim} features in the {where} axis, got {x.shape[-1]}{hint}")

        x = self.project_in(x)
        out_dtype = x.dtype
        work = self._work_dtype(x.dtype)
        if self.residual_f32:
            x = x.to(work)
            clamp_value = self._exact("soft_clamp", x.device, work)
        else:
            # vector-quantize-pytorch's ops on the buffers as they are: type promotion decides
            # the dtype (a half-precision module keeps half-precision residuals).
            clamp_value = self.soft_clamp_input_value
        scales = self._stage_scales(x.device, work)
        if clamp_value is not None:
            x = (x / clamp_value).tanh() * clamp_value

        drop = self._drops_stages()
        last_kept = self._dropout_last_kept(x.device, rand_quantize_dropout_fixed_seed) if drop else self.num_quantizers - 1

        autocast_off = torch.autocast(x.device.type, enabled=False) if x.device.type in ("cuda", "cpu") else nullcontext()
        parts, all_indices = [], []
        residual = x
        vanishing = self._vanishing_scales.get(scales.dtype, {})
        with autocast_off:
            if self.vqp.first_residual == "bound":
                residual = self.layers[0].bound(x)  # those releases start from stage 0's unrounded bound
            for i, layer in enumerate(self.layers):
                if i > last_kept:
                    all_indices.append(torch.full(x.shape[:2], DROPPED, dtype=torch.int64, device=x.device))
                    continue
                scale = scales[i]
                # no gradient through 1 / scale = inf (the stage's STE gradient there, f'(+-inf), is 0 anyway)
                stage_input = (residual if i not in vanishing else torch.where(vanishing[i].to(x.device), residual.detach(), residual)) / scale
                codes, indices = layer(stage_input)
                quantized = codes * scale
                residual = residual - quantized.detach()  # gradient reaches x through every stage's STE
                parts.append(quantized)
                all_indices.append(indices)

        out = self._sum_stages(parts)
        if self.residual_f32:
            out = out.to(out_dtype)
        out = self.project_out(out)
        out = out.reshape(*lead, self.dim)
        indices = torch.stack(all_indices, dim=-1).reshape(*lead, self.num_quantizers)
        if self.is_channel_first:
            out = out.movedim(-1, 1)
            indices = indices.movedim(-1, 1)

        if not return_all_codes:
            return out, indices
        return out, indices, self.get_codes_from_indices(indices, channel_first=self.is_channel_first)

    def extra_repr(self) -> str:
        stage = self.layers[0]
        parts = [f"levels={self.levels}", f"num_quantizers={self.num_quantizers}", f"dim={self.dim}",
                 f"bins={stage.bins!r}", f"activation={stage.activation!r}"]
        if self.quantize_dropout:
            parts.append(f"quantize_dropout=True, cutoff_index={self.quantize_dropout_cutoff_index}, multiple_of={self.quantize_dropout_multiple_of}")
        if self.is_channel_first:
            parts.append("is_channel_first=True")
        if self.residual_f32:
            parts.append("residual_f32=True")
        if self.vqp_version is not None:
            parts.append(f"vqp_version={self.vqp_version!r}")
        return ", ".join(parts)


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
        self.dim = dim = _int_arg(dim, "dim")
        self.groups = groups = _int_arg(groups, "groups")
        if dim % groups != 0:
            raise ValueError(f"dim ({dim}) must be divisible by groups ({groups})")
        self.vqp = release = vqp_releases.semantics(kwargs.get("vqp_version"))
        if release.grouped_seed == "broken":
            vqp_releases.refuse(release, "grouped_seed")
        channel_first = bool(accept_image_fmap) or bool(kwargs.get("is_channel_first", False))
        if accept_image_fmap and kwargs.get("is_channel_first", True) is False:
            raise ValueError("accept_image_fmap=True puts the features on axis 1; it contradicts is_channel_first=False")
        if channel_first:
            if not release.has_argument("ResidualFSQ", "is_channel_first"):
                raise ValueError(f"vqp_version={release.release!r}: accept_image_fmap needs vector-quantize-pytorch >= "
                                 f"{release.first_release_of('ResidualFSQ', 'is_channel_first')} (that release's ResidualFSQ "
                                 "takes (batch, seq, dim) inputs only)")
            kwargs["is_channel_first"] = True
        self.accept_image_fmap = channel_first
        self.rvqs = nn.ModuleList(ResidualFSQ(dim=dim // groups, **kwargs) for _ in range(groups))
        self.codebook_size = self.rvqs[0].codebook_size

    @property
    def split_dim(self) -> int:
        return 1 if self.accept_image_fmap else -1

    @property
    def codebooks(self) -> Tensor:
        """``(g, q, codebook_size, d)``."""
        return torch.stack([rvq.codebooks for rvq in self.rvqs])

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
        return torch.stack([rvq.get_codes_from_indices(chunk, channel_first=channel_first) for rvq, chunk in zip(self.rvqs, chunks)])

    def get_output_from_indices(self, indices: Tensor, *, channel_first: bool = False) -> Tensor:
        """``(g, b, ..., q)`` -> ``(b, ..., dim)``; with ``channel_first=True`` the forward's
        ``(g, b, q, *spatial)`` -> ``(b, dim, *spatial)``."""
        chunks = self._group_chunks(indices)
        outs = [rvq.get_output_from_indices(chunk, channel_first=channel_first) for rvq, chunk in zip(self.rvqs, chunks)]
        return torch.cat(outs, dim=1 if channel_first else -1)

    def _shared_seed(self, device: torch.device) -> int | None:
        """The groups' dropout seed for this forward, drawn as the module's release draws it."""
        policy = self.vqp.grouped_seed
        if policy == "python_every_forward":
            return random.randint(0, GROUPED_PYTHON_SEED_BOUND)
        if policy in ("torch_cpu_every_forward", "torch_every_forward"):
            return _dropout_seed(torch.device("cpu") if policy == "torch_cpu_every_forward" else device)
        if not self.training:
            return None
        # As vector-quantize-pytorch, a number is drawn from torch's RNG on every training forward
        # (so the RNG stream, and with it noise dropout, stays the same as theirs), but unlike it
        # the cross-rank all_reduce and the host read-back happen only when quantize dropout will
        # use the seed.
        needs_seed = any(rvq.quantize_dropout for rvq in self.rvqs) and (torch.is_grad_enabled() or not self.vqp.dropout_needs_grad)
        return _dropout_seed(device, synchronize=needs_seed)

    def forward(self, x: Tensor, return_all_codes: bool = False):
        """Returns ``(quantized, indices)`` or ``(quantized, indices, all_codes)`` (see the class docstring)."""
        check_float_input(x)
        if x.shape[self.split_dim] != self.dim:
            where = "second" if self.accept_image_fmap else "last"
            raise ValueError(f"expected {self.dim} features in the {where} axis, got {x.shape[self.split_dim]}")
        seed = self._shared_seed(x.device)  # one seed for all groups: they drop the same stages
        outs = [rvq(chunk, return_all_codes=return_all_codes, rand_quantize_dropout_fixed_seed=seed)
                for rvq, chunk in zip(self.rvqs, x.chunk(self.groups, dim=self.split_dim))]
        quantized = torch.cat([o[0] for o in outs], dim=self.split_dim)
        indices = torch.stack([o[1] for o in outs])
        if not return_all_codes:
            return quantized, indices
        return quantized, indices, tuple(o[2] for o in outs)

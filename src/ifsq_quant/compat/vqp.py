"""What changed between vector-quantize-pytorch releases, as one table: ``vqp_version=``.

A checkpoint trained with a release of vector-quantize-pytorch (vqp) keeps that release's
semantics: its codes, indices, outputs, decodes and random draws. ``FSQ``, ``iFSQ``,
``ResidualFSQ`` and ``GroupedResidualFSQ`` take ``vqp_version=None | "1.x.y"``; ``None`` is the
latest release's behaviour, a release string that release's. :func:`semantics` turns the string
into a :class:`Semantics`, the few switches in which releases differ, by applying every row of
:data:`CHANGES` up to that release to the oldest release's switches. This module translates them
into the specs the core reads (:func:`fsq_spec`, :func:`residual_spec`), translates the vqp
constructor arguments into an :class:`~ifsq_quant.config.FSQConfig` (:func:`fsq_config`), and holds
vqp's methods that only its users call (:class:`FSQMethods`); nothing else in the package knows
about releases.

What a switch value means is documented on its field. Releases whose behaviour is a bug (indices
outside the codebook, a forward that fails) are refused with a ``ValueError`` naming the release
and the reason, at construction or at the call that would reproduce the bug.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import warnings
from typing import TYPE_CHECKING, NoReturn, cast

import torch
from torch import Tensor

from .. import kernels
from ..activations import HardClamp, get_activation
from ..bins import BinLayout, compute_dtype
from ..config import FSQConfig
from ..spec import DropoutSeed, DropoutSpec, ExtraDraws, FirstResidual, FSQSpec, GroupedSeed, HalfInputs, Noise, Refusals, ResidualSpec

__all__ = ["Semantics", "semantics", "OLDEST", "LATEST", "RELEASES", "CHANGES", "fsq_spec", "residual_spec", "fsq_config", "residual_options",
           "check_grouped_options", "FSQMethods"]

OLDEST = "1.14.0"  # the oldest release reproduced
LATEST = "1.34.1"  # the newest release known; ``vqp_version=None`` is its behaviour

# The patch numbers of each 1.x minor release the package index serves, from OLDEST to LATEST (ranges
# inclusive; 1.22.8, 1.22.13 and 1.33.x, among others, were never released).
_RELEASED_PATCHES = {
    14: "0-2 4-12 14-37 39-46", 15: "0-6", 16: "1-3", 17: "0-8", 18: "0-3 5-8", 19: "0-5", 20: "0-11", 21: "0-5 7-9",
    22: "0-7 9-12 14-18", 23: "0-5", 24: "0-2", 25: "0-2", 26: "0", 27: "0-1 4-12 14-21", 28: "0-3", 29: "0-1",
    30: "0-1", 31: "0-2 4 6", 32: "0", 34: "1",
}


def _expand(patches: str) -> list[int]:
    numbers: list[int] = []
    for part in patches.split():
        first, _, last = part.partition("-")
        numbers.extend(range(int(first), int(last or first) + 1))
    return numbers


# Every release from OLDEST to LATEST, spelled as the package index spells it: vqp_version takes exactly these.
RELEASES: tuple[str, ...] = tuple(f"1.{minor}.{patch}" for minor, patches in _RELEASED_PATCHES.items() for patch in _expand(patches))


@dataclasses.dataclass(frozen=True)
class Semantics:
    """The switches that differ between releases (the oldest release's values as defaults)."""

    release: str = OLDEST

    # --- FSQ ---------------------------------------------------------------------------------
    # Half-precision inputs: "promote" quantizes them as they are (a float32 shift promotes the
    # bound to float32) and returns float32 codes; "upcast_before_projection" upcasts the input
    # before project_in and casts the output back at the end; "upcast_after_projection" (the
    # latest) upcasts after project_in and casts the codes back before project_out.
    half_inputs: str = "promote"
    # The whole forward runs with CUDA autocast off (a decorator on forward in those releases).
    forward_autocast_off: bool = True
    # FSQ's default for return_indices.
    return_indices_default: bool = True
    # What the public ``bound()`` returns: "unrounded" (the round layout's value before rounding,
    # ``f(z + shift) * half_l - offset``, in level units) or "codes" (the rounded codes).
    public_bound: str = "unrounded"
    # preserve_symmetry: "absent"; "rounded_again" (quantize() rounds the symmetric code once more,
    # to {-1, 0, 1} / (L // 2): refused); "codes" (the symmetric layout).
    symmetry: str = "absent"
    # Whether ``symmetry_preserving_bound()`` floors its bracket (its code is on the grid).
    symmetric_bound_floored: bool = True
    # Random numbers a training forward draws besides noise dropout's: "none"; "python_random"
    # (one ``random.random()``); "bernoulli_4d" / "bernoulli_batch" (two Bernoulli masks of shape
    # (b, 1, 1, 1) / (b,) and one ``rand_like(z)``, also with noise_dropout=0); "broken" (the
    # training forward fails: refused).
    training_draws: str = "none"
    # noise_dropout in training: "absent"; "per_sample" (a sample's codes replaced by its raw
    # input: refused); "input_scaled" / "input" (``z + U(-0.5, 0.5) / (L // 2)`` or ``z +
    # U(-0.5, 0.5)`` where a Bernoulli(p) mask says, before the bound); "level_units" (noise
    # before rounding can leave the codebook: refused); "codes_before_indices" (noisy codes give
    # the indices: refused); "codes" (the latest: noise on the codes after the indices, a mask of
    # probability 1/2 whatever p > 0, clamped to [-1, 1]).
    noise: str = "absent"

    # --- ResidualFSQ ---------------------------------------------------------------------------
    # The first residual: "bound" (stage 0's unrounded bound of the input, in level units) or "input".
    first_residual: str = "bound"
    # The stages' layout ("round" or "symmetric") and whether they hard-clamp by default.
    stage_bins: str = "round"
    hard_clamp_default: bool = False
    # Stage i's scale: "levels_minus_one" ((L - 1) ** -i) or "levels" (L ** -i).
    stage_scale: str = "levels_minus_one"
    # The quantize dropout draw without a fixed seed: "python_random" (the global ``random``);
    # "python_random_local" (the same; a distributed run fails in that release: refused);
    # "torch_cpu" / "torch" (a seed from ``torch.randint`` on the CPU / the input's device, summed
    # over ranks, then ``random.Random(seed)``); "broken" (the release fails: refused).
    dropout_seed: str = "python_random"
    # The seed is summed over ranks only while gradients are enabled.
    seed_sync_needs_grad: bool = False
    # Quantize dropout needs gradients enabled (else a training forward keeps every stage).
    dropout_needs_grad: bool = False
    # quantize_dropout_multiple_of > 1 works (False: that release fails with a NameError: refused).
    dropout_multiple_of_works: bool = False

    # --- GroupedResidualFSQ --------------------------------------------------------------------
    # The groups' shared dropout seed: "python_every_forward" (``random.randint(0, 10**7)`` on
    # every forward, eval included); "torch_cpu_every_forward" / "torch_every_forward"
    # (``torch.randint`` on every forward); "torch_training" (on training forwards); "broken".
    grouped_seed: str = "python_every_forward"

    # The first release of each constructor argument added after the oldest one: an argument set
    # to anything but its default is refused in an older release, which would not accept it.
    fsq_arguments: tuple = (("allowed_dtypes", "1.14.4"), ("channel_first", "1.14.7"),
                            ("projection_has_bias", "1.14.16"), ("return_indices", "1.14.27"),
                            ("force_quantization_f32", "1.15.1"), ("preserve_symmetry", "1.21.0"),
                            ("noise_dropout", "1.21.2"), ("bound_hard_clamp", "1.26.0"),
                            ("orthogonal_rotation", "1.28.1"), ("materialize_codebook", "1.34.1"))
    residual_arguments: tuple = (("is_channel_first", "1.18.5"), ("soft_clamp_input_value", "1.21.8"),
                                 ("bound_hard_clamp", "1.26.0"))

    @property
    def is_latest(self) -> bool:
        return self.release == LATEST

    def label(self) -> str:
        return f"vector-quantize-pytorch {self.release}"

    def first_release_of(self, module: str, name: str) -> str:
        """The first release whose ``module`` ("FSQ" or "ResidualFSQ") has the argument ``name``."""
        return dict(self.fsq_arguments if module == "FSQ" else self.residual_arguments).get(name, OLDEST)

    def has_argument(self, module: str, name: str) -> bool:
        return _key(self.release) >= _key(self.first_release_of(module, name))

    def check_argument(self, module: str, name: str, is_default: bool) -> None:
        """Refuses ``name`` (set to a non-default value) where this release did not have it."""
        if not is_default and not self.has_argument(module, name):
            first = self.first_release_of(module, name)
            raise TypeError(f"{module}: {name} was added in vector-quantize-pytorch {first}; vqp_version={self.release!r} "
                            f"has no such argument (leave it at its default)")


# (first release, the switches it changed). Each row is one behaviour change of FSQ or the residual modules.
CHANGES: tuple[tuple[str, dict], ...] = (
    ("1.14.4", {"half_inputs": "upcast_before_projection"}),
    ("1.14.6", {"half_inputs": "upcast_after_projection"}),
    ("1.14.27", {"return_indices_default": False}),
    ("1.14.28", {"return_indices_default": True}),
    ("1.17.3", {"forward_autocast_off": False}),
    ("1.18.5", {"first_residual": "input"}),
    ("1.18.6", {"dropout_seed": "python_random_local"}),
    ("1.18.7", {"dropout_seed": "torch_cpu", "grouped_seed": "torch_cpu_every_forward"}),
    ("1.18.8", {"dropout_seed": "broken", "grouped_seed": "broken"}),
    ("1.19.2", {"dropout_seed": "torch", "grouped_seed": "torch_every_forward"}),
    ("1.19.3", {"grouped_seed": "torch_training"}),
    ("1.21.0", {"symmetry": "rounded_again", "symmetric_bound_floored": False, "training_draws": "python_random"}),
    ("1.21.2", {"training_draws": "bernoulli_4d", "noise": "per_sample"}),
    ("1.21.9", {"dropout_multiple_of_works": True}),
    ("1.22.0", {"symmetric_bound_floored": True, "training_draws": "broken"}),
    ("1.22.2", {"training_draws": "bernoulli_batch"}),
    ("1.22.7", {"training_draws": "none", "noise": "input_scaled"}),
    ("1.22.9", {"noise": "input"}),
    ("1.22.10", {"noise": "level_units"}),
    ("1.22.14", {"seed_sync_needs_grad": True}),
    ("1.22.15", {"seed_sync_needs_grad": False, "dropout_needs_grad": True}),
    ("1.22.16", {"public_bound": "codes", "symmetry": "codes", "noise": "codes_before_indices"}),
    ("1.26.0", {"stage_bins": "symmetric", "hard_clamp_default": True, "stage_scale": "levels"}),
    ("1.27.18", {"noise": "codes"}),
)

# Releases refused as a whole, with the reason.
UNUSABLE = {
    "1.27.17": "its FSQ.forward returns no codes unless it trains with noise_dropout > 0",
}

# Why a switch value is not reproduced (raised where the behaviour would be used).
REFUSED = {
    ("symmetry", "rounded_again"): "its preserve_symmetry rounds the symmetric code once more, to {-1, 0, 1} / (L // 2), "
                                   "so only three levels are used (fixed in 1.22.16)",
    ("noise", "per_sample"): "its noise_dropout replaces a whole sample's codes by its unquantized input in training, "
                             "so its indices fall outside the codebook",
    ("noise", "level_units"): "its noise_dropout adds noise before rounding, which can round past the edge level "
                              "(indices outside the codebook)",
    ("noise", "codes_before_indices"): "its noise_dropout perturbs the codes before their indices are taken, so its "
                                       "training indices fall outside the codebook (fixed in 1.27.18)",
    ("training_draws", "broken"): "its FSQ training forward fails (a per-sample mask of shape (batch,) does not broadcast "
                                  "against the codes)",
    ("dropout_seed", "python_random_local"): "its quantize dropout fails under torch.distributed (all_reduce's None is read back)",
    ("dropout_seed", "broken"): "its quantize dropout fails without a fixed seed (torch.randint gets the device as its bound)",
    ("grouped_seed", "broken"): "its GroupedResidualFSQ.forward fails (torch.randint gets the device as its bound)",
    ("dropout_multiple_of_works", False): "its quantize_dropout_multiple_of > 1 fails (NameError: ceil), fixed in 1.21.9",
    ("first_residual", "bound"): "its ResidualFSQ with projections fails in a half-precision module (the first residual is "
                                 "the float32 bound, whose sum project_out's half weights refuse); use a float32 module or "
                                 "residual_f32=True",
}


def refuse(s: Semantics, switch: str, what: str = "") -> NoReturn:
    """Raises the ``ValueError`` for a refused switch value of ``s``."""
    reason = REFUSED[(switch, getattr(s, switch))]
    raise ValueError(f"vqp_version={s.release!r}{what}: {s.label()} is not reproduced here: {reason}")


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def semantics(vqp_version: str | None) -> Semantics:
    """The :class:`Semantics` of ``vqp_version``: ``None`` (the latest release) or one of :data:`RELEASES`."""
    if vqp_version is None:
        return _semantics(LATEST)
    if not isinstance(vqp_version, str):
        raise TypeError(f'vqp_version must be None or a release string such as "1.17.8", got {vqp_version!r} '
                        f"({type(vqp_version).__name__})")
    return _semantics(vqp_version)


@functools.cache
def _semantics(vqp_version: str) -> Semantics:
    if vqp_version not in RELEASES:
        raise ValueError(_not_a_release(vqp_version))
    if vqp_version in UNUSABLE:
        raise ValueError(f"vqp_version={vqp_version!r}: vector-quantize-pytorch {vqp_version} is not reproduced: {UNUSABLE[vqp_version]}")
    key = _key(vqp_version)
    values: dict = {}
    for first, change in CHANGES:
        if _key(first) <= key:
            values.update(change)
    return Semantics(release=vqp_version, **values)


def _not_a_release(version: str) -> str:
    """Why ``version`` is not one of :data:`RELEASES`: another spelling, outside the range, or never released."""
    prefix = f"vqp_version={version!r}"
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        return f'{prefix} is not a release string such as "1.17.8" (ifsq_quant.compat.vqp.RELEASES lists them)'
    key = _key(version)
    canonical = ".".join(str(part) for part in key)
    if canonical != version and canonical in RELEASES:
        return f"{prefix}: releases are spelled as the package index spells them; use {canonical!r}"
    if key < _key(OLDEST):
        return f"{prefix}: releases of vector-quantize-pytorch before {OLDEST} are not reproduced"
    if key > _key(LATEST):
        return (f"{prefix} is newer than {LATEST}, the latest vector-quantize-pytorch release this version of ifsq-quant "
                "reproduces; pass vqp_version=None for the latest semantics it knows")
    below = max((r for r in RELEASES if _key(r) < key), key=_key)
    above = min((r for r in RELEASES if _key(r) > key), key=_key)
    return (f"{prefix}: vector-quantize-pytorch has no such release (the releases around it are {below} and {above}; "
            "ifsq_quant.compat.vqp.RELEASES lists them all)")


# --- the specs the core reads --------------------------------------------------------------------

def _refusals(s: Semantics, **switches: str) -> Refusals:
    """The reasons of ``s``'s refused switches, keyed by the spec switches they become."""
    reasons = tuple((name, f"{s.label()} is not reproduced here: {REFUSED[(switch, getattr(s, switch))]}")
                    for name, switch in switches.items() if (switch, getattr(s, switch)) in REFUSED)
    return Refusals(source=f"vqp_version={s.release!r}", reasons=reasons)


_HALF_INPUTS: dict[str, HalfInputs] = {"promote": "promote", "upcast_before_projection": "before_projection",
                                        "upcast_after_projection": "after_projection"}
_EXTRA_DRAWS: dict[str, ExtraDraws] = {"none": "none", "python_random": "python_random", "bernoulli_4d": "sample_masks",
                                       "bernoulli_batch": "batch_masks"}
_NOISE: dict[str, Noise] = {"codes": "codes", "input": "input", "input_scaled": "input_per_level"}


@functools.cache
def fsq_spec(s: Semantics) -> FSQSpec:
    """The :class:`~ifsq_quant.spec.FSQSpec` of release ``s``'s FSQ."""
    return FSQSpec(half_inputs=_HALF_INPUTS[s.half_inputs], autocast_off_in_forward=s.forward_autocast_off,
                   noise=_NOISE.get(s.noise, "refused"), extra_draws=_EXTRA_DRAWS.get(s.training_draws, "refused"),
                   refusals=_refusals(s, noise="noise", extra_draws="training_draws"))


@functools.cache
def residual_spec(s: Semantics) -> ResidualSpec:
    """The :class:`~ifsq_quant.spec.ResidualSpec` of release ``s``'s residual modules."""
    seed: dict[str, DropoutSeed] = {"python_random": "python", "python_random_local": "python_local", "torch": "torch", "torch_cpu": "torch_cpu"}
    dropout = DropoutSpec(seed=seed.get(s.dropout_seed, "refused"), seed_sum_needs_grad=s.seed_sync_needs_grad,
                          needs_grad=s.dropout_needs_grad, multiple_of="works" if s.dropout_multiple_of_works else "refused",
                          grouped_seed=cast(GroupedSeed, s.grouped_seed) if s.grouped_seed != "broken" else "refused")
    return ResidualSpec(first_residual=cast(FirstResidual, s.first_residual),
                        stage_scale_base="levels" if s.stage_scale == "levels" else "levels_minus_one",
                        dropout=dropout, stage=fsq_spec(s),
                        refusals=_refusals(s, seed="dropout_seed", multiple_of="dropout_multiple_of_works", half_projection="first_residual",
                                           grouped_seed="grouped_seed"))


# --- vqp's FSQ arguments -> the core's config ---------------------------------------------------------

def fsq_config(s: Semantics, module: type[FSQMethods], *, levels, dim, num_codebooks, keep_num_codebooks_dim, allowed_dtypes, channel_first,
               projection_has_bias, return_indices, force_quantization_f32, preserve_symmetry, noise_dropout, bound_hard_clamp,
               orthogonal_rotation, materialize_codebook, activation, bins, eps, index_groups, track_usage, backend) -> FSQConfig:
    """vqp's ``FSQ`` arguments (and this package's) as release ``s`` reads them -> an :class:`FSQConfig`.

    ``module`` is the class built (its ``default_activation`` / ``default_eps``: FSQ's or iFSQ's).
    Refuses arguments the release did not have and options it did not reproduce."""
    if return_indices is None:
        return_indices = s.return_indices_default
    allowed = (allowed_dtypes,) if isinstance(allowed_dtypes, torch.dtype) else allowed_dtypes
    for name, is_default in (("allowed_dtypes", isinstance(allowed, (tuple, list)) and tuple(allowed) == (torch.float32, torch.float64)),
                             ("channel_first", not channel_first), ("projection_has_bias", projection_has_bias is True),
                             ("return_indices", return_indices is s.return_indices_default),
                             ("force_quantization_f32", force_quantization_f32 is True),
                             ("preserve_symmetry", not preserve_symmetry), ("noise_dropout", noise_dropout == 0),
                             ("bound_hard_clamp", not bound_hard_clamp), ("orthogonal_rotation", not orthogonal_rotation),
                             ("materialize_codebook", materialize_codebook is True)):
        s.check_argument("FSQ", name, is_default)
    if preserve_symmetry and s.symmetry == "rounded_again":
        refuse(s, "symmetry", " with preserve_symmetry=True")
    if bins is None:
        bins = "symmetric" if preserve_symmetry else "round"
    elif preserve_symmetry and bins != "symmetric":
        raise ValueError(f'preserve_symmetry=True is the "symmetric" layout; it contradicts bins={bins!r}')
    if bound_hard_clamp:
        # The hard clamp replaces FSQ's default tanh, as in vector-quantize-pytorch; any other bound
        # (given, or the default of a subclass such as iFSQ's sigmoid) contradicts it.
        if (activation is not None and not isinstance(get_activation(activation), HardClamp)) or (
                activation is None and module.default_activation != "tanh"):
            given = module.default_activation if activation is None else activation
            raise ValueError(f"bound_hard_clamp=True replaces the bound by clamp(z, -1, 1); it contradicts "
                             f"{module.__name__}'s activation={given!r} (use FSQ(..., bound_hard_clamp=True) or activation='clamp')")
        activation = "clamp"
    config = FSQConfig(levels=levels, dim=dim, num_codebooks=num_codebooks, keep_num_codebooks_dim=keep_num_codebooks_dim,
                       channel_first=channel_first, projection_has_bias=projection_has_bias, return_indices=return_indices,
                       force_quantization_f32=force_quantization_f32, allowed_dtypes=allowed_dtypes, noise_dropout=noise_dropout,
                       orthogonal_rotation=orthogonal_rotation, materialize_codebook=bool(materialize_codebook),
                       activation=module.default_activation if activation is None else activation,
                       bins=bins, eps=module.default_eps if eps is None else eps, index_groups=index_groups, track_usage=track_usage,
                       backend=backend, spec=fsq_spec(s))
    if config.noise_dropout not in (0.0, 0.5) and s.noise == "codes":
        warnings.warn(f"noise_dropout={config.noise_dropout}: as in vector-quantize-pytorch, each code value is perturbed "
                      "with probability 0.5 whatever noise_dropout > 0 is (its mask is Tensor.bernoulli_())", stacklevel=4)
    return config


def residual_options(s: Semantics, *, is_channel_first, soft_clamp_input_value, bound_hard_clamp, activation, bins, eps,
                     stage_kwargs: dict) -> tuple[bool, str]:
    """vqp's ``ResidualFSQ`` arguments as release ``s`` reads them -> ``(bound_hard_clamp, stage bins)``.

    Refuses arguments the release did not have, and stage options that contradict each other or the
    release (its first residual is the ``"round"`` layout's bound before 1.18.5)."""
    for name, is_default in (("is_channel_first", not is_channel_first), ("soft_clamp_input_value", soft_clamp_input_value is None),
                             ("bound_hard_clamp", bound_hard_clamp is None or bool(bound_hard_clamp) == s.hard_clamp_default)):
        s.check_argument("ResidualFSQ", name, is_default)
    if stage_kwargs.get("return_indices", s.return_indices_default) is not True:
        if not s.return_indices_default and "return_indices" not in stage_kwargs:
            raise ValueError(f"vqp_version={s.release!r}: the stages of that release return no indices unless "
                             "return_indices=True is passed (its ResidualFSQ fails without it)")
        raise ValueError("return_indices=False is not supported: residual quantization returns its indices")
    # The hard clamp *is* the bound, so an explicit activation turns it off by default.
    if bound_hard_clamp is None:
        bound_hard_clamp = activation is None and s.hard_clamp_default
    if bound_hard_clamp and activation is not None and not isinstance(get_activation(activation), HardClamp):
        raise ValueError(f"bound_hard_clamp=True replaces the stage activation by clamp(z, -1, 1); it contradicts "
                         f"activation={activation!r} (leave bound_hard_clamp unset or False to use the activation)")
    if bins is None:
        bins = s.stage_bins
    if eps is not None and bins != "round":
        raise ValueError(f'eps only affects bins="round"; it has no effect with bins={bins!r}')
    if s.first_residual == "bound" and bins != "round":
        raise ValueError(f"vqp_version={s.release!r}: that release's first residual is the round layout's "
                         f'unrounded bound, which bins={bins!r} does not define; use bins="round" (its default)')
    return bool(bound_hard_clamp), bins


def check_grouped_options(s: Semantics, channel_first: bool) -> None:
    """Refuses a ``GroupedResidualFSQ`` that release ``s`` could not build or run."""
    if s.grouped_seed == "broken":
        refuse(s, "grouped_seed")
    if channel_first and not s.has_argument("ResidualFSQ", "is_channel_first"):
        raise ValueError(f"vqp_version={s.release!r}: accept_image_fmap needs vector-quantize-pytorch >= "
                         f"{s.first_release_of('ResidualFSQ', 'is_channel_first')} (that release's ResidualFSQ "
                         "takes (batch, seq, dim) inputs only)")


# --- vqp's FSQ methods that only its users call ----------------------------------------------------------

class FSQMethods:
    """vector-quantize-pytorch's ``FSQ`` methods besides the forward and the decodes, as release
    ``self.vqp`` defines them; a base of :class:`~ifsq_quant.FSQ`."""

    if TYPE_CHECKING:  # what the methods use of FSQ, the class this one is a base of
        default_activation: str
        default_eps: float
        training: bool
        spec: FSQSpec
        layout: BinLayout
        levels: list[int]
        codebook_dim: int
        eps: float
        bound_hard_clamp: bool
        noise_dropout: float
        backend: str
        _levels: Tensor
        _decode_like: Tensor

        def _check_codebook_input(self, z: Tensor, name: str) -> Tensor: ...
        def _level_indices_to_codes(self, level_indices: Tensor, dtype: torch.dtype | None = None) -> Tensor: ...
        def indices_to_level_indices(self, indices: Tensor) -> Tensor: ...

    def _use_release(self, vqp_version: str | None, soft_activation) -> None:
        """Records the release whose methods this module has; ``soft_activation`` is the bound of
        ``bound(..., hard_clamp=False)`` and ``symmetry_preserving_bound`` on a hard-clamped module."""
        self.vqp_version = vqp_version
        self.vqp = semantics(vqp_version)
        self._soft_activation = soft_activation

    def _vqp_config(self, vqp_version: str | None, **arguments) -> FSQConfig:
        """``FSQ``'s arguments as release ``vqp_version`` reads them (:func:`fsq_config`); records the release."""
        release = semantics(vqp_version)
        config = fsq_config(release, type(self), **arguments)
        hard_clamped = arguments["bound_hard_clamp"]
        self._use_release(vqp_version, get_activation(type(self).default_activation) if hard_clamped else config.activation)
        return config

    def quantize(self, z: Tensor) -> Tensor:
        """Codes ``(..., d)`` of ``z (..., d)`` (already projected in): bound and round with the
        straight-through gradient; no projection or rotation (and no noise, except in the releases
        whose quantize() added it in training)."""
        from ..noise import training_input

        if self.training and isinstance(z, Tensor):
            z = training_input(z, self.spec, self.noise_dropout, self._levels)
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
        dtype = level_indices.dtype if level_indices.is_floating_point() else compute_dtype(self._decode_like.dtype, self.layout)
        return self.layout.code(level_indices.to(dtype))

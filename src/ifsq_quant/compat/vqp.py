"""What changed between vector-quantize-pytorch releases, as one table: ``vqp_version=``.

A checkpoint trained with a release of vector-quantize-pytorch (vqp) keeps that release's
semantics: its codes, indices, outputs, decodes and random draws. ``FSQ``, ``iFSQ``,
``ResidualFSQ`` and ``GroupedResidualFSQ`` take ``vqp_version=None | "1.x.y"``; ``None`` is the
latest release's behaviour, a release string that release's. :func:`semantics` turns the string
into a :class:`Semantics`, the few switches in which releases differ, by applying every row of
:data:`CHANGES` up to that release to the oldest release's switches. The modules read these
switches; nothing else in the package knows about releases.

What a switch value means is documented on its field. Releases whose behaviour is a bug (indices
outside the codebook, a forward that fails) are refused with a ``ValueError`` naming the release
and the reason, at construction or at the call that would reproduce the bug.
"""

from __future__ import annotations

import dataclasses
import functools
import re

__all__ = ["Semantics", "semantics", "OLDEST", "LATEST", "CHANGES"]

OLDEST = "1.14.0"  # the oldest release reproduced
LATEST = "1.32.0"  # the newest release known; ``vqp_version=None`` is its behaviour


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
                            ("orthogonal_rotation", "1.28.1"))
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
}


def refuse(s: Semantics, switch: str, what: str = "") -> None:
    """Raises the ``ValueError`` for a refused switch value of ``s``."""
    reason = REFUSED[(switch, getattr(s, switch))]
    raise ValueError(f"vqp_version={s.release!r}{what}: {s.label()} is not reproduced here: {reason}")


def _key(version: str) -> tuple[int, int, int]:
    return tuple(int(part) for part in version.split("."))


@functools.cache
def semantics(vqp_version: str | None) -> Semantics:
    """The :class:`Semantics` of ``vqp_version`` (``None``: the latest release)."""
    if vqp_version is None:
        vqp_version = LATEST
    if not isinstance(vqp_version, str) or not re.fullmatch(r"\d+\.\d+\.\d+", vqp_version):
        raise ValueError(f'vqp_version must be None or a release string such as "1.17.8", got {vqp_version!r}')
    key = _key(vqp_version)
    if key < _key(OLDEST):
        raise ValueError(f"vqp_version={vqp_version!r}: releases of vector-quantize-pytorch before {OLDEST} are not reproduced")
    if key > _key(LATEST):
        raise ValueError(f"vqp_version={vqp_version!r} is newer than {LATEST}, the latest vector-quantize-pytorch release this "
                         "version of ifsq-quant reproduces; pass vqp_version=None for the latest semantics it knows")
    if vqp_version in UNUSABLE:
        raise ValueError(f"vqp_version={vqp_version!r}: vector-quantize-pytorch {vqp_version} is not reproduced: {UNUSABLE[vqp_version]}")
    values: dict = {}
    for first, change in CHANGES:
        if _key(first) <= key:
            values.update(change)
    return Semantics(release=vqp_version, **values)

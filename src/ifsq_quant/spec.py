"""What the math leaves open, as the small typed specs the core modules read.

Published FSQ code agrees on the quantization (`docs/design.md`, sections 1-3) and differs around
it: where half-precision inputs are upcast, whether autocast is off for the whole forward, which
random numbers a training forward draws, and, for residual quantization, the first residual, the
stage scales and the quantize dropout draws. :class:`FSQSpec` and :class:`ResidualSpec` hold these
choices; the core (``quantizer.py``, ``residual.py``, ``noise.py``) reads them and never names
where they come from. ``compat/`` builds them, one family of published code at a time (every
vector-quantize-pytorch release in ``compat/vqp.py``). The defaults are the package's own behaviour.

A switch value that reproduces a bug of some published code (indices outside the codebook, a
forward that fails) is ``"refused"``: the core raises ``ValueError`` with the spec's reason where
that behaviour would act (:meth:`Refusals.refuse`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NoReturn, TypeAlias

__all__ = ["FSQSpec", "DropoutSpec", "ResidualSpec", "Refusals"]

# The values of the switches (documented on the fields that take them).
HalfInputs: TypeAlias = Literal["after_projection", "before_projection", "promote"]
Noise: TypeAlias = Literal["codes", "input", "input_per_level", "refused"]
ExtraDraws: TypeAlias = Literal["none", "python_random", "sample_masks", "batch_masks", "refused"]
DropoutSeed: TypeAlias = Literal["python", "python_local", "torch", "torch_cpu", "refused"]
GroupedSeed: TypeAlias = Literal["python_every_forward", "torch_every_forward", "torch_cpu_every_forward", "torch_training", "refused"]
FirstResidual: TypeAlias = Literal["input", "bound"]


@dataclasses.dataclass(frozen=True)
class Refusals:
    """Why the ``"refused"`` switches of a spec are not reproduced.

    Attributes:
        source: the argument that chose the spec, as the error starts (``vqp_version='1.21.2'``).
        reasons: ``(switch name, reason)`` pairs.
    """

    source: str = ""
    reasons: tuple[tuple[str, str], ...] = ()

    def refuse(self, switch: str, when: str = "") -> NoReturn:
        """Raises the ``ValueError`` of ``switch``; ``when`` says in which call (`` in training``)."""
        reason = dict(self.reasons).get(switch, f"its {switch} behaviour is not reproduced")
        raise ValueError(f"{self.source}{when}: {reason}")


@dataclasses.dataclass(frozen=True)
class FSQSpec:
    """How an FSQ forward treats half precision, autocast and training noise.

    Attributes:
        half_inputs: where a bf16/fp16 input is upcast to float32. ``"after_projection"``: the
            projected values are quantized in float32 (or as they are, see ``kernels.quantize``)
            and the codes cast back before ``project_out``; ``"before_projection"``: the input is
            upcast before ``project_in`` and the output cast back at the end; ``"promote"``: the
            quantization promotes to float32 and the codes stay float32.
        autocast_off_in_forward: CUDA autocast is off for the whole forward (else only around the
            quantization, with ``force_quantization_f32``).
        noise: how ``noise_dropout`` perturbs a training forward. ``"codes"``: the codes after their
            indices are taken, where a mask of probability 1/2 says, clamped to ``[-1, 1]``;
            ``"input"``: the input before the bound, ``z + U(-0.5, 0.5)`` where a Bernoulli(p) mask
            says; ``"input_per_level"``: the same offset divided by ``L // 2``; ``"refused"``.
        extra_draws: random numbers a training forward draws besides the noise (they move the RNG
            stream, so later draws match the code reproduced): ``"none"``; ``"python_random"`` (one
            ``random.random()``); ``"sample_masks"`` / ``"batch_masks"`` (two Bernoulli(p) masks of
            shape ``(b, 1, 1, 1)`` / ``(b,)`` and one ``rand_like(z)``); ``"refused"``.
    """

    half_inputs: HalfInputs = "after_projection"
    autocast_off_in_forward: bool = False
    noise: Noise = "codes"
    extra_draws: ExtraDraws = "none"
    refusals: Refusals = Refusals()


@dataclasses.dataclass(frozen=True)
class DropoutSpec:
    """How residual quantize dropout draws the last stage it keeps.

    Attributes:
        seed: where the draw comes from without a fixed seed. ``"python"``: Python's global
            ``random``; ``"python_local"``: the same, refused under ``torch.distributed``;
            ``"torch"`` / ``"torch_cpu"``: a seed from ``torch.randint`` on the input's device / the
            CPU, summed over ranks, then ``random.Random(seed)``; ``"refused"``.
        seed_sum_needs_grad: the seed is summed over ranks only while gradients are enabled.
        needs_grad: a training forward without gradients drops no stage.
        multiple_of: whether ``quantize_dropout_multiple_of > 1`` is reproduced (``"refused"``).
        grouped_seed: when ``GroupedResidualFSQ`` draws its groups' shared seed:
            ``"python_every_forward"`` (``random.randint(0, 10**7)``, eval included);
            ``"torch_every_forward"`` / ``"torch_cpu_every_forward"`` (``torch.randint``);
            ``"torch_training"`` (on training forwards); ``"refused"``.
    """

    seed: DropoutSeed = "torch"
    seed_sum_needs_grad: bool = False
    needs_grad: bool = True
    multiple_of: Literal["works", "refused"] = "works"
    grouped_seed: GroupedSeed = "torch_training"


@dataclasses.dataclass(frozen=True)
class ResidualSpec:
    """How residual FSQ starts and scales its stages.

    Attributes:
        first_residual: ``"input"`` (the projected input) or ``"bound"`` (stage 0's unrounded
            ``"round"`` bound of it, in level units).
        stage_scale_base: stage ``i`` works at ``base ** -i``: ``"levels"`` (``L``) or
            ``"levels_minus_one"`` (``L - 1``).
        dropout: the quantize dropout draws.
        stage: the stages' :class:`FSQSpec`.
    """

    first_residual: FirstResidual = "input"
    stage_scale_base: Literal["levels", "levels_minus_one"] = "levels"
    dropout: DropoutSpec = DropoutSpec()
    stage: FSQSpec = FSQSpec()
    refusals: Refusals = Refusals()

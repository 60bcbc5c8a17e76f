"""Bounded activations ``f: R -> [-1, 1]``: value, derivative and inverse (``docs/design.md``, "Bounds").

Every activation here is monotone and odd. The quantizer needs three things from it:

* ``f(z)`` — the bound applied before rounding,
* ``f'(z)`` — for the straight-through gradient of the fused kernels,
* ``f^-1(y)`` — only for the per-dimension shift that centres even level counts in the
  ``"round"`` layout; computed in float32 like vector-quantize-pytorch, so shifts match it bit
  for bit.

The named activations compute ``f`` with exactly the tensor operations of the code they
reproduce (vector-quantize-pytorch's ``tanh``, the official iFSQ ``2*sigmoid(1.6*z) - 1``),
because a different but mathematically equal formula would move values that sit within an
ulp of a bin edge into the neighbouring bin.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "TANH_KERNEL",
    "SIGMOID_KERNEL",
    "ERF_KERNEL",
    "CLAMP_KERNEL",
    "vector_sigmoid",
    "vector_loop_size",
    "Activation",
    "Tanh",
    "ScaledSigmoid",
    "Erf",
    "HardClamp",
    "CustomActivation",
    "get_activation",
    "ACTIVATION_NAMES",
    "KERNEL_NAMES",
    "IFSQ_ALPHA",
    "ERF_INPUT_SCALE",
    "ERF_DERIVATIVE_SCALE",
    "ERF_BACKWARD_FACTOR",
    "kernel_activation",
]


# PyTorch's CPU sigmoid computes most elements in its vectorized loop and the last elements of
# each thread's chunk in a scalar loop, and the two can differ by one ulp: a value near a bin edge
# would get a code that depends on its position, the tensor's size and the thread count. Computed
# over a size whose every thread chunk is whole vector loops, every element takes the vector code.
VECTOR_LOOP_ELEMENTS = 64  # a multiple of the vector loop's step on every CPU (two vectors of up to 16 floats)
ELEMENTWISE_GRAIN = 32768  # PyTorch's at::internal::GRAIN_SIZE: below it an elementwise op runs on one thread


# Kernel ids of the bounds: every fused kernel (kernels/torch_fused.py, kernels/triton_kernels.py)
# selects a bound's code by this number, and implements every bound that has one.
TANH_KERNEL, SIGMOID_KERNEL, ERF_KERNEL, CLAMP_KERNEL = range(4)
KERNEL_NAMES = ("tanh", "sigmoid", "erf", "clamp")  # by kernel id: how the registered ops name a bound

# The constants of the bounds, written once; the fused kernels receive them as arguments.
IFSQ_ALPHA = 1.6  # iFSQ's bound 2 sigmoid(1.6 z) - 1
ERF_INPUT_SCALE = math.sqrt(0.5)  # erf(z / sqrt 2), computed as erf(z * sqrt(0.5))
ERF_DERIVATIVE_SCALE = math.sqrt(2 / math.pi)  # d/dz erf(z / sqrt 2) = sqrt(2/pi) exp(-z^2 / 2)
ERF_BACKWARD_FACTOR = 2 / math.sqrt(math.pi)  # d/du erf(u) = 2/sqrt(pi) exp(-u^2), as torch.erf's backward computes it


def vector_loop_size(n: int) -> int:
    """The smallest size ``>= n`` (or a little more) over which PyTorch's CPU elementwise kernels
    run only whole vector loops: one thread's chunk, or ``T`` equal chunks of whole loops."""
    round_up = lambda x, m: -(-x // m) * m
    threads = torch.get_num_threads()
    if n <= ELEMENTWISE_GRAIN or threads == 1:
        return round_up(n, VECTOR_LOOP_ELEMENTS)
    # enough elements that all T threads take part, and a multiple of T loops
    return round_up(max(n, ELEMENTWISE_GRAIN * (threads - 1) + 1), VECTOR_LOOP_ELEMENTS * threads)


def vector_sigmoid(t: Tensor) -> Tensor:
    """``torch.sigmoid(t)`` with every element computed by the CPU's vector code (see above), so
    that each value is independent of its position; differentiable. Elsewhere (CUDA, tracing,
    ``torch.func``) it is ``torch.sigmoid``."""
    from .contexts import functorch_active, tracing

    if t.device.type != "cpu" or t.numel() == 0 or tracing() or functorch_active():
        return torch.sigmoid(t)
    n = t.numel()
    flat = t.reshape(-1)
    size = vector_loop_size(n)
    if size != n:
        flat = torch.cat([flat, flat.new_zeros(size - n)])
    return torch.sigmoid(flat)[:n].view(t.shape)


class Activation:
    """A monotone, odd map onto ``[-1, 1]``.

    Subclass it (or pass any object with ``__call__``, and optionally ``derivative`` and
    ``inverse``) to use your own bound. The named bounds have a ``name``; the bounds the fused
    kernels implement have a ``kernel_id`` (the code of the bound in every fused kernel) and a
    ``kernel_scale`` (the factor ``a`` in ``f(a z)`` those kernels receive: a sigmoid's slope,
    erf's ``sqrt(0.5)``); custom activations have neither and run on the reference path.
    """

    name: str | None = None
    kernel_id: int | None = None
    kernel_scale: float = 1.0

    def __call__(self, z: Tensor) -> Tensor:
        """``f(z)``, same shape and dtype as ``z``."""
        raise NotImplementedError

    def derivative(self, z: Tensor) -> Tensor:
        """``f'(z)``, same shape and dtype as ``z``."""
        raise NotImplementedError

    def inverse(self, y: Tensor) -> Tensor:
        """``f^-1(y)`` elementwise for ``y`` in ``(-1, 1)``, in ``y``'s dtype."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Tanh(Activation):
    """``tanh(z)`` — the FSQ paper's bound (vector-quantize-pytorch's ``FSQ``)."""

    name = "tanh"
    kernel_id = TANH_KERNEL

    def __call__(self, z: Tensor) -> Tensor:
        return torch.tanh(z)

    def derivative(self, z: Tensor) -> Tensor:
        return 1 - torch.tanh(z).square()

    def inverse(self, y: Tensor) -> Tensor:
        return torch.atanh(y)


class ScaledSigmoid(Activation):
    """``2*sigmoid(alpha*z) - 1`` (``= tanh(alpha*z/2)``); ``alpha = 1.6`` is iFSQ's bound.

    Computed as ``2 * sigmoid(alpha * z) - 1``, the official iFSQ code's operation order
    (``act_fun="scale_sigmoid_16"``; ``alpha=2.0`` is its ``"scale_sigmoid_20"``).
    """

    kernel_id = SIGMOID_KERNEL

    def __init__(self, alpha: float = IFSQ_ALPHA):
        if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and alpha > 0 and math.isfinite(alpha)):
            raise ValueError(f"ScaledSigmoid: alpha must be a positive finite number, got {alpha!r}")
        self.alpha = self.kernel_scale = float(alpha)
        # alpha = 1.6 is the named iFSQ activation ("sigmoid"); every alpha has the fused kernels.
        self.name = "sigmoid" if self.alpha == IFSQ_ALPHA else None

    def __call__(self, z: Tensor) -> Tensor:
        return 2 * vector_sigmoid(self.alpha * z) - 1

    def derivative(self, z: Tensor) -> Tensor:
        s = torch.sigmoid(self.alpha * z)
        return (2 * self.alpha) * s * (1 - s)

    def inverse(self, y: Tensor) -> Tensor:
        return torch.atanh(y) * (2 / self.alpha)

    def __repr__(self) -> str:
        return f"ScaledSigmoid(alpha={self.alpha})"


class Erf(Activation):
    """``erf(z/sqrt(2))`` — the normal CDF rescaled: maps N(0, 1) exactly onto U(-1, 1)."""

    name = "erf"
    kernel_id = ERF_KERNEL

    kernel_scale = ERF_INPUT_SCALE

    def __call__(self, z: Tensor) -> Tensor:
        return torch.erf(z * ERF_INPUT_SCALE)

    def derivative(self, z: Tensor) -> Tensor:
        return ERF_DERIVATIVE_SCALE * torch.exp(-0.5 * z.square())

    def inverse(self, y: Tensor) -> Tensor:
        return math.sqrt(2) * torch.erfinv(y)


class HardClamp(Activation):
    """``clamp(z, -1, 1)`` — vector-quantize-pytorch's ``bound_hard_clamp=True``.

    Its derivative is 1 on ``[-1, 1]`` (ends included, as autograd's ``clamp``) and 0 outside.
    """

    name = "clamp"
    kernel_id = CLAMP_KERNEL

    def __call__(self, z: Tensor) -> Tensor:
        return torch.clamp(z, -1.0, 1.0)

    def derivative(self, z: Tensor) -> Tensor:
        return (z.abs() <= 1).to(z.dtype)

    def inverse(self, y: Tensor) -> Tensor:
        return y.clone()


class CustomActivation(Activation):
    """Wraps a user callable ``fn(z) -> (-1, 1)``, monotone increasing and odd.

    The derivative comes from autograd and the inverse from bisection, unless ``fn`` has
    ``derivative`` / ``inverse`` methods of its own.
    """

    name = None

    def __init__(self, fn: Callable[[Tensor], Tensor]):
        if not callable(fn):
            raise TypeError(f"activation must be a name, an Activation or a callable, got {type(fn).__name__}")
        self.fn = fn

    @staticmethod
    def _check(result, z: Tensor, what: str) -> Tensor:
        """``result`` of the user's ``what`` on ``z``: a floating tensor of ``z``'s shape, or a clear error."""
        if not isinstance(result, Tensor):
            raise TypeError(f"activation: the custom {what} must return a torch.Tensor, got {type(result).__name__}")
        if result.shape != z.shape:
            raise ValueError(
                f"activation: the custom {what} must be elementwise (return the input's shape {tuple(z.shape)}), "
                f"got shape {tuple(result.shape)}"
            )
        if not result.is_floating_point():
            raise TypeError(f"activation: the custom {what} must return a floating-point tensor, got {result.dtype}")
        return result

    def __call__(self, z: Tensor) -> Tensor:
        return self._check(self.fn(z), z, "activation")

    def derivative(self, z: Tensor) -> Tensor:
        if hasattr(self.fn, "derivative"):
            return self._check(self.fn.derivative(z), z, "activation's derivative")
        with torch.enable_grad():
            x = z.detach().requires_grad_(True)
            y = self(x)
            if not y.requires_grad:
                raise ValueError(
                    "activation: the custom activation's output does not depend on its input through autograd "
                    "(give it a derivative(z) method, or compute it with differentiable torch operations)"
                )
            (grad,) = torch.autograd.grad(y.sum(), x)
        return grad

    def inverse(self, y: Tensor) -> Tensor:
        if hasattr(self.fn, "inverse"):
            return self._check(self.fn.inverse(y), y, "activation's inverse")
        # Bisection in float64 on a bracket grown until it holds every target.
        target = y.to(torch.float64)
        hi = torch.ones_like(target)
        while bool((self(hi) < target).any()) and hi.max() < 1e6:
            hi = hi * 2
        lo = -hi
        if not bool(((self(lo) <= target) & (target <= self(hi))).all()):
            raise ValueError("custom activation does not reach the values it must invert (is it onto (-1, 1)?)")
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            below = self(mid) < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (0.5 * (lo + hi)).to(y.dtype)

    def __repr__(self) -> str:
        return f"CustomActivation({self.fn!r})"


_NAMED: dict[str, Callable[[], Activation]] = {
    "tanh": Tanh,
    "sigmoid": ScaledSigmoid,
    "erf": Erf,
    "clamp": HardClamp,
}
ACTIVATION_NAMES = tuple(_NAMED)


def kernel_activation(kernel_name: str, kernel_scale: float) -> Activation:
    """The bound a fused kernel computes, from the registered ops' arguments (:data:`KERNEL_NAMES`)."""
    if kernel_name not in KERNEL_NAMES:
        raise ValueError(f"activation must name a bound with a fused kernel {KERNEL_NAMES}, got {kernel_name!r}")
    if kernel_name == "sigmoid":
        return ScaledSigmoid(kernel_scale)
    activation = _NAMED[kernel_name]()
    if kernel_scale != activation.kernel_scale:
        raise ValueError(f"activation_scale of {kernel_name!r} must be {activation.kernel_scale}, got {kernel_scale!r}")
    return activation


def get_activation(spec: str | Activation | Callable[[Tensor], Tensor]) -> Activation:
    """Turns a name (``"tanh"``, ``"sigmoid"``, ``"erf"``, ``"clamp"``), an
    :class:`Activation` or a callable into an :class:`Activation`."""
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, str):
        if spec not in _NAMED:
            raise ValueError(f"activation must be one of {ACTIVATION_NAMES} or a callable, got {spec!r}")
        return _NAMED[spec]()
    return CustomActivation(spec)

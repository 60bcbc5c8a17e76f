"""Bounded activations: derivatives against autograd, inverses, and clear errors for bad custom ones."""

from __future__ import annotations

import math

import pytest
import torch

from ifsq_quant import FSQ, get_activation
from ifsq_quant.activations import CustomActivation, Erf, HardClamp, ScaledSigmoid, Tanh

DTYPES = [torch.float32, torch.float64]


class OddCubic:
    """A custom bound with its own derivative and inverse: f(z) = z / (1 + |z|) (monotone, odd)."""

    def __call__(self, z):
        return z / (1 + z.abs())

    def derivative(self, z):
        return 1 / (1 + z.abs()).square()

    def inverse(self, y):
        return y / (1 - y.abs())


ACTIVATIONS = {
    "tanh": lambda: get_activation("tanh"),
    "sigmoid": lambda: get_activation("sigmoid"),
    "erf": lambda: get_activation("erf"),
    "clamp": lambda: get_activation("clamp"),
    "scaled_sigmoid_2": lambda: ScaledSigmoid(2.0),
    "custom_autograd": lambda: get_activation(lambda z: torch.tanh(0.5 * z)),
    "custom_methods": lambda: get_activation(OddCubic()),
}


def points(dtype):
    """Many magnitudes, exact zeros, the clamp's kinks at +-1 and values just beside them."""
    g = torch.Generator().manual_seed(0)
    z = torch.cat([torch.randn(2000, generator=g, dtype=dtype) * s for s in (0.1, 1.0, 4.0)])
    one = torch.tensor(1.0, dtype=dtype)
    edges = torch.stack([one, -one, torch.nextafter(one, 2 * one), torch.nextafter(-one, -2 * one), 0 * one])
    return torch.cat([z, edges, torch.linspace(-12, 12, 97, dtype=dtype)])


def autograd_derivative(act, z):
    x = z.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(act(x).sum(), x)
    return grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_derivative_matches_autograd(name, dtype):
    act = ACTIVATIONS[name]()
    z = points(dtype)
    derivative = act.derivative(z)
    assert derivative.dtype == dtype and derivative.shape == z.shape
    expected = autograd_derivative(act, z)
    if name == "clamp":
        assert torch.equal(derivative, expected)  # 1 on [-1, 1] (ends included), 0 outside, as autograd
    else:
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(derivative, expected, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", [n for n in ACTIVATIONS if n != "clamp"])
def test_derivative_matches_finite_differences(name, dtype):
    """An independent check of the formulas (autograd of the same expression could share a slip)."""
    act = ACTIVATIONS[name]()
    z = torch.linspace(-4, 4, 81, dtype=torch.float64)
    h = 1e-6
    numeric = (act(z + h) - act(z - h)) / (2 * h)
    torch.testing.assert_close(act.derivative(z.to(dtype)).double(), numeric,
                               rtol=1e-4 if dtype == torch.float32 else 1e-7, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in ACTIVATIONS if n != "clamp"])
def test_values_odd_monotone_bounded_and_inverse(name):
    act = ACTIVATIONS[name]()
    z = torch.linspace(-6, 6, 241, dtype=torch.float64)
    y = act(z)
    assert (y.abs() <= 1).all() and (y[1:] >= y[:-1]).all()
    torch.testing.assert_close(act(-z), -y)
    inner = torch.linspace(-0.95, 0.95, 39, dtype=torch.float64)
    torch.testing.assert_close(act(act.inverse(inner)), inner, rtol=1e-9, atol=1e-9)


def test_named_formulas():
    z = torch.linspace(-3, 3, 13, dtype=torch.float64)
    torch.testing.assert_close(Tanh()(z), torch.tanh(z))
    torch.testing.assert_close(get_activation("sigmoid")(z), torch.tanh(0.8 * z))
    torch.testing.assert_close(ScaledSigmoid(2.0)(z), torch.tanh(z))
    torch.testing.assert_close(Erf()(z), torch.erf(z / math.sqrt(2)))
    torch.testing.assert_close(HardClamp()(z), z.clamp(-1, 1))


# --- custom activations that are not elementwise maps onto tensors ---------------------------

@pytest.mark.parametrize("fn,exc,match", [
    (lambda z: torch.tanh(z).sum(-1), ValueError, "shape"),
    (lambda z: torch.tanh(z)[..., :1], ValueError, "shape"),
    (lambda z: torch.tanh(z).unsqueeze(0), ValueError, "shape"),
    (lambda z: torch.tanh(z).tolist(), TypeError, "torch.Tensor"),
    (lambda z: 0.5, TypeError, "torch.Tensor"),
    (lambda z: (torch.tanh(z) > 0).long(), TypeError, "floating-point"),
])
def test_bad_custom_activation_is_named(fn, exc, match):
    act = CustomActivation(fn)
    z = torch.randn(4, 3)
    with pytest.raises(exc, match=match) as info:
        act(z)
    assert "activation" in str(info.value)
    # the same error from a quantizer using it (raised at construction, where the bound is inverted)
    with pytest.raises(exc, match="activation"):
        FSQ([5, 5, 5], activation=fn)(z)


def test_custom_activation_misbehaving_only_on_batches_is_named_in_forward():
    """A bound that is fine on the constructor's small tensors but not on a batch fails in forward."""
    fn = lambda z: torch.tanh(z) if z.ndim == 1 else torch.tanh(z).mean(0)  # noqa: E731
    q = FSQ([5, 5, 5], activation=fn)
    with pytest.raises(ValueError, match="activation"):
        q(torch.randn(4, 3))


def test_custom_derivative_method_is_checked():
    class WrongDerivative(OddCubic):
        def derivative(self, z):
            return 1.0

    with pytest.raises(TypeError, match="activation's derivative"):
        get_activation(WrongDerivative()).derivative(torch.randn(3))


def test_custom_activation_without_autograd_path():
    act = get_activation(lambda z: torch.tanh(z).detach())
    with pytest.raises(ValueError, match="activation"):
        act.derivative(torch.randn(5))


def test_non_callable_activation_is_named():
    with pytest.raises(TypeError, match="activation"):
        get_activation(3)

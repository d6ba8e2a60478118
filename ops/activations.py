"""Activation functions, elementwise: gelu (exact and tanh), silu, leaky_relu, elu, softplus, and
stop_gradient. Gradients are graph ops built from the numeric primitives, so they fuse into the
backward pass's loops."""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import ShapeError
from ..core.node import Node, Operand, apply, user_call
from ..core.op import Example
from .elementwise import Elementwise, Relu, add, div, exp, mul, ones_like, sigmoid, sub, tanh, zeros_like
from .logic import equal, greater, where
from .numeric import reference_erf

SQRT_HALF = math.sqrt(0.5)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_CUBIC = 0.044715  # the tanh approximation's coefficient (Hendrycks & Gimpel; PyTorch's)


class Gelu(Elementwise):
    """x * Phi(x), Phi the standard normal CDF: 0.5 x (1 + erf(x / sqrt 2)); with
    approximate="tanh", 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) as in PyTorch."""

    name = "gelu"
    arity = 1

    def __init__(self, approximate: str = "none"):
        self.approximate = approximate

    def infer(self, x):
        if self.approximate not in ("none", "tanh"):
            raise ShapeError(f"gelu: approximate must be 'none' or 'tanh', got {self.approximate!r}")
        return super().infer(x)

    def ref(self, x):
        if self.approximate == "tanh":
            return 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + GELU_CUBIC * x**3)))
        return 0.5 * x * (1.0 + reference_erf(x * SQRT_HALF))

    def grad(self, g, out, x):
        if self.approximate == "tanh":
            t = tanh(mul(add(x, mul(x, x, x, GELU_CUBIC)), SQRT_2_OVER_PI))
            du = mul(add(mul(x, x, 3.0 * GELU_CUBIC), 1.0), SQRT_2_OVER_PI)
            slope = add(mul(add(t, 1.0), 0.5), mul(x, sub(1.0, mul(t, t)), du, 0.5))
        else:  # Phi(x) + x phi(x), with Phi(x) = out / x: the backward pass needs no second erf
            cdf = where(equal(x, 0.0), zeros_like(x) + 0.5, div(out, where(equal(x, 0.0), ones_like(x), x)))
            slope = add(cdf, mul(x, exp(mul(x, x, -0.5)), INV_SQRT_2PI))
        return [mul(g, slope)]

    @classmethod
    def example(cls, rng, dims):
        x = rng.uniform(-3.0, 3.0, size=(dims[0], dims[1]))
        return cls(("none", "tanh")[dims[2] % 2]), Example([x], [True], {0: 0})


class Silu(Elementwise):
    """x * sigmoid(x) (swish)."""

    name = "silu"
    arity = 1

    def ref(self, x):
        return x / (1.0 + np.exp(-x))

    def grad(self, g, out, x):
        s = sigmoid(x)
        return [mul(g, s, add(mul(x, sub(1.0, s)), 1.0))]


class LeakyRelu(Elementwise):
    """x for x > 0, alpha * x otherwise."""

    name = "leaky_relu"
    arity = 1

    def __init__(self, alpha: float = 0.01):
        self.alpha = float(alpha)

    def ref(self, x):
        return np.where(x > 0, x, x * np.asarray(self.alpha, x.dtype))

    def grad(self, g, out, x):
        return [where(greater(x, 0.0), g, mul(g, self.alpha))]

    sample_input = Relu.sample_input

    @classmethod
    def example(cls, rng, dims):
        op, example = super().example(rng, dims)
        return cls(0.2), example


class Elu(Elementwise):
    """x for x > 0, alpha * (exp(x) - 1) otherwise."""

    name = "elu"
    arity = 1

    def __init__(self, alpha: float = 1.0):
        self.alpha = float(alpha)

    def ref(self, x):
        return np.where(x > 0, x, np.asarray(self.alpha, x.dtype) * np.expm1(np.minimum(x, 0)))

    def grad(self, g, out, x):
        return [where(greater(x, 0.0), g, mul(g, add(out, self.alpha)))]

    sample_input = Relu.sample_input

    @classmethod
    def example(cls, rng, dims):
        op, example = super().example(rng, dims)
        return cls(0.7), example


class Softplus(Elementwise):
    """log(1 + exp(x)), computed without overflow and relatively accurate for very negative x."""

    name = "softplus"
    arity = 1

    def ref(self, x):
        return np.logaddexp(np.zeros((), x.dtype), x)

    def grad(self, g, out, x):
        return [mul(g, sigmoid(x))]

    @staticmethod
    def sample_input(rng, shape):
        return rng.uniform(-6.0, 6.0, size=shape)


class StopGradient(Elementwise):
    """x itself, through which no gradient flows (a constant to autodiff)."""

    name = "stop_gradient"
    arity = 1

    def ref(self, x):
        return x.copy()

    def grad(self, g, out, x):
        return [None]

    @classmethod
    def example(cls, rng, dims):
        x = rng.standard_normal((dims[0], dims[1]))
        return cls(), Example([x], [False], {0: 0})


def _activation_doc(summary: str, call: str, example: str, args: str = "") -> str:
    return f"""{summary}

    Args:
        x: A float node.{args}

    Returns:
        A node of x's shape and dtype.

    Raises:
        DTypeError: x is not float.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> {call}.eval(x=np.array([[-1.0, 0.0, 2.0]], np.float32))
        {example}
    """


@user_call()
def gelu(x: Operand, approximate: str = "none") -> Node:
    return apply(Gelu(approximate), x)


@user_call()
def silu(x: Operand) -> Node:
    return apply(Silu(), x)


@user_call()
def leaky_relu(x: Operand, alpha: float = 0.01) -> Node:
    return apply(LeakyRelu(alpha), x)


@user_call()
def elu(x: Operand, alpha: float = 1.0) -> Node:
    return apply(Elu(alpha), x)


@user_call()
def softplus(x: Operand) -> Node:
    return apply(Softplus(), x)


@user_call()
def stop_gradient(x: Operand) -> Node:
    return apply(StopGradient(), x)


gelu.__doc__ = _activation_doc(
    "The Gaussian error linear unit x * Phi(x) (Phi: the standard normal CDF): exact,\n    "
    '0.5 x (1 + erf(x / sqrt 2)), or with approximate="tanh" PyTorch\'s tanh form.',
    "dg.gelu(x)",
    "array([[-0.15865526,  0.        ,  1.9544997 ]], dtype=float32)",
    '\n        approximate: "none" (erf) or "tanh".',
)
silu.__doc__ = _activation_doc(
    "x * sigmoid(x) (swish).", "dg.silu(x)", "array([[-0.2689414,  0.       ,  1.761594 ]], dtype=float32)"
)
leaky_relu.__doc__ = _activation_doc(
    "x for x > 0, alpha * x otherwise.",
    "dg.leaky_relu(x, 0.1)",
    "array([[-0.1,  0. ,  2. ]], dtype=float32)",
    "\n        alpha: The slope below zero.",
)
elu.__doc__ = _activation_doc(
    "x for x > 0, alpha * (exp(x) - 1) otherwise.",
    "dg.elu(x)",
    "array([[-0.63212055,  0.        ,  2.        ]], dtype=float32)",
    "\n        alpha: The value it tends to below zero is -alpha.",
)
softplus.__doc__ = _activation_doc(
    "log(1 + exp(x)), without overflow and relatively accurate for very negative x; its\n    gradient is sigmoid(x).",
    "dg.softplus(x)",
    "array([[0.3132617, 0.6931472, 2.126928 ]], dtype=float32)",
)
stop_gradient.__doc__ = _activation_doc(
    "x itself, through which no gradient flows (autodiff treats it as a constant).",
    "dg.stop_gradient(x)",
    "array([[-1.,  0.,  2.]], dtype=float32)",
)

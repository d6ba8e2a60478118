"""Numeric functions, elementwise: erf, sin, cos, abs, sign, square, rsqrt, pow, binary maximum and
minimum, clip. Gradients are graph ops (so they fuse, and differentiate again)."""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import ShapeError
from ..core.node import Node, apply
from ..core.op import NUMERIC_DTYPES, Example
from .elementwise import Elementwise, Relu, div, exp, log, mul, neg, sqrt, sub, zeros_like
from .logic import equal, greater, greater_equal, less, less_equal, logical_and, where


class Erf(Elementwise):
    name = "erf"
    arity = 1

    def ref(self, x):
        return reference_erf(x)

    def grad(self, g, out, x):
        return [mul(g, exp(mul(x, x, -1.0)), 2.0 / math.sqrt(math.pi))]


_erf_scalar = np.frompyfunc(math.erf, 1, 1)


def reference_erf(x: np.ndarray) -> np.ndarray:
    """math.erf elementwise (NumPy has no erf); the reference backend is an oracle, not fast."""
    return np.asarray(_erf_scalar(x), dtype=np.result_type(x, np.float32))


class Sin(Elementwise):
    name = "sin"
    arity = 1

    def ref(self, x):
        return np.sin(x)

    def grad(self, g, out, x):
        return [mul(g, cos(x))]


class Cos(Elementwise):
    name = "cos"
    arity = 1

    def ref(self, x):
        return np.cos(x)

    def grad(self, g, out, x):
        return [neg(mul(g, sin(x)))]


class Abs(Elementwise):
    name = "abs"
    arity = 1
    dtypes = NUMERIC_DTYPES

    def ref(self, x):
        return np.abs(x)

    def grad(self, g, out, x):
        return [mul(g, sign(x))]  # 0 at 0, like PyTorch and JAX

    sample_input = Relu.sample_input  # away from the kink


class Sign(Elementwise):
    """-1, 0 or 1 (NaN stays NaN)."""

    name = "sign"
    arity = 1
    dtypes = NUMERIC_DTYPES

    def ref(self, x):
        return np.sign(x)

    def grad(self, g, out, x):
        return [None]

    @classmethod
    def example(cls, rng, dims):
        x = np.round(rng.uniform(-2.0, 2.0, size=(dims[0], dims[1])))  # zeros among them
        return cls(), Example([x], [False], {0: 0})


class Square(Elementwise):
    name = "square"
    arity = 1
    dtypes = NUMERIC_DTYPES

    def ref(self, x):
        return x * x

    def grad(self, g, out, x):
        return [mul(g, x, 2.0)]


class Rsqrt(Elementwise):
    """1 / sqrt(x)."""

    name = "rsqrt"
    arity = 1

    def ref(self, x):
        return 1.0 / np.sqrt(x)

    def grad(self, g, out, x):
        return [mul(g, out, out, out, -0.5)]

    @staticmethod
    def sample_input(rng, shape):
        return rng.uniform(0.2, 3.0, size=shape)


class Pow(Elementwise):
    """x ** y with np.power's meaning for floats (a negative x needs an integer y)."""

    name = "pow"
    arity = 2

    def ref(self, x, y):
        with np.errstate(invalid="ignore", divide="ignore"):  # NaN for a negative base, like the native code
            return np.power(x, y)

    def grad(self, g, out, x, y):
        return [mul(g, y, pow(x, sub(y, 1.0))), mul(g, out, log(x))]

    @classmethod
    def example(cls, rng, dims):
        shape = (dims[0], dims[1])
        x, y = rng.uniform(0.5, 2.0, size=shape), rng.uniform(-2.0, 3.0, size=shape[1:])
        return cls(), Example([x, y], [True, True], {0: 0})


class _Extremum(Elementwise):
    """Binary maximum/minimum, NaN-propagating like NumPy's. The gradient goes to the operand
    picked; ties share it equally (PyTorch's and JAX's convention)."""

    arity = 2
    dtypes = NUMERIC_DTYPES
    numpy_fn = staticmethod(np.maximum)
    wins = staticmethod(greater)

    def ref(self, x, y):
        return self.numpy_fn(x, y)

    def grad(self, g, out, x, y):
        zero = zeros_like(g)
        tie = where(equal(x, y), mul(g, 0.5), zero)
        return [where(self.wins(x, y), g, tie), where(self.wins(y, x), g, tie)]

    @classmethod
    def example(cls, rng, dims):
        shape = (dims[0], dims[1])
        x = rng.uniform(-2.0, 2.0, size=shape)
        y = x[0] + rng.choice([-1.0, 1.0], size=shape[1:]) * rng.uniform(0.1, 1.0, size=shape[1:])
        return cls(), Example([x, y], [True, True], {0: 0})


class Maximum(_Extremum):
    name = "maximum"


class Minimum(_Extremum):
    name = "minimum"
    numpy_fn = staticmethod(np.minimum)
    wins = staticmethod(less)


class Clip(Elementwise):
    """x limited to [lo, hi] (either may be None: no limit); NaN stays NaN. The gradient passes
    where lo <= x <= hi, like PyTorch's clamp."""

    name = "clip"
    arity = 1
    dtypes = NUMERIC_DTYPES

    def __init__(self, lo: float | None, hi: float | None):
        self.lo, self.hi = lo, hi

    def infer(self, x):
        out = super().infer(x)
        if self.lo is not None and self.hi is not None and self.lo > self.hi:
            raise ShapeError(f"clip bounds are reversed: lo {self.lo} > hi {self.hi}")
        return out

    def ref(self, x):
        out = x if self.lo is None else np.maximum(x, np.asarray(self.lo, x.dtype))
        return out if self.hi is None else np.minimum(out, np.asarray(self.hi, x.dtype))

    def grad(self, g, out, x):
        inside = [c for c in (greater_equal(x, self.lo) if self.lo is not None else None,
                              less_equal(x, self.hi) if self.hi is not None else None) if c is not None]  # fmt: skip
        if not inside:
            return [g]
        keep = inside[0] if len(inside) == 1 else logical_and(*inside)
        return [where(keep, g, zeros_like(g))]

    @classmethod
    def example(cls, rng, dims):
        x = rng.uniform(-2.0, 2.0, size=(dims[0], dims[1]))
        x = np.where(np.abs(np.abs(x) - 1.0) < 0.1, 0.0, x)  # away from the kinks at the bounds
        return cls(-1.0, 1.0), Example([x], [True], {0: 0})


def erf(x):
    return apply(Erf(), x)


def sin(x):
    return apply(Sin(), x)


def cos(x):
    return apply(Cos(), x)


def abs(x):  # noqa: A001 - mirrors numpy's name
    return apply(Abs(), x)


def sign(x):
    return apply(Sign(), x)


def square(x):
    return apply(Square(), x)


def rsqrt(x):
    return apply(Rsqrt(), x)


def pow(x, y):  # noqa: A001
    """x ** y. A Python number as exponent picks cheaper code where one exists (2: square, 0.5:
    sqrt, -0.5: rsqrt, 1: x itself)."""
    if isinstance(x, Node) and isinstance(y, (int, float)) and not isinstance(y, bool):
        if float(y) == 2.0:
            return square(x)
        special = {1.0: lambda v: v, 0.5: sqrt, -0.5: rsqrt, -1.0: lambda v: div(1.0, v)}
        if float(y) in special and x.dtype.kind == "f":
            return special[float(y)](x)
    return apply(Pow(), x, y)


def maximum(x, y):
    return apply(Maximum(), x, y)


def minimum(x, y):
    return apply(Minimum(), x, y)


def clip(x, lo: float | None = None, hi: float | None = None):
    """x limited to [lo, hi]; a bound of None does not limit."""
    if lo is None and hi is None:
        raise ShapeError(f"clip of {x.describe()} needs a lower or an upper bound")
    return apply(Clip(None if lo is None else float(lo), None if hi is None else float(hi)), x)

"""Numeric functions, elementwise: erf, sin, cos, abs, sign, square, rsqrt, pow, binary maximum and
minimum, clip. Gradients are graph ops (so they fuse, and differentiate again)."""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import ShapeError
from ..core.node import Node, Operand, apply, user_call
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
        with np.errstate(divide="ignore", invalid="ignore"):  # inf at 0, NaN below, like the native code
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


def _unary_doc(summary: str, name: str, example: str, extra: str = "", dtypes: str = "A float node") -> str:
    return f"""{summary}{extra}

    Args:
        x: {dtypes}.

    Returns:
        A node of x's shape and dtype.

    Raises:
        DTypeError: x's dtype is not supported.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> dg.{name}(x).eval(x=np.array([[-1.0, 0.0, 2.0]], np.float32))
        {example}
    """


@user_call()
def erf(x: Operand) -> Node:
    return apply(Erf(), x)


@user_call()
def sin(x: Operand) -> Node:
    return apply(Sin(), x)


@user_call()
def cos(x: Operand) -> Node:
    return apply(Cos(), x)


@user_call()
def abs(x: Operand) -> Node:  # noqa: A001 - mirrors numpy's name
    return apply(Abs(), x)


@user_call()
def sign(x: Operand) -> Node:
    return apply(Sign(), x)


@user_call()
def square(x: Operand) -> Node:
    return apply(Square(), x)


@user_call()
def rsqrt(x: Operand) -> Node:
    return apply(Rsqrt(), x)


_NATIVE = (
    "\n\n    Native float32 code computes in double precision: within 0.501 ulp of the exact value\n"
    "    for every float32 input (checked exhaustively)."
)
erf.__doc__ = _unary_doc(
    "The error function, 2/sqrt(pi) times the integral of exp(-t^2) from 0 to x.",
    "erf",
    "array([[-0.8427008,  0.       ,  0.9953223]], dtype=float32)",
    "\n\n    Native float32 code computes in float32 (twice the lanes of double): within 0.994 ulp of\n"
    "    the exact value for every float32 input (checked exhaustively).",
)
sin.__doc__ = _unary_doc(
    "The sine of x (radians), for every finite x (full-range argument reduction).",
    "sin",
    "array([[-0.841471 ,  0.       ,  0.9092974]], dtype=float32)",
    _NATIVE,
)
cos.__doc__ = _unary_doc(
    "The cosine of x (radians), for every finite x.",
    "cos",
    "array([[ 0.5403023,  1.       , -0.4161468]], dtype=float32)",
    _NATIVE,
)
abs.__doc__ = _unary_doc(
    "|x| (`abs(x)` on nodes); the gradient is sign(x) (0 at 0).",
    "abs",
    "array([[1., 0., 2.]], dtype=float32)",
    dtypes="A float or integer node",
)
sign.__doc__ = _unary_doc(
    "-1, 0 or 1 by the sign of x (NaN stays NaN); not differentiable.",
    "sign",
    "array([[-1.,  0.,  1.]], dtype=float32)",
    dtypes="A float or integer node",
)
square.__doc__ = _unary_doc(
    "x * x (`x ** 2` on nodes).", "square", "array([[1., 0., 4.]], dtype=float32)", dtypes="A float or integer node"
)
rsqrt.__doc__ = _unary_doc(
    "1 / sqrt(x).", "rsqrt", "array([[       nan,        inf, 0.70710677]], dtype=float32)"
)  # fmt: skip


@user_call()
def pow(x: Operand, y: Operand) -> Node:  # noqa: A001
    """x ** y elementwise (`x ** y` on nodes), with NumPy's meaning for floats: a negative x
    needs an integer y (else NaN). A Python number as exponent picks cheaper code where one
    exists (2: square, 0.5: sqrt, -0.5: rsqrt, 1: x itself).

    Args:
        x: The base (a float node, or a number when y is a node).
        y: The exponent (a node or a number).

    Returns:
        A node of the broadcast shape.

    Raises:
        DTypeError: Non-float or mixed dtypes.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> (x ** 3).eval(x=np.array([[-2.0, 0.5, 3.0]], np.float32))
        array([[-8.   ,  0.125, 27.   ]], dtype=float32)
    """
    if isinstance(x, Node) and isinstance(y, (int, float)) and not isinstance(y, bool):
        if float(y) == 2.0:
            return square(x)
        special = {1.0: lambda v: v, 0.5: sqrt, -0.5: rsqrt, -1.0: lambda v: div(1.0, v)}
        if float(y) in special and x.dtype.kind == "f":
            return special[float(y)](x)
    return apply(Pow(), x, y)


@user_call()
def maximum(x: Operand, y: Operand) -> Node:
    """The larger of x and y elementwise, NaN-propagating like np.maximum; the gradient goes to
    the larger input, split equally on ties.

    Args:
        x: A node (or number).
        y: A node (or number) of the same dtype, broadcasting with x.

    Returns:
        A node of the broadcast shape.

    Raises:
        ShapeError: The shapes do not broadcast.
        DTypeError: Mixed dtypes.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> dg.maximum(x, 0.5).eval(x=np.array([[-1.0, 0.5, 2.0]], np.float32))
        array([[0.5, 0.5, 2. ]], dtype=float32)
    """
    return apply(Maximum(), x, y)


@user_call()
def minimum(x: Operand, y: Operand) -> Node:
    """The smaller of x and y elementwise (see `maximum`).

    Args:
        x: A node (or number).
        y: A node (or number) of the same dtype, broadcasting with x.

    Returns:
        A node of the broadcast shape.

    Raises:
        ShapeError: The shapes do not broadcast.
        DTypeError: Mixed dtypes.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> dg.minimum(x, 0.5).eval(x=np.array([[-1.0, 0.5, 2.0]], np.float32))
        array([[-1. ,  0.5,  0.5]], dtype=float32)
    """
    return apply(Minimum(), x, y)


@user_call()
def clip(x: Node, lo: float | None = None, hi: float | None = None) -> Node:
    """x limited to [lo, hi] (NaN stays NaN); the gradient passes where lo <= x <= hi, like
    PyTorch's clamp.

    Args:
        x: A float or integer node.
        lo: The lower bound, or None for none.
        hi: The upper bound, or None for none.

    Returns:
        A node of x's shape and dtype.

    Raises:
        ShapeError: No bound, or lo > hi.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> dg.clip(x, -1, 1).eval(x=np.array([[-3.0, 0.5, 2.0]], np.float32))
        array([[-1. ,  0.5,  1. ]], dtype=float32)
    """
    if lo is None and hi is None:
        raise ShapeError(f"clip of {x.describe()} needs a lower or an upper bound")
    return apply(Clip(None if lo is None else float(lo), None if hi is None else float(hi)), x)

"""Elementwise ops. Gradients are written with the output's shape; autodiff sums them back
to each input's (broadcast) shape."""

from __future__ import annotations

import functools
import operator
from typing import ClassVar

import numpy as np

from ..core.node import Node, Operand, apply, user_call
from ..core.op import NUMERIC_DTYPES, Example, Op, same_dtype
from ..core.types import FLOAT_DTYPES, TensorType, broadcast_shapes


class Elementwise(Op):
    """Broadcasting ops computed one element at a time; backends fuse neighbouring ones into one loop."""

    dtypes: ClassVar[tuple[np.dtype, ...]] = FLOAT_DTYPES  # what the inputs may be (all of one dtype)

    def infer(self, *inputs: TensorType) -> TensorType:
        kind = "float" if self.dtypes == FLOAT_DTYPES else "numeric (float or int)"
        dtype = same_dtype(inputs, self.dtypes, kind)
        return TensorType(broadcast_shapes([t.shape for t in inputs]), dtype)

    @classmethod
    def example(cls, rng, dims):
        n = cls.arity or 3
        shape = (dims[0], dims[1])
        # a binary/n-ary op's last input broadcasts, covering the sum-to-shape gradient
        shapes = [shape] if n == 1 else [shape] * (n - 1) + [shape[1:]]
        xs = [cls.sample_input(rng, s) for s in shapes]
        batched = {i: 0 for i, s in enumerate(shapes) if len(s) == 2}
        return cls(), Example(xs, [True] * n, batched)

    @staticmethod
    def sample_input(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return rng.uniform(-2.0, 2.0, size=shape)


class Add(Elementwise):
    name = "add"
    dtypes = NUMERIC_DTYPES

    def ref(self, *xs):
        return functools.reduce(operator.add, xs)

    def grad(self, g, out, *xs):
        return [g] * len(xs)


class Mul(Elementwise):
    name = "mul"
    dtypes = NUMERIC_DTYPES

    def ref(self, *xs):
        return functools.reduce(operator.mul, xs)

    def grad(self, g, out, *xs):
        # the product of the other factors (not out / x_i, which breaks at zeros)
        return [mul(g, *(x for j, x in enumerate(xs) if j != i)) for i in range(len(xs))]


class Sub(Elementwise):
    name = "sub"
    arity = 2
    dtypes = NUMERIC_DTYPES

    def ref(self, a, b):
        return a - b

    def grad(self, g, out, a, b):
        return [g, neg(g)]


class Div(Elementwise):
    name = "div"
    arity = 2

    def ref(self, a, b):
        return a / b

    def grad(self, g, out, a, b):
        return [div(g, b), neg(div(mul(g, out), b))]

    @staticmethod
    def sample_input(rng, shape):
        return rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)


class Neg(Elementwise):
    name = "neg"
    arity = 1
    dtypes = NUMERIC_DTYPES

    def ref(self, x):
        return -x

    def grad(self, g, out, x):
        return [neg(g)]


class Relu(Elementwise):
    name = "relu"
    arity = 1

    def ref(self, x):
        return np.maximum(x, 0)  # propagates NaN

    def grad(self, g, out, x):
        return [apply(ReluGrad(), g, x)]

    @staticmethod
    def sample_input(rng, shape):
        # keep away from the kink at 0, where finite differences are meaningless
        return rng.uniform(0.1, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)


class ReluGrad(Elementwise):
    """g where x > 0, else 0."""

    name = "relu_grad"
    arity = 2

    def ref(self, g, x):
        return np.where(x > 0, g, np.zeros_like(g))

    def grad(self, gg, out, g, x):
        return [apply(ReluGrad(), gg, x), None]

    @classmethod
    def example(cls, rng, dims):
        shape = (dims[0], dims[1])
        x = Relu.sample_input(rng, shape)
        return cls(), Example([rng.standard_normal(shape), x], [True, False], {0: 0, 1: 0})


class Sigmoid(Elementwise):
    name = "sigmoid"
    arity = 1

    def ref(self, x):
        return np.exp(-np.logaddexp(0, -x))  # stable for large |x|

    def grad(self, g, out, x):
        return [mul(g, out, sub(1.0, out))]


class Tanh(Elementwise):
    name = "tanh"
    arity = 1

    def ref(self, x):
        return np.tanh(x)

    def grad(self, g, out, x):
        return [mul(g, sub(1.0, mul(out, out)))]


class Exp(Elementwise):
    name = "exp"
    arity = 1

    def ref(self, x):
        return np.exp(x)

    def grad(self, g, out, x):
        return [mul(g, out)]


class Log(Elementwise):
    name = "log"
    arity = 1

    def ref(self, x):
        return np.log(x)

    def grad(self, g, out, x):
        return [div(g, x)]

    @staticmethod
    def sample_input(rng, shape):
        return rng.uniform(0.2, 3.0, size=shape)


class Sqrt(Elementwise):
    name = "sqrt"
    arity = 1

    def ref(self, x):
        return np.sqrt(x)

    def grad(self, g, out, x):
        return [div(g, mul(out, 2.0))]

    sample_input = Log.sample_input


class OnesLike(Elementwise):
    """Ones with x's (runtime) shape: the seed of reverse-mode autodiff."""

    name = "ones_like"
    arity = 1
    shape_only_inputs = (0,)

    def ref(self, x):
        return np.ones_like(x)

    def grad(self, g, out, x):
        return [None]

    @classmethod
    def example(cls, rng, dims):
        return None


@user_call()
def add(*xs: Operand) -> Node:
    """The elementwise sum of any number of inputs (`a + b` is `add(a, b)`).

    Inputs broadcast like NumPy arrays (the batch dimension None only meets None or 1) and must
    share one float dtype; Python numbers and arrays become constants of that dtype.

    Args:
        *xs: Two or more nodes (or numbers, arrays) of one float dtype.

    Returns:
        A node of the broadcast shape and the inputs' dtype.

    Raises:
        ShapeError: The shapes do not broadcast.
        DTypeError: Mixed or non-float dtypes.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x, b = g.input("x", (None, 3)), g.constant([0.0, 10.0, 20.0])
        >>> dg.add(x, b, 1.0).eval(x=np.ones((2, 3), np.float32))
        array([[ 2., 12., 22.],
               [ 2., 12., 22.]], dtype=float32)
    """
    return apply(Add(), *xs)


@user_call()
def mul(*xs: Operand) -> Node:
    """The elementwise product of any number of inputs (`a * b` is `mul(a, b)`); broadcasting
    and dtypes as in `add`.

    Args:
        *xs: Two or more nodes (or numbers, arrays) of one float dtype.

    Returns:
        A node of the broadcast shape and the inputs' dtype.

    Raises:
        ShapeError: The shapes do not broadcast.
        DTypeError: Mixed or non-float dtypes.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2))
        >>> dg.mul(x, x, 0.5).eval(x=np.array([[2.0, 4.0]], np.float32))
        array([[2., 8.]], dtype=float32)
    """
    return apply(Mul(), *xs)


@user_call()
def sub(a: Operand, b: Operand) -> Node:
    """`a - b`, elementwise; broadcasting and dtypes as in `add`.

    Args:
        a: Minuend (a node, number or array).
        b: Subtrahend.

    Returns:
        A node of the broadcast shape and the inputs' dtype.

    Raises:
        ShapeError: The shapes do not broadcast.
        DTypeError: Mixed or non-float dtypes.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2))
        >>> dg.sub(1.0, x).eval(x=np.array([[0.25, 3.0]], np.float32))
        array([[ 0.75, -2.  ]], dtype=float32)
    """
    return apply(Sub(), a, b)


@user_call()
def div(a: Operand, b: Operand) -> Node:
    """`a / b`, elementwise (IEEE division: x/0 is ±Inf, 0/0 NaN); broadcasting and dtypes as in `add`.

    Args:
        a: Dividend (a node, number or array).
        b: Divisor.

    Returns:
        A node of the broadcast shape and the inputs' dtype.

    Raises:
        ShapeError: The shapes do not broadcast.
        DTypeError: Mixed or non-float dtypes.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2))
        >>> dg.div(x, 4.0).eval(x=np.array([[1.0, 2.0]], np.float32))
        array([[0.25, 0.5 ]], dtype=float32)
    """
    return apply(Div(), a, b)


@user_call()
def neg(x: Operand) -> Node:
    """`-x`, elementwise (`-node` is `neg(node)`).

    Args:
        x: A float node.

    Returns:
        A node of x's shape and dtype.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2))
        >>> (-x).eval(x=np.array([[1.0, -2.0]], np.float32))
        array([[-1.,  2.]], dtype=float32)
    """
    return apply(Neg(), x)


@user_call()
def relu(x: Operand) -> Node:
    """`max(x, 0)`, elementwise; NaN stays NaN (like `np.maximum`). The gradient is 0 at x <= 0.

    Args:
        x: A float node.

    Returns:
        A node of x's shape and dtype.

    Raises:
        DTypeError: x is not float.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> dg.relu(x).eval(x=np.array([[-1.0, 0.0, 2.0]], np.float32))
        array([[0., 0., 2.]], dtype=float32)
    """
    return apply(Relu(), x)


@user_call()
def sigmoid(x: Operand) -> Node:
    """The logistic function `1 / (1 + exp(-x))`, elementwise, stable for large |x|.

    Args:
        x: A float node.

    Returns:
        A node of x's shape and dtype, with values in [0, 1].

    Raises:
        DTypeError: x is not float.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2))
        >>> dg.sigmoid(x).eval(x=np.array([[0.0, 100.0]], np.float32))
        array([[0.5, 1. ]], dtype=float32)
    """
    return apply(Sigmoid(), x)


@user_call()
def tanh(x: Operand) -> Node:
    """The hyperbolic tangent, elementwise.

    Args:
        x: A float node.

    Returns:
        A node of x's shape and dtype, with values in [-1, 1].

    Raises:
        DTypeError: x is not float.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2))
        >>> dg.tanh(x).eval(x=np.array([[0.0, 20.0]], np.float32))
        array([[0., 1.]], dtype=float32)
    """
    return apply(Tanh(), x)


@user_call()
def exp(x: Operand) -> Node:
    """`e ** x`, elementwise (overflows to Inf above ~88.7 in float32).

    Args:
        x: A float node.

    Returns:
        A node of x's shape and dtype.

    Raises:
        DTypeError: x is not float.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2))
        >>> dg.exp(x).eval(x=np.array([[0.0, 1.0]], np.float32))
        array([[1.      , 2.718282]], dtype=float32)
    """
    return apply(Exp(), x)


@user_call()
def log(x: Operand) -> Node:
    """The natural logarithm, elementwise (log 0 is -Inf, a negative x gives NaN).

    Args:
        x: A float node.

    Returns:
        A node of x's shape and dtype.

    Raises:
        DTypeError: x is not float.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2))
        >>> dg.log(x).eval(x=np.array([[1.0, np.e]], np.float32))
        array([[0., 1.]], dtype=float32)
    """
    return apply(Log(), x)


@user_call()
def sqrt(x: Operand) -> Node:
    """The square root, elementwise (a negative x gives NaN; the gradient at 0 is Inf).

    Args:
        x: A float node.

    Returns:
        A node of x's shape and dtype.

    Raises:
        DTypeError: x is not float.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2))
        >>> dg.sqrt(x).eval(x=np.array([[4.0, 2.25]], np.float32))
        array([[2. , 1.5]], dtype=float32)
    """
    return apply(Sqrt(), x)


@user_call()
def ones_like(x: Operand) -> Node:
    """Ones with x's run-time shape (batch included) and dtype: the seed of reverse-mode autodiff."""
    return apply(OnesLike(), x)


@user_call()
def zeros_like(x: Operand) -> Node:
    """Zeros with x's run-time shape (batch included) and dtype."""
    return mul(ones_like(x), 0.0)

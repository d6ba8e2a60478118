"""Elementwise ops. Gradients are written with the output's shape; autodiff sums them back
to each input's (broadcast) shape."""

from __future__ import annotations

import functools
import operator
from typing import ClassVar

import numpy as np

from ..core.node import apply
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


def add(*xs):
    """Sum of any number of inputs (broadcasting)."""
    return apply(Add(), *xs)


def mul(*xs):
    """Product of any number of inputs (broadcasting)."""
    return apply(Mul(), *xs)


def sub(a, b):
    return apply(Sub(), a, b)


def div(a, b):
    return apply(Div(), a, b)


def neg(x):
    return apply(Neg(), x)


def relu(x):
    return apply(Relu(), x)


def sigmoid(x):
    return apply(Sigmoid(), x)


def tanh(x):
    return apply(Tanh(), x)


def exp(x):
    return apply(Exp(), x)


def log(x):
    return apply(Log(), x)


def sqrt(x):
    return apply(Sqrt(), x)


def ones_like(x):
    return apply(OnesLike(), x)


def zeros_like(x):
    """Zeros with x's (runtime) shape, batch included."""
    return mul(ones_like(x), 0.0)

"""Elementwise ops. Gradients are written with the output's shape; autodiff sums them back
to each input's (broadcast) shape."""

from __future__ import annotations

import functools
import operator

import numpy as np

from .base import Elementwise, Example, apply


class Add(Elementwise):
    name = "add"

    def ref(self, *xs):
        return functools.reduce(operator.add, xs)

    def grad(self, g, out, *xs):
        return [g] * len(xs)

    def emit(self, b, *xs):
        return functools.reduce(b.add, xs)


class Mul(Elementwise):
    name = "mul"

    def ref(self, *xs):
        return functools.reduce(operator.mul, xs)

    def grad(self, g, out, *xs):
        # the product of the other factors (not out / x_i, which breaks at zeros)
        return [mul(g, *(x for j, x in enumerate(xs) if j != i)) for i in range(len(xs))]

    def emit(self, b, *xs):
        return functools.reduce(b.mul, xs)


class Sub(Elementwise):
    name = "sub"
    arity = 2

    def ref(self, a, b):
        return a - b

    def grad(self, g, out, a, b):
        return [g, neg(g)]

    def emit(self, b, x, y):
        return b.sub(x, y)


class Div(Elementwise):
    name = "div"
    arity = 2

    def ref(self, a, b):
        return a / b

    def grad(self, g, out, a, b):
        return [div(g, b), neg(div(mul(g, out), b))]

    def emit(self, b, x, y):
        return b.div(x, y)

    @staticmethod
    def sample_input(rng, shape):
        return rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)


class Neg(Elementwise):
    name = "neg"
    arity = 1

    def ref(self, x):
        return -x

    def grad(self, g, out, x):
        return [neg(g)]

    def emit(self, b, x):
        return b.neg(x)


class Relu(Elementwise):
    name = "relu"
    arity = 1

    def ref(self, x):
        return np.maximum(x, 0)  # propagates NaN

    def grad(self, g, out, x):
        return [apply(ReluGrad(), g, x)]

    def emit(self, b, x):
        return b.maximum(x, b.const(0.0))

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

    def emit(self, b, g, x):
        return b.select_positive(x, g)

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

    def emit(self, b, x):
        return b.sigmoid(x)


class Tanh(Elementwise):
    name = "tanh"
    arity = 1

    def ref(self, x):
        return np.tanh(x)

    def grad(self, g, out, x):
        return [mul(g, sub(1.0, mul(out, out)))]

    def emit(self, b, x):
        return b.tanh(x)


class Exp(Elementwise):
    name = "exp"
    arity = 1

    def ref(self, x):
        return np.exp(x)

    def grad(self, g, out, x):
        return [mul(g, out)]

    def emit(self, b, x):
        return b.exp(x)


class Log(Elementwise):
    name = "log"
    arity = 1

    def ref(self, x):
        return np.log(x)

    def grad(self, g, out, x):
        return [div(g, x)]

    def emit(self, b, x):
        return b.log(x)

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

    def emit(self, b, x):
        return b.sqrt(x)

    sample_input = Log.sample_input


class Equal(Elementwise):
    """1 where a == b else 0; used to route max/min gradients."""

    name = "equal"
    arity = 2

    def ref(self, a, b):
        return (a == b).astype(np.result_type(a, b))

    def grad(self, g, out, a, b):
        return [None, None]

    def emit(self, b, x, y):
        return b.equal(x, y)

    @classmethod
    def example(cls, rng, dims):
        return None


class OnesLike(Elementwise):
    """Ones with x's (runtime) shape: the seed of reverse-mode autodiff."""

    name = "ones_like"
    arity = 1

    def ref(self, x):
        return np.ones_like(x)

    def grad(self, g, out, x):
        return [None]

    def emit(self, b, x):
        return b.const(1.0)

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


def equal(a, b):
    return apply(Equal(), a, b)


def ones_like(x):
    return apply(OnesLike(), x)


def zeros_like(x):
    """Zeros with x's (runtime) shape, batch included."""
    return mul(ones_like(x), 0.0)

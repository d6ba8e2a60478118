"""Comparisons, `where` and logical ops: bool nodes, the masks attention and dropout select with.
Their values are not differentiable; `where` passes the gradient to the side it selected."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..core.errors import ShapeError
from ..core.node import apply
from ..core.op import Example, same_dtype
from ..core.types import BOOL, DTYPES, TensorType, broadcast_shapes
from .elementwise import Elementwise, zeros_like


class Comparison(Elementwise):
    """a <op> b elementwise (broadcasting) for operands of one dtype; the result is bool. NaN
    compares like NumPy: only != holds."""

    arity = 2
    symbol: ClassVar[str] = ""
    numpy_fn: ClassVar = staticmethod(np.equal)

    def infer(self, a, b):
        same_dtype([a, b], DTYPES)
        return TensorType(broadcast_shapes([a.shape, b.shape]), BOOL)

    def ref(self, a, b):
        return self.numpy_fn(a, b)

    def grad(self, g, out, a, b):
        return [None, None]

    @classmethod
    def example(cls, rng, dims):
        shape = (dims[0], dims[1])
        a = np.round(rng.uniform(-2.0, 2.0, size=shape))  # small integers: some pairs are equal
        b = np.round(rng.uniform(-2.0, 2.0, size=shape[1:]))
        return cls(), Example([a, b], [False, False], {0: 0})


class Less(Comparison):
    name, symbol, numpy_fn = "less", "<", staticmethod(np.less)


class LessEqual(Comparison):
    name, symbol, numpy_fn = "less_equal", "<=", staticmethod(np.less_equal)


class Greater(Comparison):
    name, symbol, numpy_fn = "greater", ">", staticmethod(np.greater)


class GreaterEqual(Comparison):
    name, symbol, numpy_fn = "greater_equal", ">=", staticmethod(np.greater_equal)


class Equal(Comparison):
    name, symbol, numpy_fn = "equal", "==", staticmethod(np.equal)


class NotEqual(Comparison):
    name, symbol, numpy_fn = "not_equal", "!=", staticmethod(np.not_equal)


class Where(Elementwise):
    """`a` where `cond` holds, else `b` (all three broadcast); a and b share one dtype."""

    name = "where"
    arity = 3

    def infer(self, cond, a, b):
        if cond.dtype != BOOL:
            raise ShapeError(f"the condition must be bool, got {cond.dtype}; compare first (x > 0) or cast")
        if a.dtype != b.dtype:
            raise ShapeError(f"the branches disagree in dtype ({a.dtype} and {b.dtype}); cast one of them")
        return TensorType(broadcast_shapes([cond.shape, a.shape, b.shape]), a.dtype)

    def ref(self, cond, a, b):
        return np.where(cond, a, b)

    def grad(self, g, out, cond, a, b):
        zero = zeros_like(g)
        return [None, where(cond, g, zero), where(cond, zero, g)]

    @classmethod
    def example(cls, rng, dims):
        shape = (dims[0], dims[1])
        cond = rng.uniform(size=shape) < 0.5
        a, b = rng.standard_normal(shape), rng.standard_normal(shape[1:])
        return cls(), Example([cond, a, b], [False, True, True], {0: 0, 1: 0})


class Logical(Elementwise):
    """A logical op on bool operands (broadcasting); not differentiable."""

    numpy_fn: ClassVar = staticmethod(np.logical_and)

    def infer(self, *xs):
        if any(x.dtype != BOOL for x in xs):
            raise ShapeError(f"needs bool inputs, got {', '.join(str(x.dtype) for x in xs)}; compare or cast first")
        return TensorType(broadcast_shapes([x.shape for x in xs]), BOOL)

    def ref(self, *xs):
        return self.numpy_fn(*xs)

    def grad(self, g, out, *xs):
        return [None] * len(xs)

    @classmethod
    def example(cls, rng, dims):
        shape = (dims[0], dims[1])
        shapes = [shape] if cls.arity == 1 else [shape, shape[1:]]
        return cls(), Example([rng.uniform(size=s) < 0.5 for s in shapes], [False] * cls.arity, {0: 0})


class LogicalAnd(Logical):
    name, arity, numpy_fn = "logical_and", 2, staticmethod(np.logical_and)


class LogicalOr(Logical):
    name, arity, numpy_fn = "logical_or", 2, staticmethod(np.logical_or)


class LogicalXor(Logical):
    name, arity, numpy_fn = "logical_xor", 2, staticmethod(np.logical_xor)


class LogicalNot(Logical):
    name, arity, numpy_fn = "logical_not", 1, staticmethod(np.logical_not)


def less(a, b):
    return apply(Less(), a, b)


def less_equal(a, b):
    return apply(LessEqual(), a, b)


def greater(a, b):
    return apply(Greater(), a, b)


def greater_equal(a, b):
    return apply(GreaterEqual(), a, b)


def equal(a, b):
    return apply(Equal(), a, b)


def not_equal(a, b):
    return apply(NotEqual(), a, b)


def where(cond, a, b):
    """`a` where `cond` (a bool node) holds, else `b`; the gradient flows to the selected side."""
    return apply(Where(), cond, a, b)


def logical_and(a, b):
    return apply(LogicalAnd(), a, b)


def logical_or(a, b):
    return apply(LogicalOr(), a, b)


def logical_xor(a, b):
    return apply(LogicalXor(), a, b)


def logical_not(x):
    return apply(LogicalNot(), x)

"""Reductions over axes: sum, max, min, and the runtime element count that mean divides by."""

from __future__ import annotations

import math

import numpy as np

from ..core.node import apply
from ..core.op import Example, Op, same_float_dtype
from ..core.types import TensorType, normalize_axes
from .cast import cast
from .elementwise import div, mul
from .logic import equal
from .shape import broadcast_like, reshape


class Reduce(Op):
    arity = 1
    numpy_fn = staticmethod(np.sum)
    combine = "add"

    def __init__(self, axes: tuple[int, ...], keepdims: bool = False):
        self.axes = axes
        self.keepdims = keepdims

    def infer(self, x):
        same_float_dtype(self.name, [x])
        if self.keepdims:
            shape = tuple(1 if i in self.axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in self.axes)
        return TensorType(shape, x.dtype)

    def ref(self, x):
        return np.asarray(self.numpy_fn(x, axis=self.axes, keepdims=self.keepdims))

    def reduced_axes(self, in_shape) -> tuple[int, ...]:
        return self.axes

    @property
    def keeps_reduced_axes(self) -> bool:
        return self.keepdims

    def kept(self, node, x):
        """`node` (this op's output or its gradient) with the reduced axes kept as size 1."""
        if self.keepdims:
            return node
        return reshape(node, tuple(1 if i in self.axes else d for i, d in enumerate(x.shape)))

    @classmethod
    def example(cls, rng, dims):
        x = rng.standard_normal((dims[0], dims[1], 3))
        return cls((1, 2)), Example([x], [True], {0: 0})


class Sum(Reduce):
    name = "sum"

    def grad(self, g, out, x):
        return [broadcast_like(self.kept(g, x), x)]


class Max(Reduce):
    name = "max"
    numpy_fn = staticmethod(np.max)
    combine = "max"

    def grad(self, g, out, x):
        # ties share the gradient equally, like JAX
        mask = cast(equal(x, broadcast_like(self.kept(out, x), x)), x.dtype)
        count = apply(Sum(self.axes, keepdims=True), mask)
        return [mul(broadcast_like(self.kept(g, x), x), div(mask, count))]


class Min(Max):
    name = "min"
    numpy_fn = staticmethod(np.min)
    combine = "min"


class Count(Op):
    """The number of elements over `axes` at run time (the batch may be among them)."""

    name = "count"
    arity = 1

    def __init__(self, axes: tuple[int, ...]):
        self.axes = axes

    def infer(self, x):
        return TensorType((), same_float_dtype(self.name, [x]))

    def ref(self, x):
        return np.asarray(math.prod(x.shape[a] for a in self.axes), x.dtype)

    shape_only_inputs = (0,)

    def grad(self, g, out, x):
        return [None]


def sum(x, axis=None, keepdims: bool = False):  # noqa: A001 - mirrors numpy's name
    return apply(Sum(normalize_axes(axis, x.ndim), keepdims), x)


def mean(x, axis=None, keepdims: bool = False):
    axes = normalize_axes(axis, x.ndim)
    total = sum(x, axes, keepdims)
    if any(x.shape[a] is None for a in axes):
        return div(total, apply(Count(axes), x))
    return mul(total, 1.0 / math.prod(x.shape[a] for a in axes))


def max(x, axis=None, keepdims: bool = False):  # noqa: A001
    return apply(Max(normalize_axes(axis, x.ndim), keepdims), x)


def min(x, axis=None, keepdims: bool = False):  # noqa: A001
    return apply(Min(normalize_axes(axis, x.ndim), keepdims), x)

"""Reductions over axes: sum, max, min, and the runtime element count that mean divides by."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeAlias

import numpy as np

from ..core.errors import ShapeError
from ..core.node import Node, Operand, apply, user_call
from ..core.op import Example, Op, same_float_dtype
from ..core.types import TensorType, format_shape, normalize_axes
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

    def infer(self, x):
        if any(x.shape[axis] == 0 for axis in self.axes):  # an empty batch axis is refused at the call
            raise ShapeError(f"{self.name} over an empty axis of {format_shape(x.shape)} has no value")
        return super().infer(x)

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


class SumOfSquares(Op):
    """The sum of the squares of every element of every input: a scalar (the squared global norm
    that gradient clipping scales by), one pass over all of them."""

    name = "sum_squares"
    arity = None

    def infer(self, *xs):
        if not xs:
            raise ShapeError("sum_squares needs at least one input")
        return TensorType((), same_float_dtype(self.name, list(xs)))

    def ref(self, *xs):
        return np.asarray(np.sum([np.sum(x * x) for x in xs]), xs[0].dtype)

    def grad(self, g, out, *xs):
        return [mul(broadcast_like(mul(g, 2.0), x), x) for x in xs]

    @classmethod
    def example(cls, rng, dims):
        xs = [rng.standard_normal((dims[0], 3)), rng.standard_normal((dims[1] + 1,)), rng.standard_normal(())]
        return cls(), Example(xs, [True, True, True], {0: 0})


Axis: TypeAlias = "int | Sequence[int] | None"


@user_call()
def sum(x: Operand, axis: Axis = None, keepdims: bool = False) -> Node:  # noqa: A001 - mirrors numpy's name
    """The sum over `axis` (an int, a tuple of ints, or None for every axis), like `np.sum`.

    Summing over the batch axis (None) adds the examples of the call together.

    Args:
        x: A float node.
        axis: Axes to reduce; negative axes count from the end. None reduces all of them.
        keepdims: Keep the reduced axes as size 1 (so the result broadcasts against x).

    Returns:
        A node of x's dtype and shape without the reduced axes (or with them as 1).

    Raises:
        ShapeError: An axis out of range or repeated.
        DTypeError: x is not float.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> dg.sum(x, axis=1).eval(x=np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32))
        array([ 6., 15.], dtype=float32)
    """
    return apply(Sum(normalize_axes(axis, x.ndim), keepdims), x)


@user_call()
def mean(x: Operand, axis: Axis = None, keepdims: bool = False) -> Node:
    """The mean over `axis` (default: every axis), like `np.mean`; over the batch axis it divides
    by the batch size of each call.

    Args:
        x: A float node.
        axis: Axes to reduce; None reduces all of them.
        keepdims: Keep the reduced axes as size 1.

    Returns:
        A node of x's dtype and shape without the reduced axes (or with them as 1).

    Raises:
        ShapeError: An axis out of range or repeated.
        DTypeError: x is not float.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2))
        >>> dg.mean(x).eval(x=np.array([[1.0, 2.0], [3.0, 6.0]], np.float32))
        array(3., dtype=float32)
    """
    axes = normalize_axes(axis, x.ndim)
    total = sum(x, axes, keepdims)
    if any(x.shape[a] is None for a in axes):
        return div(total, apply(Count(axes), x))
    return mul(total, 1.0 / math.prod(x.shape[a] for a in axes))


@user_call()
def max(x: Operand, axis: Axis = None, keepdims: bool = False) -> Node:  # noqa: A001
    """The maximum over `axis` (default: every axis), like `np.max`; NaN propagates. Ties share
    the gradient equally.

    Args:
        x: A float node.
        axis: Axes to reduce; None reduces all of them.
        keepdims: Keep the reduced axes as size 1.

    Returns:
        A node of x's dtype and shape without the reduced axes (or with them as 1).

    Raises:
        ShapeError: An axis out of range or repeated.
        DTypeError: x is not float.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> dg.max(x, axis=-1, keepdims=True).eval(x=np.array([[1.0, 7.0, 3.0]], np.float32))
        array([[7.]], dtype=float32)
    """
    return apply(Max(normalize_axes(axis, x.ndim), keepdims), x)


@user_call()
def min(x: Operand, axis: Axis = None, keepdims: bool = False) -> Node:  # noqa: A001
    """The minimum over `axis` (default: every axis), like `np.min`; see `max`.

    Args:
        x: A float node.
        axis: Axes to reduce; None reduces all of them.
        keepdims: Keep the reduced axes as size 1.

    Returns:
        A node of x's dtype and shape without the reduced axes (or with them as 1).

    Raises:
        ShapeError: An axis out of range or repeated.
        DTypeError: x is not float.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> dg.min(x, axis=1).eval(x=np.array([[1.0, 7.0, -3.0]], np.float32))
        array([-3.], dtype=float32)
    """
    return apply(Min(normalize_axes(axis, x.ndim), keepdims), x)

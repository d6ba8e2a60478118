"""Ops that pick elements by position: argmax/argmin, take (np.take) and gather
(np.take_along_axis, torch.gather) with scatter-add gradients, and cumsum. Ids are checked before
anything is written, as embedding's are: an id out of range stops the step with an error."""

from __future__ import annotations

import numpy as np

from ..core.errors import ShapeError
from ..core.node import Node, apply, user_call
from ..core.op import NUMERIC_DTYPES, Example, Op, same_dtype, same_float_dtype
from ..core.types import Shape, TensorType, format_shape, normalize_axes
from .nn import _check_labels, _int_type

INT32 = np.dtype("int32")


def _static_axis(op: Op, x: TensorType) -> int:
    """The op's axis of x, which must not be the batch dimension."""
    if not 0 <= op.axis < x.ndim:
        raise ShapeError(f"axis {op.axis} out of range for {x.ndim}-D input")
    if x.shape[op.axis] is None:
        raise ShapeError(f"axis {op.axis} is the batch dimension; {op.name} needs a static axis")
    return x.shape[op.axis]


def _scatter_shape(in_shape: Shape, axis: int, ids_ndim: int, g: np.ndarray) -> tuple[int, ...]:
    """x's run-time shape for the adjoint of a take/gather along `axis`: its batch dimension (if
    any, never `axis`) is read from g, where the ids' axes stand in for `axis`."""
    if None not in in_shape:
        return tuple(in_shape)
    at = in_shape.index(None)
    batch = g.shape[at if at < axis else at - 1 + ids_ndim]
    return tuple(batch if d is None else d for d in in_shape)


class ArgExtremum(Op):
    """The position of the largest (argmax) or smallest (argmin) value along `axis`, as int32;
    the first one on ties, and the first NaN where there is one (NumPy's rule)."""

    arity = 1
    numpy_fn = staticmethod(np.argmax)

    def __init__(self, axis: int):
        self.axis = axis

    def infer(self, x):
        same_dtype([x], NUMERIC_DTYPES, "numeric")
        if _static_axis(self, x) == 0:
            raise ShapeError(f"{self.name} of an empty axis {self.axis}")
        return TensorType(x.shape[: self.axis] + x.shape[self.axis + 1 :], INT32)

    def ref(self, x):
        return self.numpy_fn(x, axis=self.axis).astype(INT32)

    def grad(self, g, out, x):
        return [None]

    @classmethod
    def example(cls, rng, dims):
        x = np.round(rng.standard_normal((dims[0], dims[1] + 1, 3)), 1)  # ties among the values
        return cls(1 + dims[2] % 2), Example([x], [False], {0: 0})


class Argmax(ArgExtremum):
    name = "argmax"


class Argmin(ArgExtremum):
    name = "argmin"
    numpy_fn = staticmethod(np.argmin)


class Take(Op):
    """np.take(x, ids, axis): x.shape[:axis] + ids.shape + x.shape[axis+1:]."""

    name = "take"
    arity = 2
    may_fail = True  # ids out of range

    def __init__(self, axis: int):
        self.axis = axis

    def infer(self, x, ids):
        _int_type(self.name, ids, "ids")
        _static_axis(self, x)
        return TensorType(x.shape[: self.axis] + ids.shape + x.shape[self.axis + 1 :], x.dtype)

    def ref(self, x, ids):
        _check_labels(self, ids, x.shape[self.axis])
        return np.take(x, ids, axis=self.axis)

    def grad(self, g, out, x, ids):
        return [apply(TakeGrad(self.axis, x.shape), g, ids), None]

    @classmethod
    def example(cls, rng, dims):
        axis = dims[2] % 2
        x = rng.standard_normal((dims[0], dims[1] + 1, 2)) if axis else rng.standard_normal((dims[1] + 2, 3))
        ids = rng.integers(0, x.shape[axis], size=(2, dims[0] + 1)).astype(np.int32)
        return cls(axis), Example([x, ids], [True, False], {0: 0} if axis else {})


class _ScatterAdd(Op):
    """An adjoint that adds g into zeros of x's shape (`in_shape`) where ids point along `axis`."""

    arity = 2
    may_fail = True  # ids out of range

    def __init__(self, axis: int, in_shape: Shape):
        self.axis = axis
        self.in_shape = in_shape


class TakeGrad(_ScatterAdd):
    """The adjoint of Take: g scattered (added) into zeros of x's shape at the ids."""

    name = "take_grad"

    def infer(self, g, ids):
        _int_type(self.name, ids, "ids")
        a, shape = self.axis, self.in_shape
        if g.shape != shape[:a] + ids.shape + shape[a + 1 :]:
            raise ShapeError(f"gradient {format_shape(g.shape)} does not fit ids {format_shape(ids.shape)}")
        return TensorType(shape, same_float_dtype(self.name, [g]))

    def ref(self, g, ids):
        a = self.axis
        _check_labels(self, ids, self.in_shape[a])
        out = np.zeros(_scatter_shape(self.in_shape, a, ids.ndim, g), g.dtype)
        moved = np.moveaxis(out, a, 0)  # a view: adds land in out
        g_moved = np.moveaxis(g.reshape(g.shape[:a] + (ids.size,) + g.shape[a + ids.ndim :]), a, 0)
        np.add.at(moved, ids.reshape(-1), g_moved)
        return out

    def grad(self, gg, out, g, ids):
        return [apply(Take(self.axis), gg, ids), None]

    @classmethod
    def example(cls, rng, dims):
        op, example = Take.example(rng, dims)
        x, ids = example.inputs
        g = np.take(rng.standard_normal(x.shape), ids, axis=op.axis)
        shape = (None,) + x.shape[1:] if op.axis else x.shape
        return cls(op.axis, shape), Example([g, ids], [True, False], {0: 0} if op.axis else {})


class Gather(Op):
    """np.take_along_axis(x, ids, axis) (torch.gather): ids has x's shape except along `axis`,
    and out[..., k, ...] = x[..., ids[..., k, ...], ...]."""

    name = "gather"
    arity = 2
    may_fail = True  # ids out of range

    def __init__(self, axis: int):
        self.axis = axis

    def infer(self, x, ids):
        _int_type(self.name, ids, "ids")
        _static_axis(self, x)
        a = self.axis
        if ids.ndim != x.ndim or ids.shape[:a] + ids.shape[a + 1 :] != x.shape[:a] + x.shape[a + 1 :]:
            raise ShapeError(
                f"ids {format_shape(ids.shape)} must have the shape of x {format_shape(x.shape)} except on axis {a}"
            )
        if ids.shape[a] is None:
            raise ShapeError(f"ids {format_shape(ids.shape)}: axis {a} cannot be the batch dimension")
        return TensorType(ids.shape, x.dtype)

    def ref(self, x, ids):
        _check_labels(self, ids, x.shape[self.axis])
        return np.take_along_axis(x, ids.astype(np.intp), axis=self.axis)

    def grad(self, g, out, x, ids):
        return [apply(GatherGrad(self.axis, x.shape), g, ids), None]

    @classmethod
    def example(cls, rng, dims):
        axis = 1 + dims[2] % 2
        x = rng.standard_normal((dims[0], dims[1] + 1, 3))
        shape = list(x.shape)
        shape[axis] = 2
        ids = rng.integers(0, x.shape[axis], size=shape).astype(np.int32)
        return cls(axis), Example([x, ids], [True, False], {0: 0, 1: 0})


class GatherGrad(_ScatterAdd):
    """The adjoint of Gather: g added into zeros of x's shape where the ids point."""

    name = "gather_grad"

    def infer(self, g, ids):
        _int_type(self.name, ids, "ids")
        if g.shape != ids.shape:
            raise ShapeError(f"gradient {format_shape(g.shape)} does not match ids {format_shape(ids.shape)}")
        return TensorType(self.in_shape, same_float_dtype(self.name, [g]))

    def ref(self, g, ids):
        a = self.axis
        _check_labels(self, ids, self.in_shape[a])
        out = np.zeros(_scatter_shape(self.in_shape, a, 1, g), g.dtype)
        index = list(np.indices(ids.shape, sparse=True))
        index[a] = ids
        np.add.at(out, tuple(index), g)
        return out

    def grad(self, gg, out, g, ids):
        return [apply(Gather(self.axis), gg, ids), None]

    @classmethod
    def example(cls, rng, dims):
        op, example = Gather.example(rng, dims)
        x, ids = example.inputs
        return cls(op.axis, (None,) + x.shape[1:]), Example([rng.standard_normal(ids.shape), ids], [True, False],
                                                            {0: 0, 1: 0})  # fmt: skip


class Cumsum(Op):
    """Running sums along `axis` (from the end when `reverse`)."""

    name = "cumsum"
    arity = 1

    def __init__(self, axis: int, reverse: bool = False):
        self.axis = axis
        self.reverse = reverse

    def infer(self, x):
        same_float_dtype(self.name, [x])
        _static_axis(self, x)
        return x

    def ref(self, x):
        if self.reverse:
            return np.flip(np.cumsum(np.flip(x, self.axis), axis=self.axis), self.axis)
        return np.cumsum(x, axis=self.axis)

    def grad(self, g, out, x):
        return [apply(Cumsum(self.axis, not self.reverse), g)]

    @classmethod
    def example(cls, rng, dims):
        x = rng.standard_normal((dims[0], dims[1] + 1, 3))
        return cls(1 + dims[2] % 2, bool(dims[1] % 2)), Example([x], [True], {0: 0})


def _axis(x, axis: int) -> int:
    return normalize_axes(axis, x.ndim)[0]


@user_call()
def argmax(x: Node, axis: int = -1) -> Node:
    """The position of the largest value along `axis` (the first on ties; a NaN counts as the
    largest, like NumPy's); not differentiable.

    Args:
        x: A float or integer node.
        axis: A static axis (not the batch dimension).

    Returns:
        An int32 node of x's shape without `axis`.

    Raises:
        ShapeError: The axis is out of range, the batch dimension, or empty.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> dg.argmax(x).eval(x=np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]], np.float32))
        array([1, 0], dtype=int32)
    """
    return apply(Argmax(_axis(x, axis)), x)


@user_call()
def argmin(x: Node, axis: int = -1) -> Node:
    """The position of the smallest value along `axis` (see `argmax`).

    Args:
        x: A float or integer node.
        axis: A static axis (not the batch dimension).

    Returns:
        An int32 node of x's shape without `axis`.

    Raises:
        ShapeError: The axis is out of range, the batch dimension, or empty.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> dg.argmin(x).eval(x=np.array([[1.0, 3.0, 0.0], [2.0, 0.0, 0.0]], np.float32))
        array([2, 1], dtype=int32)
    """
    return apply(Argmin(_axis(x, axis)), x)


@user_call()
def take(x: Node, ids: Node, axis: int = 0) -> Node:
    """np.take: the slices of x along `axis` at integer `ids` (of any shape). The gradient adds
    back into x (repeated ids accumulate). Ids are checked before anything is written: one out
    of range stops the step with a ShapeError naming the node and the id.

    Args:
        x: A node.
        ids: An int32 or int64 node.
        axis: A static axis of x.

    Returns:
        A node of shape x.shape[:axis] + ids.shape + x.shape[axis+1:].

    Raises:
        ShapeError: The axis is the batch dimension; (at a call) an id out of range.
        DTypeError: ids are not integers.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> table = g.constant(np.arange(6.0).reshape(3, 2))
        >>> ids = g.input("ids", (None,), dtype="int32")
        >>> dg.take(table, ids).eval(ids=np.array([2, 0, 2], np.int32))
        array([[4., 5.],
               [0., 1.],
               [4., 5.]], dtype=float32)
    """
    return apply(Take(_axis(x, axis)), x, ids)


@user_call()
def gather(x: Node, ids: Node, axis: int) -> Node:
    """np.take_along_axis (torch.gather): ids has x's shape except along `axis`, and the result
    picks x[..., ids[..., k, ...], ...]; the gradient adds back into x. Ids are checked as in `take`.

    Args:
        x: A node.
        ids: An int32 or int64 node of x's shape except along `axis`.
        axis: A static axis of x.

    Returns:
        A node of ids' shape and x's dtype.

    Raises:
        ShapeError: ids do not fit x; (at a call) an id out of range.
        DTypeError: ids are not integers.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> ids = g.input("ids", (None, 1), dtype="int32")
        >>> dg.gather(x, ids, 1).eval(x=np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32),
        ...                           ids=np.array([[2], [0]], np.int32))
        array([[3.],
               [4.]], dtype=float32)
    """
    return apply(Gather(_axis(x, axis)), x, ids)


@user_call()
def cumsum(x: Node, axis: int = -1, reverse: bool = False) -> Node:
    """Running sums along `axis` (from the end when `reverse`); the gradient is the running sum
    of the gradient in the other direction.

    Args:
        x: A float node.
        axis: A static axis.
        reverse: Sum from the last element backwards.

    Returns:
        A node of x's shape and dtype.

    Raises:
        ShapeError: The axis is out of range or the batch dimension.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> dg.cumsum(x).eval(x=np.array([[1.0, 2.0, 3.0]], np.float32))
        array([[1., 3., 6.]], dtype=float32)
    """
    return apply(Cumsum(_axis(x, axis), bool(reverse)), x)

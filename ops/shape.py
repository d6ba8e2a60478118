"""Ops that move data without arithmetic: reshape, transpose, slicing, concat, broadcast."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.errors import DTypeError, GraphError, ShapeError
from ..core.node import Node, apply, user_call
from ..core.op import Example, Op
from ..core.types import Shape, TensorType, broadcast_shapes, format_shape, normalize_axes, normalize_shape


def _static_size(shape: Shape) -> int:
    return math.prod(d for d in shape if d is not None)


def _runtime_shape(shape: Shape, batch: int | None) -> tuple[int, ...]:
    return tuple(batch if d is None else d for d in shape)


def _batch_of(x: np.ndarray, shape: Shape) -> int | None:
    """The batch size bound in `x`, whose declared shape is `shape`."""
    return x.shape[shape.index(None)] if None in shape else None


class Reshape(Op):
    name = "reshape"
    arity = 1
    is_view = True

    def __init__(self, shape: Shape, in_shape: Shape):
        self.shape = shape
        self.in_shape = in_shape

    def infer(self, x):
        if (None in self.shape) != (None in x.shape) or _static_size(self.shape) != _static_size(x.shape):
            raise ShapeError(f"cannot reshape {format_shape(x.shape)} to {format_shape(self.shape)}")
        return TensorType(self.shape, x.dtype)

    def ref(self, x):
        return x.reshape(_runtime_shape(self.shape, _batch_of(x, self.in_shape)))

    def grad(self, g, out, x):
        return [reshape(g, x.shape)]

    @classmethod
    def example(cls, rng, dims):
        x = rng.standard_normal((dims[0], dims[1], 2))
        return cls((None, dims[1] * 2), (None, dims[1], 2)), Example([x], [True], {0: 0})


class Transpose(Op):
    name = "transpose"
    arity = 1

    def __init__(self, perm: tuple[int, ...]):
        self.perm = perm

    def infer(self, x):
        if sorted(self.perm) != list(range(x.ndim)):
            raise ShapeError(f"permutation {self.perm} does not fit a {x.ndim}-D input")
        return TensorType(tuple(x.shape[p] for p in self.perm), x.dtype)

    def ref(self, x):
        return np.transpose(x, self.perm)

    def grad(self, g, out, x):
        return [transpose(g, tuple(np.argsort(self.perm)))]

    @classmethod
    def example(cls, rng, dims):
        x = rng.standard_normal((dims[0], dims[1], 3))
        return cls((2, 0, 1)), Example([x], [True], {0: 0})


def _normalize_index(index: Any, shape: Shape) -> tuple:
    """Basic indexing as a tuple with one entry per input axis: an int, or (start, stop, step)."""
    if not isinstance(index, tuple):
        index = (index,)
    if sum(i is Ellipsis for i in index) > 1:
        raise ShapeError("only one Ellipsis allowed in an index")
    if Ellipsis in index:
        at = index.index(Ellipsis)
        fill = len(shape) - (len(index) - 1)
        index = index[:at] + (slice(None),) * fill + index[at + 1 :]
    if len(index) > len(shape):
        raise ShapeError(f"too many indices ({len(index)}) for shape {format_shape(shape)}")
    index = index + (slice(None),) * (len(shape) - len(index))
    out = []
    for axis, (item, dim) in enumerate(zip(index, shape)):
        if dim is None:
            if item != slice(None):
                raise ShapeError(f"axis {axis} is the batch dimension; only ':' may index it")
            out.append((0, None, 1))
        elif isinstance(item, (int, np.integer)):
            if not -dim <= item < dim:
                raise ShapeError(f"index {item} out of range for axis {axis} of size {dim}")
            out.append(int(item) % dim)
        elif isinstance(item, slice):
            out.append(item.indices(dim))
        else:
            raise GraphError(f"unsupported index {item!r}: use ints, slices and '...'")
    return tuple(out)


def _numpy_index(index: tuple) -> tuple:
    """The NumPy index of a normalized one. slice.indices() gives stop -1 for a negative step that
    runs through element 0; passed back to NumPy, -1 would mean the last element (an empty slice)."""
    return tuple(
        s if isinstance(s, int) else slice(s[0], None if s[1] is None or s[1] < 0 else s[1], s[2]) for s in index
    )


def _slice_dim(spec, dim):
    if dim is None:
        return None
    return len(range(*spec))


class Slice(Op):
    name = "slice"
    arity = 1

    def __init__(self, index: tuple):
        self.index = index

    def infer(self, x):
        shape = tuple(_slice_dim(s, d) for s, d in zip(self.index, x.shape) if not isinstance(s, int))
        return TensorType(shape, x.dtype)

    def ref(self, x):
        return x[_numpy_index(self.index)]

    def grad(self, g, out, x):
        return [apply(SliceGrad(self.index, x.shape), g)]

    @classmethod
    def example(cls, rng, dims):
        x = rng.standard_normal((dims[0], dims[1] + 2, 3))
        return cls(((0, None, 1), (1, dims[1] + 2, 2), 1)), Example([x], [True], {0: 0})


class SliceGrad(Op):
    """Scatter `g` into zeros of the sliced input's shape (the adjoint of Slice)."""

    name = "slice_grad"
    arity = 1

    def __init__(self, index: tuple, in_shape: Shape):
        self.index = index
        self.in_shape = in_shape

    def infer(self, g):
        return TensorType(self.in_shape, g.dtype)

    def ref(self, g):
        kept = [d for s, d in zip(self.index, self.in_shape) if not isinstance(s, int)]
        batch = g.shape[kept.index(None)] if None in kept else None
        out = np.zeros(_runtime_shape(self.in_shape, batch), g.dtype)
        out[_numpy_index(self.index)] = g
        return out

    def grad(self, gg, out, g):
        return [apply(Slice(self.index), gg)]

    @classmethod
    def example(cls, rng, dims):
        index = ((0, None, 1), (1, dims[1] + 2, 2), 1)
        in_shape = (None, dims[1] + 2, 3)
        g = rng.standard_normal((dims[0], len(range(1, dims[1] + 2, 2))))
        return cls(index, in_shape), Example([g], [True], {0: 0})


def _region(index: tuple, shape: Shape) -> list:
    """Per axis, the set of positions a slice index touches (None: the whole batch axis)."""
    return [
        None if d is None else {spec} if isinstance(spec, int) else set(range(*spec)) for spec, d in zip(index, shape)
    ]


def disjoint(a: tuple, b: tuple, shape: Shape) -> bool:
    """Whether two slice indices of `shape` touch no common element."""
    return any(x is not None and y is not None and not (x & y) for x, y in zip(_region(a, shape), _region(b, shape)))


class AssembleSlices(Op):
    """Gradients of disjoint slices of one tensor, written into their regions (zeros elsewhere):
    what add(slice_grad(g1), slice_grad(g2), ...) computes, without a full-size buffer per slice.
    Simplification creates it (e.g. for the per-time-step slices of an unrolled RNN)."""

    name = "assemble_slices"

    def __init__(self, indices: tuple, in_shape: Shape):
        self.indices = indices
        self.in_shape = in_shape

    def infer(self, *gs):
        for index, g in zip(self.indices, gs):
            expected = Slice(index).infer(TensorType(self.in_shape, g.dtype))
            if g.shape != expected.shape:
                raise ShapeError(f"slice gradient {format_shape(g.shape)} does not fit {format_shape(expected.shape)}")
        if len(gs) != len(self.indices):
            raise ShapeError(f"{len(self.indices)} slices but {len(gs)} gradients")
        return TensorType(self.in_shape, gs[0].dtype)

    def ref(self, *gs):
        return sum(SliceGrad(index, self.in_shape).ref(g) for index, g in zip(self.indices, gs))

    def grad(self, gg, out, *gs):
        return [apply(Slice(index), gg) for index in self.indices]

    def covers_all(self) -> bool:
        total = sum(math.prod(len(r) for r in _region(i, self.in_shape) if r is not None) for i in self.indices)
        return total == _static_size(self.in_shape)

    @classmethod
    def example(cls, rng, dims):
        n = dims[1] + 2
        indices = (((0, None, 1), (0, 1, 1)), ((0, None, 1), (1, n, 2)))
        gs = [rng.standard_normal((dims[0], 1)), rng.standard_normal((dims[0], len(range(1, n, 2))))]
        return cls(indices, (None, n)), Example(gs, [True, True], {0: 0, 1: 0})


class Concat(Op):
    name = "concat"

    def __init__(self, axis: int):
        self.axis = axis

    def infer(self, *xs):
        first = xs[0]
        axis = self.axis
        dtypes = {x.dtype for x in xs}
        if len(dtypes) > 1:
            raise DTypeError(f"mixed dtypes {sorted(map(str, dtypes))}")
        for x in xs:
            if x.ndim != first.ndim or any(a != b for i, (a, b) in enumerate(zip(x.shape, first.shape)) if i != axis):
                raise ShapeError(f"shapes differ outside axis {axis}")
            if x.shape[axis] is None:
                raise ShapeError("cannot concatenate along the batch dimension")
        total = sum(x.shape[axis] for x in xs)
        return TensorType(first.shape[:axis] + (total,) + first.shape[axis + 1 :], first.dtype)

    def ref(self, *xs):
        return np.concatenate(xs, axis=self.axis)

    def grad(self, g, out, *xs):
        grads, start = [], 0
        for x in xs:
            stop = start + x.shape[self.axis]
            index = tuple((start, stop, 1) if i == self.axis else (0, d, 1) for i, d in enumerate(g.shape))
            grads.append(apply(Slice(index), g))
            start = stop
        return grads

    @classmethod
    def example(cls, rng, dims):
        xs = [rng.standard_normal((dims[0], d)) for d in (dims[1], 2, 1)]
        return cls(1), Example(xs, [True] * 3, {0: 0, 1: 0, 2: 0})


class BroadcastLike(Op):
    """x broadcast to the (runtime) shape of `like`; `like` is read for its shape only."""

    name = "broadcast_like"
    arity = 2

    def infer(self, x, like):
        if broadcast_shapes([x.shape, like.shape]) != like.shape:
            raise ShapeError(f"cannot broadcast {format_shape(x.shape)} to {format_shape(like.shape)}")
        return TensorType(like.shape, x.dtype)

    def ref(self, x, like):
        return np.broadcast_to(x, like.shape).copy()

    shape_only_inputs = (1,)

    def grad(self, g, out, x, like):
        return [g, None]  # autodiff sums g back to x's shape

    @classmethod
    def example(cls, rng, dims):
        x, like = rng.standard_normal((dims[1],)), rng.standard_normal((dims[0], dims[1]))
        return cls(), Example([x, like], [True, False], {1: 0})


class SumTo(Op):
    """Sum a broadcast result back to `shape` (the adjoint of broadcasting)."""

    name = "sum_to"
    arity = 1
    combine = "add"
    keeps_reduced_axes = True  # the output's axes align with the input's trailing axes

    def __init__(self, shape: Shape):
        self.shape = shape

    def infer(self, x):
        if broadcast_shapes([x.shape, self.shape]) != x.shape:
            raise ShapeError(f"cannot sum {format_shape(x.shape)} to {format_shape(self.shape)}")
        return TensorType(self.shape, x.dtype)

    def ref(self, x):
        lead = x.ndim - len(self.shape)
        return np.sum(x, axis=self.reduced_axes(x.shape)).reshape(
            tuple(x.shape[lead + i] if d is None else d for i, d in enumerate(self.shape))
        )

    def grad(self, g, out, x):
        return [apply(BroadcastLike(), g, x)]

    def reduced_axes(self, in_shape: Shape) -> tuple[int, ...]:
        lead = len(in_shape) - len(self.shape)
        return tuple(range(lead)) + tuple(
            lead + i for i, d in enumerate(self.shape) if d == 1 and in_shape[lead + i] != 1
        )

    @classmethod
    def example(cls, rng, dims):
        x = rng.standard_normal((dims[0], dims[1], 2))
        return cls((dims[1], 1)), Example([x], [True], {})


@user_call()
def reshape(x: Node, shape: Sequence[int | None]) -> Node:
    """The same values with another shape (no copy: native code reads the input's buffer).

    Args:
        x: A node of any dtype.
        shape: The new shape: None keeps the batch dimension (at most one None, where x has
            its batch), -1 infers one static dimension.

    Returns:
        A node of x's dtype with `shape`.

    Raises:
        ShapeError: The sizes differ, or the batch dimension would move into another axis.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2, 3))
        >>> y = dg.reshape(x, (None, -1))
        >>> y.shape
        (None, 6)
        >>> y.eval(x=np.arange(6, dtype=np.float32).reshape(1, 2, 3))
        array([[0., 1., 2., 3., 4., 5.]], dtype=float32)
    """
    shape = tuple(shape)
    if -1 in shape:
        known = _static_size(tuple(d for d in shape if d != -1))
        missing = _static_size(x.shape) // max(known, 1)
        shape = tuple(missing if d == -1 else d for d in shape)
    return apply(Reshape(normalize_shape(shape), x.shape), x)


@user_call()
def transpose(x: Node, perm: Sequence[int] | None = None) -> Node:
    """The axes of x permuted, like `np.transpose` (`x.T` reverses them). A 2-D transpose that
    feeds a matmul costs nothing: it becomes a GEMM flag.

    Args:
        x: A node of any dtype.
        perm: The new order of the axes (default: reversed).

    Returns:
        A node of x's dtype whose axis i is x's axis perm[i].

    Raises:
        ShapeError: perm is not a permutation of x's axes.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2, 3))
        >>> dg.transpose(x, (0, 2, 1)).shape
        (None, 3, 2)
    """
    perm = tuple(reversed(range(x.ndim))) if perm is None else tuple(int(p) % max(x.ndim, 1) for p in perm)
    return apply(Transpose(perm), x)


@user_call()
def getitem(x: Node, index: Any) -> Node:
    """`x[index]`: basic indexing with ints, slices (with steps), `...` and `None`-free tuples;
    the batch axis takes only `:`. The gradient scatters back into zeros.

    Args:
        x: A node of any dtype.
        index: An int, a slice, `...` or a tuple of them, as NumPy's basic indexing.

    Returns:
        A node of x's dtype: an int drops its axis, a slice keeps it.

    Raises:
        ShapeError: An index out of range, or an int or a bounded slice on the batch axis.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 4))
        >>> x[:, 1:3].eval(x=np.array([[0.0, 1.0, 2.0, 3.0]], np.float32))
        array([[1., 2.]], dtype=float32)
    """
    return apply(Slice(_normalize_index(index, x.shape)), x)


@user_call()
def concat(xs: Sequence[Node], axis: int = 0) -> Node:
    """The inputs joined along `axis`, like `np.concatenate`.

    Args:
        xs: Nodes of one dtype whose shapes agree outside `axis`.
        axis: A static axis (not the batch axis); negative counts from the end.

    Returns:
        A node whose `axis` is the sum of the inputs' sizes along it.

    Raises:
        GraphError: No input.
        ShapeError: Shapes that differ outside `axis`, or `axis` is the batch axis.
        DTypeError: Mixed dtypes.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> a, b = g.input("a", (None, 2)), g.input("b", (None, 1))
        >>> dg.concat([a, b], axis=1).eval(a=np.ones((1, 2), np.float32), b=np.zeros((1, 1), np.float32))
        array([[1., 1., 0.]], dtype=float32)
    """
    xs = list(xs)
    if not xs:
        raise GraphError("concat needs at least one input")
    return apply(Concat(normalize_axes(axis, xs[0].ndim)[0]), *xs)


@user_call()
def broadcast_like(x: Node, like: Node) -> Node:
    """x broadcast to the run-time shape of `like` (used by gradient rules)."""
    return apply(BroadcastLike(), x, like)


@user_call()
def sum_to(x: Node, shape: Shape) -> Node:
    """x summed back to `shape`, the adjoint of broadcasting (used by autodiff)."""
    return apply(SumTo(tuple(shape)), x)


class BroadcastTo(Op):
    """x broadcast to a fixed `shape` (NumPy's broadcast_to); a None in `shape` must meet x's own
    batch dimension (to broadcast over a batch x lacks, use broadcast_like)."""

    name = "broadcast_to"
    arity = 1

    def __init__(self, shape: Shape):
        self.shape = shape

    def infer(self, x):
        lead = len(self.shape) - x.ndim
        if lead < 0 or broadcast_shapes([x.shape, self.shape]) != self.shape:
            raise ShapeError(f"cannot broadcast {format_shape(x.shape)} to {format_shape(self.shape)}")
        if None in self.shape and (self.shape.index(None) < lead or x.shape[self.shape.index(None) - lead] is not None):
            raise ShapeError(
                f"the batch dimension of {format_shape(self.shape)} must be x's own ({format_shape(x.shape)}); "
                "to broadcast over another node's batch use broadcast_like"
            )
        return TensorType(self.shape, x.dtype)

    def ref(self, x):
        lead = len(self.shape) - x.ndim
        batch = x.shape[self.shape.index(None) - lead] if None in self.shape else None
        return np.broadcast_to(x, _runtime_shape(self.shape, batch)).copy()

    def grad(self, g, out, x):
        return [g]  # autodiff sums g back to x's shape

    @classmethod
    def example(cls, rng, dims):
        x = rng.standard_normal((dims[0], 1, dims[1]))
        return cls((None, 3, dims[1])), Example([x], [True], {0: 0})


@user_call()
def broadcast_to(x: Node, shape: Sequence[int | None]) -> Node:
    """x broadcast to `shape` (NumPy's broadcast_to); a None in `shape` must be x's own batch
    dimension (`broadcast_like` broadcasts over another node's batch). The gradient sums back.

    Args:
        x: A node.
        shape: The target shape.

    Returns:
        A node of `shape` and x's dtype.

    Raises:
        ShapeError: x does not broadcast to `shape`.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 1))
        >>> dg.broadcast_to(x, (None, 3)).eval(x=np.array([[1.0], [2.0]], np.float32))
        array([[1., 1., 1.],
               [2., 2., 2.]], dtype=float32)
    """
    return apply(BroadcastTo(normalize_shape(shape)), x)


@user_call()
def expand_dims(x: Node, axis: int) -> Node:
    """x with a new axis of size 1 at `axis` (a view of the same data, no copy).

    Args:
        x: A node.
        axis: Where the new axis goes (negative counts from the end of the result).

    Returns:
        A node with one more axis.

    Raises:
        ShapeError: The axis is out of range.

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> dg.expand_dims(g.input("x", (None, 3)), -1).shape
        (None, 3, 1)
    """
    axis = normalize_axes(axis, x.ndim + 1)[0]
    return reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])


@user_call()
def squeeze(x: Node, axis: int | Sequence[int] | None = None) -> Node:
    """x without the given size-1 axes (all of them by default); a view, no copy.

    Args:
        x: A node.
        axis: The axes to drop (each of size 1), or None for every size-1 axis.

    Returns:
        A node with those axes gone.

    Raises:
        ShapeError: An axis is out of range or not of size 1.

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> dg.squeeze(g.input("x", (None, 1, 3))).shape
        (None, 3)
    """
    axes = normalize_axes(axis, x.ndim) if axis is not None else tuple(a for a, d in enumerate(x.shape) if d == 1)
    for a in axes:
        if x.shape[a] != 1:
            raise ShapeError(f"squeeze of {x.describe()}: axis {a} has size {x.shape[a]}, not 1")
    return reshape(x, tuple(d for a, d in enumerate(x.shape) if a not in axes))

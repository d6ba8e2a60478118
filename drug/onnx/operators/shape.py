"""Ops that move data: reshapes (the batch marker and merged batches), transposes, slicing,
concatenation, broadcasting, gathering."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ...core.errors import ShapeError
from ...core.types import broadcast_shapes
from ...ops import (
    add,
    broadcast_like,
    concat,
    less,
    reshape,
    take,
    transpose,
    where,
)
from ..context import BATCH, Merged
from .registry import axis_of, converts


@converts("Reshape")
def _reshape(ctx):
    target = ctx.ints(1, "shape")
    merged = ctx.merged(0)
    if merged is not None:
        return _reshape_merged(ctx, merged, target)
    x = ctx.input(0)
    shape = []
    for i, d in enumerate(target):
        if d == BATCH:
            shape.append(None)
        elif d == 0 and not ctx.attr("allowzero", 0):
            if i >= x.ndim:
                raise ctx.fail(f"target {target} copies axis {i}, which {x.describe()} does not have")
            shape.append(x.shape[i])
        else:
            shape.append(d)
    if None in x.shape and None not in shape and shape.count(-1) == 1:
        # [-1, 72] on (batch, 8, 3, 3): the inferred axis is the batch when the other sizes account
        # for every non-batch element
        if math.prod(d for d in shape if d != -1) == math.prod(d for d in x.shape if d is not None):
            shape[shape.index(-1)] = None
        elif x.shape[0] is None and shape[0] == -1 and x.shape[-(len(shape) - 1) :] == tuple(shape[1:]):
            return Merged(x, x.ndim - len(shape) + 1)  # (batch, heads, t, d) -> (batch * heads, t, d)
    if None in x.shape and None not in shape:
        raise ctx.fail(
            f"reshaping {x.describe()} to {target} merges the batch with other axes in a way drug does not "
            f"follow; drug keeps the batch an axis of its own"
        )
    return reshape(x, shape)


def _reshape_merged(ctx, merged: Merged, target: list[int]):
    """A value merging the batch with `lead` axes, reshaped: apart again ([batch, *lead, ...]), or
    merged the same way with other trailing sizes ([-1, ...])."""
    node, lead = merged.node, list(merged.node.shape[1 : merged.axes])
    trailing = math.prod(merged.node.shape[merged.axes :])
    if target[: merged.axes] == [BATCH, *lead] and math.prod(target[merged.axes :]) == trailing:
        return reshape(node, (None, *lead, *target[merged.axes :]))
    if target[0] == -1 and -1 not in target[1:] and 0 not in target and math.prod(target[1:]) == trailing:
        return merged.with_node(reshape(node, (None, *lead, *target[1:])))
    raise ctx.fail(f"it reshapes a value merging the batch with axes {lead} to {target}, which drug does not follow")


@converts("Transpose")
def _transpose(ctx):
    perm = ctx.attr("perm")
    merged = ctx.merged(0)
    if merged is not None:
        if perm is None or perm[0] != 0:
            raise ctx.fail("it moves the first axis, which merges the batch with other axes")
        shift = merged.axes - 1
        return merged.with_node(transpose(merged.node, list(range(merged.axes)) + [p + shift for p in perm[1:]]))
    x = ctx.input(0)
    return transpose(x, None if perm is None else list(perm))


def _merged(ctx, dims: Sequence[int | None]) -> int | None:
    """The size of axes flattened into one: None if the batch is among them (alone, with size-1 axes)."""
    if None not in dims:
        return math.prod(dims)
    if math.prod(d for d in dims if d is not None) != 1:
        raise ctx.fail(
            f"it would merge the batch with other axes {tuple(dims)}; drug keeps the batch an axis of its own"
        )
    return None


@converts("Flatten")
def _flatten(ctx):
    x = ctx.input(0)
    axis = ctx.attr("axis", 1)
    axis = axis % x.ndim if axis != x.ndim else axis
    return reshape(x, (_merged(ctx, x.shape[:axis]), _merged(ctx, x.shape[axis:])))


@converts("Squeeze")
def _squeeze(ctx):
    x = ctx.input(0)
    if ctx.has(1):
        axes = {axis_of(a, x.ndim, ctx) for a in ctx.ints(1, "axes")}
    else:
        axes = {i for i, d in enumerate(x.shape) if d == 1}
    if any(x.shape[a] != 1 for a in axes):
        raise ctx.fail(f"cannot squeeze axes {sorted(axes)} of {x.describe()}: they must have size 1")
    return reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes))


@converts("Unsqueeze")
def _unsqueeze(ctx):
    x = ctx.input(0)
    rank = x.ndim + len(ctx.ints(1, "axes"))
    axes = {axis_of(a, rank, ctx) for a in ctx.ints(1, "axes")}
    dims = iter(x.shape)
    return reshape(x, tuple(1 if i in axes else next(dims) for i in range(rank)))


@converts("Concat")
def _concat(ctx):
    xs = ctx.inputs()
    return concat(xs, axis_of(ctx.attr("axis"), xs[0].ndim, ctx))


@converts("Slice")
def _slice(ctx):
    x = ctx.input(0)
    starts, ends = ctx.ints(1, "starts"), ctx.ints(2, "ends")
    axes = ctx.ints(3, "axes") if ctx.has(3) else list(range(len(starts)))
    steps = ctx.ints(4, "steps") if ctx.has(4) else [1] * len(starts)
    index: list[slice] = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis_of(axis, x.ndim, ctx)
        if step == 0:
            raise ctx.fail("a slice step of 0")
        if x.shape[axis] is None:
            if (start, step) != (0, 1) or end < np.iinfo(np.int32).max:
                raise ctx.fail(f"it slices the batch axis {axis} ({start}:{end}:{step}); drug keeps every example")
            continue
        index[axis] = _onnx_slice(start, end, step, x.shape[axis])
    return x[tuple(index)]


def _onnx_slice(start: int, end: int, step: int, size: int) -> slice:
    """ONNX's clamping (a negative start below -size clamps to 0 even when stepping backwards, where
    Python's slices would give nothing), as a Python slice."""
    start, end = start + size if start < 0 else start, end + size if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), size), min(max(end, 0), size), step)
    start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
    return slice(start, None if end < 0 else end, step)


@converts("Expand")
def _expand(ctx):
    """Broadcast to a shape: known sizes, or the Shape of a node (then the batch may be among them)."""
    x = ctx.input(0)
    like = ctx.shape_source(1)
    target = [None if d == BATCH else d for d in ctx.ints(1, "shape")]
    try:
        out_shape = broadcast_shapes([x.shape, tuple(target)])
    except ShapeError:
        raise ctx.fail(f"{x.describe()} does not broadcast to {target}") from None
    if out_shape == x.shape:
        return x
    if like is not None and out_shape == like.shape:
        return broadcast_like(x, like)
    if None in out_shape and None not in x.shape:
        raise ctx.fail(f"it broadcasts {x.describe()} to a batch of {target} that is not the Shape of one value")
    zeros = np.zeros(tuple(1 if d is None else d for d in out_shape), x.dtype)  # x carries the batch
    return add(x, ctx.graph.constant(zeros, dtype=str(x.dtype)))


@converts("Split")
def _split(ctx):
    x = ctx.input(0)
    axis = axis_of(ctx.attr("axis", 0), x.ndim, ctx)
    size = x.shape[axis]
    if size is None:
        raise ctx.fail(f"it splits the batch axis {axis}")
    count = len(ctx.proto.output)
    if ctx.has(1):
        sizes = ctx.ints(1, "split")
    else:  # equal parts; since opset 18 the last may be smaller (num_outputs)
        part = -(-size // count)
        sizes = [min(part, size - i * part) for i in range(count)]
    if sum(sizes) != size or len(sizes) != count or min(sizes) < 0:
        raise ctx.fail(f"sizes {sizes} do not split axis {axis} of size {size} into {count} outputs")
    lead = (slice(None),) * axis
    starts = np.cumsum([0] + sizes[:-1])
    return [x[lead + (slice(int(s), int(s) + n),)] for s, n in zip(starts, sizes)]


@converts("Gather")
def _gather(ctx):
    """Indices known now: slices of the data; indices computed at run time: drug's take."""
    x = ctx.input(0)
    axis = axis_of(ctx.attr("axis", 0), x.ndim, ctx)
    ids = ctx.known(1)
    if ids is None:  # negative indices count from the end, as in ONNX
        ids, size = ctx.input(1), x.shape[axis]
        wrapped = where(less(ids, ctx.constant(0, ids)), add(ids, ctx.constant(size, ids)), ids)
        return take(x, wrapped, axis)
    size = x.shape[axis]
    if size is None:
        raise ctx.fail(f"it gathers along the batch axis {axis}")
    ids = np.where(ids < 0, ids + size, ids)
    if np.any((ids < 0) | (ids >= size)):
        raise ctx.fail(f"indices {ids.tolist()} are out of range for axis {axis} of size {size}")
    lead = (slice(None),) * axis
    if ids.ndim == 0:
        return x[lead + (int(ids),)]
    picked = [x[lead + (slice(int(i), int(i) + 1),)] for i in ids.reshape(-1)]
    rows = picked[0] if len(picked) == 1 else concat(picked, axis)
    return reshape(rows, x.shape[:axis] + ids.shape + x.shape[axis + 1 :])

"""Kernels of the ops that move data without arithmetic: loop nests over the contiguous side of a
copy, the other side addressed with strides. Offsets carry no `nuw` flag where a slice step may be
negative."""

from __future__ import annotations

import math

from llvmlite import ir

from ....core.node import Node
from ....core.types import Shape
from ....ops.shape import AssembleSlices, Concat, Slice, SliceGrad, Transpose
from ..irutil import I64, PTR, element_count, for_range, i64, linear_offset, llvm_type, loop_nest
from ..irutil import row_major_strides as strides_of
from ..lowering import Rebase, kernel


def _times(b: ir.IRBuilder, x: ir.Value, y: ir.Value, name: str = "") -> ir.Value:
    """x * y for i64 values (signed; either may be negative), folded when a factor is a constant."""
    if isinstance(x, ir.Constant) and isinstance(y, ir.Constant):
        return i64(x.constant * y.constant)
    for a, c in ((x, y), (y, x)):
        if isinstance(c, ir.Constant) and c.constant in (0, 1):
            return a if c.constant == 1 else i64(0)
    return b.mul(x, y, flags=("nsw",), name=name)


def _plus(b: ir.IRBuilder, x: ir.Value, y: ir.Value, name: str = "") -> ir.Value:
    if isinstance(x, ir.Constant) and isinstance(y, ir.Constant):
        return i64(x.constant + y.constant)
    for a, c in ((x, y), (y, x)):
        if isinstance(c, ir.Constant) and c.constant == 0:
            return a
    return b.add(x, y, flags=("nsw",), name=name)


def _contiguous_offset(k, node, index: list[ir.Value]) -> ir.Value:
    return linear_offset(k.b, list(zip(index, strides_of(k.b, node.shape, k.batch))))


def _slice_parts(k, spec: tuple, shape: Shape) -> tuple[ir.Value, list[ir.Value]]:
    """Where slice `spec` of a buffer of `shape` starts (the sum over axes of start * stride, or
    fixed * stride for an int index), and per kept axis the distance between its elements."""
    b = k.b
    base: ir.Value = i64(0)
    steps = []
    for item, stride in zip(spec, strides_of(b, shape, k.batch)):
        start, step = (item, None) if isinstance(item, int) else (item[0], item[2])
        base = _plus(b, base, _times(b, i64(start), stride, "start"), "offset")
        if step is not None:
            steps.append(_times(b, i64(step), stride, "step"))
    return base, steps


def _sliced_offset(k, spec: tuple, shape: Shape, index: list[ir.Value], base: ir.Value | None = None) -> ir.Value:
    """Offset in a buffer of `shape` of the element that slice `spec` maps position `index` to
    (`base`: where the slice starts, if not where `spec` says)."""
    start, steps = _slice_parts(k, spec, shape)
    offset = start if base is None else base
    for i, step in zip(index, steps):
        offset = _plus(k.b, offset, _times(k.b, i, step, "term"), "offset")
    return offset


def _runs(k, items: list, key) -> list[list]:
    """Consecutive items with equal keys, in order (one by one when bounds are checked: the
    checks follow each pointer to its argument, not through a table)."""
    runs: list[list] = []
    for item in items:
        if runs and key(runs[-1][0]) == key(item) and not k.builder.bounds_check:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def _table(b: ir.IRBuilder, values: list[ir.Value], type_: ir.Type, name: str) -> ir.Value:
    """A stack array of `values` (pointers or i64)."""
    array = b.alloca(type_, size=len(values), name=name)
    for i, value in enumerate(values):
        b.store(value, b.gep(array, [i64(i)], source_etype=type_))
    return array


def _entry(b: ir.IRBuilder, array: ir.Value, type_: ir.Type, index: ir.Value, name: str) -> ir.Value:
    return b.load(b.gep(array, [index], source_etype=type_), typ=type_, name=name)


MEMCPY_MIN = 16  # elements: shorter contiguous runs are copied element by element


def _copy_slice(k, spec: tuple, shape: Shape, dense: Node, sliced: ir.Value, packed: ir.Value,
                to_slice: bool, base: ir.Value | None = None) -> bool:  # fmt: skip
    """Copy between `packed` (a contiguous tensor of `dense`'s shape) and slice `spec` of the
    tensor of `shape` at `sliced`, in either direction. Rows whose last axis is a contiguous
    range go by memcpy: as fast, and much less code for LLVM to compile than a vectorized loop.
    Returns whether it copied by memcpy."""
    b, real = k.b, llvm_type(dense.dtype)
    dims = k.dims(dense)
    last = spec[-1] if spec else 0
    rows = bool(dims) and len(spec) == len(shape) and not isinstance(last, int) and last[2] == 1
    rows = rows and isinstance(dims[-1], ir.Constant) and dims[-1].constant >= MEMCPY_MIN
    outer = dims[:-1] if rows else dims
    with loop_nest(b, outer) as position:
        index = position + [i64(0)] if rows else position
        dense_at = b.gep(packed, [_contiguous_offset(k, dense, index)], source_etype=real, inbounds=True)
        sliced_at = b.gep(sliced, [_sliced_offset(k, spec, shape, index, base)], source_etype=real, inbounds=True)
        source, target = (dense_at, sliced_at) if to_slice else (sliced_at, dense_at)
        if rows:
            memcpy = b.module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
            nbytes = i64(dims[-1].constant * dense.dtype.itemsize)
            b.call(memcpy, [target, source, nbytes, ir.Constant(ir.IntType(1), 0)])
        else:
            b.store(b.load(source, typ=real, name="value"), target)
    return rows


def _zero(k, node) -> None:
    zero = ir.Constant(llvm_type(node.dtype), 0.0 if node.dtype.kind == "f" else 0)
    with for_range(k.b, k.count(node), "zero") as i:
        k.store(node, i, zero)


@kernel(Transpose)
def _transpose(k, node):
    """Walk the output in order; output axis a reads input axis perm[a]."""
    (x,) = node.inputs
    source = strides_of(k.b, x.shape, k.batch)
    with loop_nest(k.b, k.dims(node)) as index:
        offset = linear_offset(k.b, [(i, source[p]) for i, p in zip(index, node.op.perm)])
        k.store(node, _contiguous_offset(k, node, index), k.load(x, offset))


def _slice_start(node: Node) -> Rebase:
    """Where a slice starts in its input when that is a fixed element (no axis of the batch's
    size after an axis it starts into), keyed by the rest of its spec: an unrolled RNN's time
    steps then share one kernel."""
    (x,) = node.inputs
    start = 0
    for axis, item in enumerate(node.op.index):
        first, after = (item if isinstance(item, int) else item[0]), x.shape[axis + 1 :]
        if first:
            if None in after:
                return None
            start += first * math.prod(after)
    return tuple(None if isinstance(item, int) else item[2] for item in node.op.index), {0: start}


@kernel(Slice, rebase=_slice_start)
def _slice(k, node):
    (x,) = node.inputs
    start = i64(0) if k.rebased else None
    if _copy_slice(k, node.op.index, x.shape, node, k.ptr(x), k.ptr(node), to_slice=False, base=start):
        k.copies_only()


@kernel(SliceGrad)
def _slice_grad(k, node):
    """Zero the output, then write `g` where Slice would have read it."""
    (g,) = node.inputs
    _zero(k, node)
    _copy_slice(k, node.op.index, node.op.in_shape, g, k.ptr(node), k.ptr(g), to_slice=True)


@kernel(AssembleSlices)
def _assemble_slices(k, node):
    """Zero what no slice covers (nothing, when they tile the tensor), then copy each slice.
    Consecutive slices alike but for where they start (an unrolled RNN's time steps) share one
    loop over a table of their pointers and starts: the code does not grow with their number."""
    op, b = node.op, k.b
    if not op.covers_all():
        _zero(k, node)

    def structure(item):
        spec, g = item
        return g.shape, tuple(None if isinstance(s, int) else s[2] for s in spec)

    for run in _runs(k, list(zip(op.indices, node.inputs)), structure):
        spec, first = run[0]
        if len(run) == 1:
            _copy_slice(k, spec, op.in_shape, first, k.ptr(node), k.ptr(first), to_slice=True)
            continue
        pointers = _table(b, [k.ptr(g) for _, g in run], PTR, "slices")
        starts = _table(b, [_slice_parts(k, s, op.in_shape)[0] for s, _ in run], I64, "starts")
        with for_range(b, i64(len(run)), "slice") as i:
            source, start = _entry(b, pointers, PTR, i, "slice"), _entry(b, starts, I64, i, "start")
            _copy_slice(k, spec, op.in_shape, first, k.ptr(node), source, to_slice=True, base=start)


@kernel(Concat)
def _concat(k, node):
    """Input x fills columns [start, start + x.shape[axis]) of every row of the output, where a
    row is everything before `axis` and a column one element of the trailing axes. Consecutive
    inputs of one shape share one loop over a table of their pointers."""
    b, axis, real = k.b, node.op.axis, llvm_type(node.dtype)  # rows by memcpy
    outer = element_count(b, node.shape[:axis], k.batch)
    inner = element_count(b, node.shape[axis + 1 :], k.batch)
    row = element_count(b, node.shape[axis:], k.batch)
    start = 0
    for run in _runs(k, list(node.inputs), lambda x: x.shape):
        x = run[0]
        width = element_count(b, x.shape[axis:], k.batch)
        pointers = _table(b, [k.ptr(x) for x in run], PTR, "inputs") if len(run) > 1 else None
        with for_range(b, i64(len(run)), "input") as i:
            source_base = k.ptr(x) if pointers is None else _entry(b, pointers, PTR, i, "input")
            column = b.add(i64(start), b.mul(i, i64(x.shape[axis])), name="column")
            first = b.mul(column, inner, name="first")
            with for_range(b, outer, "row") as r:
                source = b.gep(source_base, [_times(b, r, width, "source")], source_etype=real, inbounds=True)
                target = k.element(node, _plus(b, _times(b, r, row, "row_offset"), first, "target"))
                memcpy = b.module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
                nbytes = b.mul(width, i64(node.dtype.itemsize), name="row_bytes")
                b.call(memcpy, [target, source, nbytes, ir.Constant(ir.IntType(1), 0)])
        start += x.shape[axis] * len(run)

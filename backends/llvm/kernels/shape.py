"""Kernels of the ops that move data without arithmetic: loop nests over the contiguous side of a
copy, the other side addressed with strides. Offsets carry no `nuw` flag where a slice step may be
negative."""

from __future__ import annotations

from llvmlite import ir

from ....core.types import Shape
from ....ops.shape import AssembleSlices, Concat, Slice, SliceGrad, Transpose
from ..irutil import element_count, for_range, i64, linear_offset, llvm_type, loop_nest
from ..irutil import row_major_strides as strides_of
from ..lowering import kernel


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


def _sliced_offset(k, spec: tuple, shape: Shape, index: list[ir.Value]) -> ir.Value:
    """Offset in a buffer of `shape` of the element that slice `spec` maps position `index` to:
    the sum over axes of (start + i * step) * stride, or fixed * stride for an int index."""
    b = k.b
    offset: ir.Value = i64(0)
    kept = iter(index)
    for item, stride in zip(spec, strides_of(b, shape, k.batch)):
        if isinstance(item, int):
            offset = _plus(b, offset, _times(b, i64(item), stride, "fixed"), "offset")
            continue
        start, _, step = item
        offset = _plus(b, offset, _times(b, i64(start), stride, "start"), "offset")
        offset = _plus(b, offset, _times(b, next(kept), _times(b, i64(step), stride, "step"), "term"), "offset")
    return offset


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


@kernel(Slice)
def _slice(k, node):
    (x,) = node.inputs
    with loop_nest(k.b, k.dims(node)) as index:
        value = k.load(x, _sliced_offset(k, node.op.index, x.shape, index))
        k.store(node, _contiguous_offset(k, node, index), value)


@kernel(SliceGrad)
def _slice_grad(k, node):
    """Zero the output, then write `g` where Slice would have read it."""
    (g,) = node.inputs
    _zero(k, node)
    with loop_nest(k.b, k.dims(g)) as index:
        value = k.load(g, _contiguous_offset(k, g, index))
        k.store(node, _sliced_offset(k, node.op.index, node.op.in_shape, index), value)


@kernel(AssembleSlices)
def _assemble_slices(k, node):
    """Zero what no slice covers (nothing, when they tile the tensor), then copy each slice."""
    op = node.op
    if not op.covers_all():
        _zero(k, node)
    for index, g in zip(op.indices, node.inputs):
        with loop_nest(k.b, k.dims(g)) as position:
            value = k.load(g, _contiguous_offset(k, g, position))
            k.store(node, _sliced_offset(k, index, op.in_shape, position), value)


@kernel(Concat)
def _concat(k, node):
    """Input x fills columns [start, start + x.shape[axis]) of every row of the output, where a
    row is everything before `axis` and a column one element of the trailing axes."""
    b, axis = k.b, node.op.axis
    outer = element_count(b, node.shape[:axis], k.batch)
    inner = element_count(b, node.shape[axis + 1 :], k.batch)
    row = element_count(b, node.shape[axis:], k.batch)
    start = 0
    for x in node.inputs:
        width = element_count(b, x.shape[axis:], k.batch)
        first = _times(b, i64(start), inner, "first")
        with for_range(b, outer, "row") as r:
            source = _times(b, r, width, "source")
            target = _plus(b, _times(b, r, row, "row_offset"), first, "target")
            with for_range(b, width, "col") as c:
                value = k.load(x, b.add(source, c, name="from"))
                k.store(node, b.add(target, c, name="to"), value)
        start += x.shape[axis]

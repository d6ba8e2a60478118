"""Kernels of `pad` (ops/padding.py) and its adjoint: a loop nest over the padded array, each
axis mapping its padded position to the source position (clamped for replicate, mirrored for
reflect, flagged outside for constant)."""

from __future__ import annotations

from llvmlite import ir

from ....ops.padding import PadND, PadNDGrad
from ..irutil import I1, i64, linear_offset, llvm_type, loop_nest, row_major_strides, scalar_constant
from ..lowering import kernel


def _source(b: ir.IRBuilder, position: ir.Value, n: int, lo: int, mode: str) -> tuple[ir.Value, ir.Value]:
    """(source index, inside) of padded `position` along an axis of size n padded by `lo` before.
    Outside (constant mode) the index is 0, a safe place to load from."""
    i = b.sub(position, i64(lo), name="i")
    if mode == "replicate":
        i = b.select(b.icmp_signed("<", i, i64(0)), i64(0), i, name="clamp_lo")
        return b.select(b.icmp_signed(">", i, i64(n - 1)), i64(n - 1), i, name="clamped"), ir.Constant(I1, 1)
    if mode == "reflect":
        a = b.select(b.icmp_signed("<", i, i64(0)), b.neg(i), i, name="mirror_lo")
        high = b.icmp_signed(">", a, i64(n - 1))
        return b.select(high, b.sub(i64(2 * (n - 1)), a), a, name="mirrored"), ir.Constant(I1, 1)
    inside = b.and_(b.icmp_signed(">=", i, i64(0)), b.icmp_signed("<", i, i64(n)), name="inside")
    return b.select(inside, i, i64(0), name="safe"), inside


def _mapped(k, op, padded_index: list[ir.Value], in_shape) -> tuple[ir.Value, ir.Value]:
    """Offset in the unpadded array read by a padded position, and whether it is inside."""
    b = k.b
    sources, inside = [], ir.Constant(I1, 1)
    for position, d, (lo, hi) in zip(padded_index, in_shape, op.pads):
        if not (lo or hi):
            sources.append(position)
            continue
        source, ok = _source(b, position, d, lo, op.mode)
        sources.append(source)
        inside = b.and_(inside, ok)
    return linear_offset(b, list(zip(sources, row_major_strides(b, in_shape, k.batch)))), inside


@kernel(PadND)
def _pad(k, node):
    b = k.b
    (x,) = node.inputs
    out_strides = row_major_strides(b, node.shape, k.batch)
    value = scalar_constant(node.dtype, node.op.value)
    value = b.zext(value, llvm_type(node.dtype)) if value.type == I1 else value
    with loop_nest(b, k.dims(node)) as index:
        source, inside = _mapped(k, node.op, index, x.shape)
        loaded = k.load(x, source)
        k.store(node, linear_offset(b, list(zip(index, out_strides))), b.select(inside, loaded, value))


@kernel(PadNDGrad)
def _pad_grad(k, node):
    """Zero the gradient of x, then add every element of g into the element it was copied from."""
    b = k.b
    (g,) = node.inputs
    zero = ir.Constant(llvm_type(node.dtype), 0.0)
    with loop_nest(b, [k.count(node)]) as (i,):
        k.store(node, i, zero)
    g_strides = row_major_strides(b, g.shape, k.batch)
    with loop_nest(b, k.dims(g)) as index:
        target, _ = _mapped(k, node.op, index, node.shape)
        added = b.fadd(k.load(node, target), k.load(g, linear_offset(b, list(zip(index, g_strides)))), name="sum")
        k.store(node, target, added)

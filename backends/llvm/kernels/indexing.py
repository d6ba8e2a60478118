"""Kernels of the ops that pick elements by position (ops/indexing.py) and of the float-to-integer
cast. An array is seen as (outer, n, inner) around the op's axis: inner positions are contiguous.
Ids are all checked before anything is written, so a failing step leaves every buffer alone."""

from __future__ import annotations

from llvmlite import ir

from ....ops.cast import FloatToInt, int_bounds
from ....ops.indexing import ArgExtremum, Argmax, Cumsum, Gather, GatherGrad, Take, TakeGrad
from ..irutil import I1, STATUS_INVALID_INPUT, element_count, for_range, i64, llvm_type, scalar_constant
from ..lowering import kernel
from .nn import _check_indices, _load_index, entry_alloca, fold


def _around(k, node, axis: int):
    """(outer, n, inner) element counts of `node` around `axis`."""
    b = k.b
    return (
        element_count(b, node.shape[:axis], k.batch),
        k.dims(node)[axis],
        element_count(b, node.shape[axis + 1 :], k.batch),
    )


def _at(b: ir.IRBuilder, o, n, j, inner, c, name: str = "at") -> ir.Value:
    """Offset of (o, j, c) in an (outer, n, inner) array."""
    return b.add(b.mul(b.add(b.mul(o, n), j), inner), c, name=name)


def _zero(k, node) -> None:
    zero = ir.Constant(llvm_type(node.dtype), 0.0)
    with for_range(k.b, k.count(node), "zero") as i:
        k.store(node, i, zero)


@kernel(ArgExtremum)
def _arg_extremum(k, node):
    """Per (outer, inner) position: the first index of the best value along the axis; a NaN
    beats every number (so the first NaN wins, like NumPy's)."""
    b = k.b
    (x,) = node.inputs
    f = k.scalar(x)
    outer, n, inner = _around(k, x, node.op.axis)
    symbol = ">" if isinstance(node.op, Argmax) else "<"
    best_slot, index_slot = entry_alloca(b, f.type, "best"), entry_alloca(b, ir.IntType(64), "best_index")
    with for_range(b, outer, "o") as o, for_range(b, inner, "c") as c:
        b.store(k.load(x, _at(b, o, n, i64(0), inner, c)), best_slot)
        b.store(i64(0), index_slot)
        with for_range(b, n, "j", start=i64(1)) as j:
            value, best = k.load(x, _at(b, o, n, j, inner, c)), b.load(best_slot, name="best")
            is_nan, best_is_nan = f.compare("!=", value, value), f.compare("!=", best, best)
            better = b.or_(f.compare(symbol, value, best), b.and_(is_nan, b.not_(best_is_nan)), name="better")
            b.store(b.select(better, value, best), best_slot)
            b.store(b.select(better, j, b.load(index_slot)), index_slot)
        index = b.trunc(b.load(index_slot), llvm_type(node.dtype), name="index")
        k.store(node, b.add(b.mul(o, inner), c, name="out_at"), index)


@kernel(Take)
def _take(k, node):
    """out[o, i, c] = x[o, ids[i], c] for every id i."""
    b = k.b
    x, ids = node.inputs
    outer, vocab, inner = _around(k, x, node.op.axis)
    count = k.count(ids)
    _check_indices(k, ids, vocab, "id")
    with for_range(b, outer, "o") as o, for_range(b, count, "i") as i:
        source = _at(b, o, vocab, _load_index(k, ids, i, "id"), inner, i64(0), "source")
        target = _at(b, o, count, i, inner, i64(0), "target")
        with for_range(b, inner, "c") as c:
            k.store(node, b.add(target, c), k.load(x, b.add(source, c)))


@kernel(TakeGrad)
def _take_grad(k, node):
    """Zero the gradient of x, then add g[o, i, c] into row ids[i] of it."""
    b = k.b
    g, ids = node.inputs
    outer, vocab, inner = _around(k, node, node.op.axis)
    count = k.count(ids)
    _check_indices(k, ids, vocab, "id")
    _zero(k, node)
    with for_range(b, outer, "o") as o, for_range(b, count, "i") as i:
        target = _at(b, o, vocab, _load_index(k, ids, i, "id"), inner, i64(0), "target")
        source = _at(b, o, count, i, inner, i64(0), "source")
        with for_range(b, inner, "c") as c:
            at = b.add(target, c)
            k.store(node, at, b.fadd(k.load(node, at), k.load(g, b.add(source, c)), name="sum"))


def _gather_ids(k, node, x_like):
    """(outer, vocab, inner, picks) for a gather whose ids are (outer, picks, inner)."""
    ids = node.inputs[1]
    outer, vocab, inner = _around(k, x_like, node.op.axis)
    picks = k.dims(ids)[node.op.axis]
    _check_indices(k, ids, vocab, "id")
    return outer, vocab, inner, picks


@kernel(Gather)
def _gather(k, node):
    """out[o, j, c] = x[o, ids[o, j, c], c]."""
    b = k.b
    x, ids = node.inputs
    outer, vocab, inner, picks = _gather_ids(k, node, x)
    with for_range(b, outer, "o") as o, for_range(b, picks, "j") as j, for_range(b, inner, "c") as c:
        at = _at(b, o, picks, j, inner, c)
        source = _at(b, o, vocab, _load_index(k, ids, at, "id"), inner, c, "source")
        k.store(node, at, k.load(x, source))


@kernel(GatherGrad)
def _gather_grad(k, node):
    """Zero the gradient of x, then add g[o, j, c] at x[o, ids[o, j, c], c]."""
    b = k.b
    g, ids = node.inputs
    outer, vocab, inner, picks = _gather_ids(k, node, node)
    _zero(k, node)
    with for_range(b, outer, "o") as o, for_range(b, picks, "j") as j, for_range(b, inner, "c") as c:
        at = _at(b, o, picks, j, inner, c)
        target = _at(b, o, vocab, _load_index(k, ids, at, "id"), inner, c, "target")
        k.store(node, target, b.fadd(k.load(node, target), k.load(g, at), name="sum"))


@kernel(Cumsum)
def _cumsum(k, node):
    """Row j of the output is row j of x plus row j - 1 of the output (j + 1 when reversed):
    the inner loop runs over contiguous positions and vectorizes."""
    b = k.b
    (x,) = node.inputs
    outer, n, inner = _around(k, x, node.op.axis)
    length = node.shape[node.op.axis]
    if length == 0:
        return
    first = i64(length - 1 if node.op.reverse else 0)
    step = -1 if node.op.reverse else 1
    with for_range(b, outer, "o") as o:
        with for_range(b, inner, "c") as c:
            at = _at(b, o, n, first, inner, c)
            k.store(node, at, k.load(x, at))
        with for_range(b, i64(length - 1), "j") as j:
            row = b.add(first, b.mul(b.add(j, i64(1)), i64(step)), name="row")
            previous = b.sub(row, i64(step), name="previous")
            with for_range(b, inner, "c") as c:
                at = _at(b, o, n, row, inner, c)
                total = b.fadd(k.load(x, at), k.load(node, _at(b, o, n, previous, inner, c)), name="running")
                k.store(node, at, total)


@kernel(FloatToInt)
def _float_to_int(k, node):
    """Check that every value truncates into the integer type (NaN and infinities do not), then
    convert: a bad value stops the step before anything is written."""
    b = k.b
    (x,) = node.inputs
    lo, hi = (scalar_constant(x.dtype, v) for v in int_bounds(node.dtype))

    def all_ok(ok, i):
        value = k.load(x, i)
        fits = b.and_(b.fcmp_ordered(">=", value, lo), b.fcmp_ordered("<", value, hi), name="fits")
        return b.and_(ok, fits, name="ok")

    ok = fold(b, ir.Constant(I1, 1), k.count(x), all_ok, "check")
    k.fail_unless(ok, STATUS_INVALID_INPUT)
    f = k.scalar(node)
    with for_range(b, k.count(x), "i") as i:
        k.store(node, i, f.cast(k.load(x, i), x.dtype, node.dtype))

"""Kernels of the neural-network ops. Rows are reduced in stack slots allocated in the entry block,
which LLVM promotes to registers (and vectorizes as reductions: sums carry the `reassoc` flag)."""

from __future__ import annotations

from llvmlite import ir

from ....ops.nn import Embedding, EmbeddingGrad, OneHot, Softmax, SoftmaxCrossEntropyRows
from ..irutil import I64, STATUS_INDEX_OUT_OF_RANGE, element_count, for_range, i64, llvm_type
from ..lowering import kernel


def entry_alloca(b: ir.IRBuilder, type_: ir.Type, name: str) -> ir.Value:
    """A stack slot in the function's entry block (where LLVM promotes it to a register)."""
    block = b.block
    b.position_at_start(b.function.entry_basic_block)
    slot = b.alloca(type_, name=name)
    b.position_at_end(block)
    return slot


def fold(b: ir.IRBuilder, init: ir.Value, n: ir.Value, combine, name: str) -> ir.Value:
    """combine(...combine(combine(init, 0), 1)..., n - 1): `combine(acc, j)` emits the body."""
    acc = entry_alloca(b, init.type, f"{name}.acc")
    b.store(init, acc)
    with for_range(b, n, f"{name}.j") as j:
        b.store(combine(b.load(acc, name=f"{name}.prev"), j), acc)
    return b.load(acc, name=name)


def _load_index(k, ids, offset: ir.Value, name: str) -> ir.Value:
    """Integer id `offset` of `ids` (int32 or int64) as an i64."""
    value = k.load(ids, offset)
    return value if value.type == I64 else k.b.sext(value, I64, name=name)


def _index_within(k, ids, offset: ir.Value, depth: ir.Value, name: str) -> ir.Value:
    """Id `offset` of `ids`, read again where it is used, made safe to index with: an id outside
    [0, depth) becomes 0. `_check_indices` already stopped the step for such ids, but a feed is the
    caller's memory, which another thread may change between the check and this read; whatever it
    holds then, the kernel stays inside its buffers (and the row it reads is unspecified)."""
    index = _load_index(k, ids, offset, name)
    inside = k.b.icmp_unsigned("<", index, depth, name=f"{name}.inside")
    return k.b.select(inside, index, i64(0), name=f"{name}.safe")


def _check_indices(k, ids, depth: ir.Value, name: str) -> None:
    """End the step with STATUS_INDEX_OUT_OF_RANGE unless 0 <= id < depth for every id. Kernels
    check first and write after, so a failing step leaves every buffer it did not reach alone."""
    b = k.b

    def all_ok(ok, i):
        index = _load_index(k, ids, i, f"{name}.id")
        return b.and_(ok, b.icmp_unsigned("<", index, depth, name=f"{name}.in_range"), name=f"{name}.ok")

    ok = fold(b, ir.Constant(ir.IntType(1), 1), k.count(ids), all_ok, f"{name}.check")
    k.fail_unless(ok, STATUS_INDEX_OUT_OF_RANGE)


def _row_max(k, x, n: ir.Value, at) -> ir.Value:
    """max over j < n of x[at(j)], NaN-propagating like np.max."""
    f = k.scalar(x)
    return fold(k.b, f.const(float("-inf")), n, lambda m, j: f.accumulate("max", m, k.load(x, at(j))), "max")


def _row_sum_exp(k, x, n: ir.Value, at, shift: ir.Value, store=None) -> ir.Value:
    """sum over j < n of exp(x[at(j)] - shift); `store(j, e)` may keep each term."""
    b, f = k.b, k.scalar(x)

    def add(total, j):
        e = f.exp(b.fsub(k.load(x, at(j)), shift, name="shifted"))
        if store is not None:
            store(j, e)
        return f.accumulate("add", total, e)

    return fold(b, f.const(0.0), n, add, "sum")


def _softmax_workspace(node):
    """Softmax over an inner axis keeps a running max and sum per trailing position."""
    inner = node.shape[node.op.axis + 1 :]
    return None if all(d == 1 for d in inner) else ((2,) + inner, node.dtype)


@kernel(Softmax, workspace=_softmax_workspace)
def _softmax(k, node):
    """Numerically stable: m = max(x), e = exp(x - m), s = sum(e), out = e / s."""
    if _softmax_workspace(node) is None:
        _softmax_rows(k, node)
    else:
        _softmax_columns(k, node)


def _softmax_rows(k, node):
    """Softmax over the last axis: contiguous rows, reduced in registers."""
    b = k.b
    x = node.inputs[0]
    n = k.dims(x)[node.op.axis]
    with for_range(b, element_count(b, node.shape[: node.op.axis], k.batch), "row") as row:
        start = b.mul(row, n, name="row_start")

        def at(j):
            return b.add(start, j, name="at")

        m = _row_max(k, x, n, at)
        s = _row_sum_exp(k, x, n, at, m, store=lambda j, e: k.store(node, at(j), e))
        with for_range(b, n, "div") as j:
            offset = at(j)
            k.store(node, offset, b.fdiv(k.load(node, offset), s, name="prob"))


def _softmax_columns(k, node):
    """Softmax over an inner axis: for each leading index, sweep the axis once per pass with
    the trailing positions (contiguous) innermost, keeping max and sum per position in the
    workspace, so every inner loop is a plain vectorizable elementwise loop."""
    b, f = k.b, k.scalar(node)
    x = node.inputs[0]
    n = k.dims(x)[node.op.axis]
    inner = element_count(b, node.shape[node.op.axis + 1 :], k.batch)
    row_size = b.mul(n, inner, name="row_size")
    space = k.workspace(node)
    maxima = b.gep(space, [i64(0)], source_etype=f.type, inbounds=True, name="maxima")
    sums = b.gep(space, [inner], source_etype=f.type, inbounds=True, name="sums")

    def get(pointer, c, name):
        at = b.gep(pointer, [c], source_etype=f.type, inbounds=True, name=f"{name}.at")
        return b.load(at, typ=f.type, name=name)

    def put(pointer, c, value):
        b.store(value, b.gep(pointer, [c], source_etype=f.type, inbounds=True, name="at"))

    with for_range(b, element_count(b, node.shape[: node.op.axis], k.batch), "row") as row:
        start = b.mul(row, row_size, name="row_start")
        with for_range(b, inner, "init") as c:
            put(maxima, c, f.const(float("-inf")))
            put(sums, c, f.const(0.0))

        def sweep(name, body):
            with for_range(b, n, f"{name}.j") as j:
                line = b.add(start, b.mul(j, inner), name=f"{name}.line")
                with for_range(b, inner, f"{name}.c") as c:
                    body(b.add(line, c, name="at"), c)

        def take_max(at, c):
            put(maxima, c, f.accumulate("max", get(maxima, c, "max"), k.load(x, at)))

        def add_exp(at, c):
            e = f.exp(b.fsub(k.load(x, at), get(maxima, c, "max"), name="shifted"))
            k.store(node, at, e)
            put(sums, c, f.add(get(sums, c, "sum"), e))

        def divide(at, c):
            k.store(node, at, b.fdiv(k.load(node, at), get(sums, c, "sum"), name="prob"))

        sweep("max", take_max)
        sweep("exp", add_exp)
        sweep("div", divide)


@kernel(SoftmaxCrossEntropyRows)
def _softmax_cross_entropy_rows(k, node):
    """Check every label, then per row: log(sum(exp(z))) - z[label] with z = logits - max."""
    b = k.b
    logits, labels = node.inputs
    classes = k.dims(logits)[-1]
    _check_indices(k, labels, classes, "label")
    with for_range(b, k.count(labels), "row") as row:
        start = b.mul(row, classes, name="row_start")

        def at(j):
            return b.add(start, j, name="at")

        m = _row_max(k, logits, classes, at)
        s = _row_sum_exp(k, logits, classes, at, m)
        picked = k.load(logits, at(_index_within(k, labels, row, classes, "label")))
        shifted = b.fsub(picked, m, name="picked")
        k.store(node, row, b.fsub(k.scalar(node).log(s), shifted, name="loss"))


@kernel(OneHot)
def _one_hot(k, node):
    b = k.b
    (labels,) = node.inputs
    depth, type_ = i64(node.op.depth), llvm_type(node.op.dtype)
    one, zero = (ir.Constant(type_, v if node.op.dtype.kind == "f" else int(v)) for v in (1.0, 0.0))
    _check_indices(k, labels, depth, "label")
    with for_range(b, k.count(node), "fill") as i:  # a memset once LLVM sees it
        k.store(node, i, zero)
    with for_range(b, k.count(labels), "row") as row:
        label = _index_within(k, labels, row, depth, "label")
        k.store(node, b.add(b.mul(row, depth, name="row_start"), label, name="hot"), one)


@kernel(Embedding)
def _embedding(k, node):
    """Check every id, then copy row `ids[i]` of the table to row i of the output."""
    b = k.b
    ids, table = node.inputs
    vocab, width = k.dims(table)
    _check_indices(k, ids, vocab, "id")
    with for_range(b, k.count(ids), "row") as row:
        source = b.mul(_index_within(k, ids, row, vocab, "id"), width, name="source")
        target = b.mul(row, width, name="target")
        with for_range(b, width, "j") as j:
            value = k.load(table, b.add(source, j, name="from"))
            k.store(node, b.add(target, j, name="to"), value)


@kernel(EmbeddingGrad)
def _embedding_grad(k, node):
    """Check every id, zero the table gradient, then add row i of `g` to row `ids[i]`."""
    b = k.b
    g, ids = node.inputs
    width, vocab = k.dims(node)[1], i64(node.op.vocab)
    _check_indices(k, ids, vocab, "id")
    zero = ir.Constant(llvm_type(node.dtype), 0.0)
    with for_range(b, k.count(node), "zero") as i:
        k.store(node, i, zero)
    with for_range(b, k.count(ids), "row") as row:
        target = b.mul(_index_within(k, ids, row, vocab, "id"), width, name="target")
        source = b.mul(row, width, name="source")
        with for_range(b, width, "j") as j:
            at = b.add(target, j, name="to")
            value = k.load(g, b.add(source, j, name="from"))
            k.store(node, at, b.fadd(k.load(node, at), value, name="sum"))

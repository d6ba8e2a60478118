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
    (total,) = fold_together(b, [init], n, lambda accs, j: [combine(accs[0], j)], name)
    return total


def fold_together(
    b: ir.IRBuilder, inits: list[ir.Value], n: ir.Value, combine, name: str, short: bool = False
) -> list[ir.Value]:
    """Several folds in one loop: `combine(accs, j)` returns the next value of every accumulator.
    `short`: n is a row's few elements, whose last partial vector runs masked (irutil.for_range)."""
    slots = [entry_alloca(b, init.type, f"{name}{i}.acc") for i, init in enumerate(inits)]
    for init, slot in zip(inits, slots):
        b.store(init, slot)
    with for_range(b, n, f"{name}.j", masked_tail=short) as j:
        accs = [b.load(slot, name=f"{name}{i}.prev") for i, slot in enumerate(slots)]
        for value, slot in zip(combine(accs, j), slots):
            b.store(value, slot)
    return [b.load(slot, name=f"{name}{i}") for i, slot in enumerate(slots)]


# Rows reduced side by side: a short row's max and sum are chains of dependent steps (a classifier's
# ten classes, a character model's fifty), which the core overlaps when several rows share a loop
ROWS_AT_ONCE = 4


def in_row_blocks(b: ir.IRBuilder, rows: ir.Value, body) -> None:
    """`body(row_indices)` for blocks of ROWS_AT_ONCE rows, then for each remaining row alone."""
    blocks = b.udiv(rows, i64(ROWS_AT_ONCE), name="row_blocks")
    with for_range(b, blocks, "rows") as block:
        first = b.mul(block, i64(ROWS_AT_ONCE), name="first_row")
        body([b.add(first, i64(r), name=f"row{r}") for r in range(ROWS_AT_ONCE)])
    with for_range(b, rows, "row", start=b.mul(blocks, i64(ROWS_AT_ONCE))) as row:
        body([row])


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


def _row_max(k, x, n: ir.Value, ats: list) -> list[ir.Value]:
    """Per row, max over j < n of x[at(j)], NaN-propagating like np.max."""
    f = k.scalar(x)

    def take(maxima, j):
        return [f.accumulate("max", m, k.load(x, at(j))) for m, at in zip(maxima, ats)]

    return fold_together(k.b, [f.const(float("-inf"))] * len(ats), n, take, "max", short=True)


def _row_sum_exp(k, x, n: ir.Value, ats: list, shifts: list, store=None) -> list[ir.Value]:
    """Per row r, sum over j < n of exp(x[ats[r](j)] - shifts[r]); `store(r, j, e)` may keep each term."""
    b, f = k.b, k.scalar(x)

    def add(totals, j):
        new = []
        for r, (total, at, shift) in enumerate(zip(totals, ats, shifts)):
            e = f.exp(b.fsub(k.load(x, at(j)), shift, name="shifted"))
            if store is not None:
                store(r, j, e)
            new.append(f.accumulate("add", total, e))
        return new

    return fold_together(b, [f.const(0.0)] * len(ats), n, add, "sum", short=True)


def _row_starts(b: ir.IRBuilder, rows: list, n: ir.Value) -> list:
    """Per row, `at(j)`: the offset of its element j."""
    starts = [b.mul(row, n, name="row_start") for row in rows]
    return [lambda j, start=start: b.add(start, j, name="at") for start in starts]


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

    def rows(indices):
        ats = _row_starts(b, indices, n)
        maxima = _row_max(k, x, n, ats)
        sums = _row_sum_exp(k, x, n, ats, maxima, store=lambda r, j, e: k.store(node, ats[r](j), e))
        with for_range(b, n, "div", masked_tail=True) as j:
            for at, total in zip(ats, sums):
                offset = at(j)
                k.store(node, offset, b.fdiv(k.load(node, offset), total, name="prob"))

    in_row_blocks(b, element_count(b, node.shape[: node.op.axis], k.batch), rows)


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

    def rows(indices):
        ats = _row_starts(b, indices, classes)
        maxima = _row_max(k, logits, classes, ats)
        sums = _row_sum_exp(k, logits, classes, ats, maxima)
        for row, at, m, s in zip(indices, ats, maxima, sums):
            picked = k.load(logits, at(_index_within(k, labels, row, classes, "label")))
            shifted = b.fsub(picked, m, name="picked")
            k.store(node, row, b.fsub(k.scalar(node).log(s), shifted, name="loss"))

    in_row_blocks(b, k.count(labels), rows)


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

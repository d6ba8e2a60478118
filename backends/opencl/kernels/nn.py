"""Kernels of the neural-network ops: one work item per row (softmax, cross-entropy), per output
element (one-hot, embedding) or per column of the table (the embedding gradient's scatter-add,
which then needs no atomics: each work item owns its column)."""

from __future__ import annotations

from ....compiler.grid import Size
from ....ops.nn import Embedding, EmbeddingGrad, OneHot, Softmax, SoftmaxCrossEntropyRows
from ..lowering import kernel
from ..source import FAIL, c_type, dims, literal, size


def _checked_id(ids: str, at: str, depth: str, name: str) -> list[str]:
    """Declare `name` = ids[at]; out of [0, depth) the step fails and this work item stops."""
    return [
        f"    const long {name} = (long){ids}[{at}];",
        f"    if ({name} < 0 || {name} >= {depth}) {{ {FAIL}; return; }}",
    ]


def _row_max_sum(x: str, t: str, count: str, at: str, store: str | None = None) -> list[str]:
    """m = max of the row (NaN-propagating), s = sum of exp(x - m); `store` keeps each term."""
    keep = f" {store}[{at}] = e;" if store else ""
    return [
        f"    {t} m = -INFINITY;",
        f"    for (long j = 0; j < {count}; ++j) m = drug_max_{t}(m, {x}[{at}]);",
        f"    {t} s = 0;",
        f"    for (long j = 0; j < {count}; ++j) {{ const {t} e = exp({x}[{at}] - m); s += e;{keep} }}",
    ]


@kernel(Softmax)
def _softmax(k, node):
    """Per (leading, trailing) position, a sweep of the axis: e = exp(x - max), out = e / sum."""
    axis = node.op.axis
    inner = Size.of(node.shape[axis + 1 :])
    n = dims(node.shape)[axis]
    f = k.function(Size.of(node.shape[:axis]) * inner)
    x, out, t = f.read(node.inputs[0]), f.write(node), c_type(node.dtype)
    stride = size(inner)
    f.lines += [f"    const long base = (item / {stride}) * {n} * {stride} + item % {stride};"]
    at = f"base + j * {stride}"
    f.lines += _row_max_sum(x, t, n, at, store=out)
    f.lines += [f"    for (long j = 0; j < {n}; ++j) {out}[{at}] /= s;"]


@kernel(SoftmaxCrossEntropyRows)
def _softmax_cross_entropy_rows(k, node):
    """Per row: check the label, then log(sum(exp(z))) - z[label] with z = logits - max."""
    logits, labels = node.inputs
    classes = str(logits.shape[-1])
    f = k.function(Size.of(labels.shape))
    x, y, loss, t = f.read(logits), f.read(labels), f.write(node), c_type(node.dtype)
    f.lines += _checked_id(y, "item", classes, "label")
    f.lines += [f"    const long base = item * {classes};"]
    f.lines += _row_max_sum(x, t, classes, "base + j")
    f.lines += [f"    {loss}[item] = log(s) - ({x}[base + label] - m);"]


@kernel(OneHot)
def _one_hot(k, node):
    depth = node.op.depth
    f = k.function(Size.of(node.shape))
    labels, out = f.read(node.inputs[0]), f.write(node)
    f.lines += _checked_id(labels, f"item / {depth}", str(depth), "label")
    one, zero = literal(1, node.dtype), literal(0, node.dtype)
    f.lines += [f"    {out}[item] = item % {depth} == label ? {one} : {zero};"]


@kernel(Embedding)
def _embedding(k, node):
    """Element (row, j) of the output is table[ids[row], j]."""
    ids, table = node.inputs
    vocab, width = table.shape
    f = k.function(Size.of(node.shape))
    i, tab, out = f.read(ids), f.read(table), f.write(node)
    f.lines += _checked_id(i, f"item / {width}", str(vocab), "id")
    f.lines += [f"    {out}[item] = {tab}[id * {width} + item % {width}];"]


@kernel(EmbeddingGrad)
def _embedding_grad(k, node):
    """Per column j of the table gradient: zero it, then add row i of g at row ids[i], in order
    (repeated ids accumulate as np.add.at does)."""
    g, ids = node.inputs
    vocab, width = node.op.vocab, node.shape[1]
    f = k.function(Size(width))
    grads, i, out, t = f.read(g), f.read(ids), f.write(node), c_type(node.dtype)
    f.lines += [
        f"    for (long v = 0; v < {vocab}; ++v) {out}[v * {width} + item] = ({t})0;",
        f"    for (long row = 0; row < {size(Size.of(ids.shape))}; ++row) {{",
        f"        const long id = (long){i}[row];",
        f"        if (id < 0 || id >= {vocab}) {{ {FAIL}; return; }}",
        f"        {out}[id * {width} + item] += {grads}[row * {width} + item];",
        "    }",
    ]

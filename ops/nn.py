"""Neural-network ops: softmax, softmax cross-entropy, one-hot, embedding, global and local pooling."""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ..compiler.errors import ShapeError
from ..compiler.irutil import I64, STATUS_INDEX_OUT_OF_RANGE, element_count, for_range, i64, llvm_type
from ..compiler.types import INT_DTYPES, TensorType, format_shape, normalize_axes
from .base import Example, Op, apply, same_float_dtype
from .elementwise import mul, sub
from .reduce import max as reduce_max
from .reduce import mean
from .reduce import min as reduce_min
from .reduce import sum as reduce_sum
from .shape import broadcast_like, reshape


def _check_labels(op: Op, labels: np.ndarray, depth: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= depth):
        bad = labels[(labels < 0) | (labels >= depth)][0]
        raise ShapeError(f"op '{op.name}': label/id {bad} out of range [0, {depth})")


def _int_type(op_name: str, t: TensorType, what: str) -> None:
    if t.dtype not in INT_DTYPES:
        raise ShapeError(f"{what} must be int32 or int64, got {t.dtype}")


# Native kernels. Rows are reduced in stack slots allocated in the entry block, which LLVM
# promotes to registers (and vectorizes as reductions: sums carry the `reassoc` flag).


def _entry_alloca(b: ir.IRBuilder, type_: ir.Type, name: str) -> ir.Value:
    """A stack slot in the function's entry block (where LLVM promotes it to a register)."""
    block = b.block
    b.position_at_start(b.function.entry_basic_block)
    slot = b.alloca(type_, name=name)
    b.position_at_end(block)
    return slot


def _fold(b: ir.IRBuilder, init: ir.Value, n: ir.Value, combine, name: str) -> ir.Value:
    """combine(...combine(combine(init, 0), 1)..., n - 1): `combine(acc, j)` emits the body."""
    acc = _entry_alloca(b, init.type, f"{name}.acc")
    b.store(init, acc)
    with for_range(b, n, f"{name}.j") as j:
        b.store(combine(b.load(acc, name=f"{name}.prev"), j), acc)
    return b.load(acc, name=name)


def _load_index(k, ids, offset: ir.Value, name: str) -> ir.Value:
    """Integer id `offset` of `ids` (int32 or int64) as an i64."""
    value = k.load(ids, offset)
    return value if value.type == I64 else k.b.sext(value, I64, name=name)


def _check_indices(k, ids, depth: ir.Value, name: str) -> None:
    """End the step with STATUS_INDEX_OUT_OF_RANGE unless 0 <= id < depth for every id. Kernels
    check first and write after, so a failing step leaves every buffer it did not reach alone."""
    b = k.b

    def all_ok(ok, i):
        index = _load_index(k, ids, i, f"{name}.id")
        return b.and_(ok, b.icmp_unsigned("<", index, depth, name=f"{name}.in_range"), name=f"{name}.ok")

    ok = _fold(b, ir.Constant(ir.IntType(1), 1), k.count(ids), all_ok, f"{name}.check")
    k.fail_unless(ok, STATUS_INDEX_OUT_OF_RANGE)


def _row_max(k, x, n: ir.Value, at) -> ir.Value:
    """max over j < n of x[at(j)], NaN-propagating like np.max."""
    f = k.scalar(x)
    return _fold(k.b, f.const(float("-inf")), n, lambda m, j: f.accumulate("max", m, k.load(x, at(j))), "max")


def _row_sum_exp(k, x, n: ir.Value, at, shift: ir.Value, store=None) -> ir.Value:
    """sum over j < n of exp(x[at(j)] - shift); `store(j, e)` may keep each term."""
    b, f = k.b, k.scalar(x)

    def add(total, j):
        e = f.exp(b.fsub(k.load(x, at(j)), shift, name="shifted"))
        if store is not None:
            store(j, e)
        return f.accumulate("add", total, e)

    return _fold(b, f.const(0.0), n, add, "sum")


class Softmax(Op):
    name = "softmax"
    arity = 1

    def __init__(self, axis: int):
        self.axis = axis

    def infer(self, x):
        return TensorType(x.shape, same_float_dtype(self.name, [x]))

    def ref(self, x):
        z = np.exp(x - np.max(x, axis=self.axis, keepdims=True))
        return z / np.sum(z, axis=self.axis, keepdims=True)

    def grad(self, g, out, x):
        dot = reduce_sum(mul(g, out), self.axis, keepdims=True)
        return [mul(out, sub(g, broadcast_like(dot, out)))]

    def workspace(self, node):
        """Softmax over an inner axis keeps a running max and sum per trailing position."""
        inner = node.shape[self.axis + 1 :]
        return None if all(d == 1 for d in inner) else ((2,) + inner, node.dtype)

    def emit_kernel(self, k, node):
        """Numerically stable: m = max(x), e = exp(x - m), s = sum(e), out = e / s."""
        if self.workspace(node) is None:
            self._emit_rows(k, node)
        else:
            self._emit_columns(k, node)

    def _emit_rows(self, k, node):
        """Softmax over the last axis: contiguous rows, reduced in registers."""
        b = k.b
        x = node.inputs[0]
        n = k.dims(x)[self.axis]
        with for_range(b, element_count(b, node.shape[: self.axis], k.batch), "row") as row:
            start = b.mul(row, n, name="row_start")

            def at(j):
                return b.add(start, j, name="at")

            m = _row_max(k, x, n, at)
            s = _row_sum_exp(k, x, n, at, m, store=lambda j, e: k.store(node, at(j), e))
            with for_range(b, n, "div") as j:
                offset = at(j)
                k.store(node, offset, b.fdiv(k.load(node, offset), s, name="prob"))

    def _emit_columns(self, k, node):
        """Softmax over an inner axis: for each leading index, sweep the axis once per pass with
        the trailing positions (contiguous) innermost, keeping max and sum per position in the
        workspace, so every inner loop is a plain vectorizable elementwise loop."""
        b, f = k.b, k.scalar(node)
        x = node.inputs[0]
        n = k.dims(x)[self.axis]
        inner = element_count(b, node.shape[self.axis + 1 :], k.batch)
        row_size = b.mul(n, inner, name="row_size")
        space = k.workspace(node)
        maxima = b.gep(space, [i64(0)], source_etype=f.type, inbounds=True, name="maxima")
        sums = b.gep(space, [inner], source_etype=f.type, inbounds=True, name="sums")

        def get(pointer, c, name):
            at = b.gep(pointer, [c], source_etype=f.type, inbounds=True, name=f"{name}.at")
            return b.load(at, typ=f.type, name=name)

        def put(pointer, c, value):
            b.store(value, b.gep(pointer, [c], source_etype=f.type, inbounds=True, name="at"))

        with for_range(b, element_count(b, node.shape[: self.axis], k.batch), "row") as row:
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

    @classmethod
    def example(cls, rng, dims):
        return cls(1), Example([rng.standard_normal((dims[0], dims[1] + 1))], [True], {0: 0})


class SoftmaxCrossEntropyRows(Op):
    """Per-row loss logsumexp(logits) - logits[label]; logits (..., C), labels (...)."""

    name = "softmax_cross_entropy_rows"
    arity = 2
    may_fail = True  # labels out of range

    def infer(self, logits, labels):
        same_float_dtype(self.name, [logits])
        _int_type(self.name, labels, "labels")
        if logits.shape[:-1] != labels.shape:
            raise ShapeError(
                f"logits {format_shape(logits.shape)} need labels of shape {format_shape(logits.shape[:-1])}, "
                f"got {format_shape(labels.shape)}"
            )
        return TensorType(labels.shape, logits.dtype)

    def ref(self, logits, labels):
        _check_labels(self, labels, logits.shape[-1])
        # log(sum(exp(z))) - z[label] with z = logits - max: adding the max back first would round
        # the loss to the precision of the logits' magnitude (1e-3 for float32 logits near 1e4)
        z = logits - np.max(logits, axis=-1, keepdims=True)
        picked = np.take_along_axis(z, labels[..., None].astype(np.intp), axis=-1)[..., 0]
        return np.log(np.sum(np.exp(z), axis=-1)) - picked

    def emit_kernel(self, k, node):
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
            picked = k.load(logits, at(_load_index(k, labels, row, "label")))
            shifted = b.fsub(picked, m, name="picked")
            k.store(node, row, b.fsub(k.scalar(node).log(s), shifted, name="loss"))

    def grad(self, g, out, logits, labels):
        probs = apply(Softmax(logits.ndim - 1), logits)
        onehot = one_hot(labels, logits.shape[-1], logits.dtype)
        g_rows = broadcast_like(reshape(g, g.shape + (1,)), logits)
        return [mul(sub(probs, onehot), g_rows), None]

    @classmethod
    def example(cls, rng, dims):
        c = dims[1] + 1
        logits = rng.standard_normal((dims[0], c)) * 3
        labels = rng.integers(0, c, size=(dims[0],)).astype(np.int32)
        return cls(), Example([logits, labels], [True, False], {0: 0, 1: 0})


class OneHot(Op):
    name = "one_hot"
    arity = 1
    may_fail = True  # labels out of range

    def __init__(self, depth: int, dtype: np.dtype):
        self.depth = depth
        self.dtype = np.dtype(dtype)

    def infer(self, labels):
        _int_type(self.name, labels, "labels")
        return TensorType(labels.shape + (self.depth,), self.dtype)

    def ref(self, labels):
        _check_labels(self, labels, self.depth)
        return (labels[..., None] == np.arange(self.depth)).astype(self.dtype)

    def grad(self, g, out, labels):
        return [None]

    def emit_kernel(self, k, node):
        b = k.b
        (labels,) = node.inputs
        depth, type_ = i64(self.depth), llvm_type(self.dtype)
        one, zero = (ir.Constant(type_, v if self.dtype.kind == "f" else int(v)) for v in (1.0, 0.0))
        _check_indices(k, labels, depth, "label")
        with for_range(b, k.count(node), "fill") as i:  # a memset once LLVM sees it
            k.store(node, i, zero)
        with for_range(b, k.count(labels), "row") as row:
            label = _load_index(k, labels, row, "label")
            k.store(node, b.add(b.mul(row, depth, name="row_start"), label, name="hot"), one)


class Embedding(Op):
    """Rows of `table` picked by integer `ids`: ids (...), table (V, D) -> (..., D)."""

    name = "embedding"
    arity = 2
    may_fail = True  # ids out of range

    def infer(self, ids, table):
        _int_type(self.name, ids, "ids")
        same_float_dtype(self.name, [table])
        if table.ndim != 2:
            raise ShapeError(f"table must be 2-D (vocabulary, dim), got {format_shape(table.shape)}")
        return TensorType(ids.shape + (table.shape[1],), table.dtype)

    def ref(self, ids, table):
        _check_labels(self, ids, table.shape[0])
        return table[ids]

    def grad(self, g, out, ids, table):
        return [None, apply(EmbeddingGrad(table.shape[0]), g, ids)]

    def emit_kernel(self, k, node):
        """Check every id, then copy row `ids[i]` of the table to row i of the output."""
        b = k.b
        ids, table = node.inputs
        vocab, width = k.dims(table)
        _check_indices(k, ids, vocab, "id")
        with for_range(b, k.count(ids), "row") as row:
            source = b.mul(_load_index(k, ids, row, "id"), width, name="source")
            target = b.mul(row, width, name="target")
            with for_range(b, width, "j") as j:
                value = k.load(table, b.add(source, j, name="from"))
                k.store(node, b.add(target, j, name="to"), value)

    @classmethod
    def example(cls, rng, dims):
        vocab = dims[1] + 2
        ids = rng.integers(0, vocab, size=(dims[0], 3)).astype(np.int32)
        return cls(), Example([ids, rng.standard_normal((vocab, 4))], [False, True], {0: 0})


class EmbeddingGrad(Op):
    """Scatter-add of `g` rows into a (V, D) table gradient (repeated ids accumulate)."""

    name = "embedding_grad"
    arity = 2
    may_fail = True  # ids out of range

    def __init__(self, vocab: int):
        self.vocab = vocab

    def infer(self, g, ids):
        _int_type(self.name, ids, "ids")
        if g.shape[:-1] != ids.shape:
            raise ShapeError(f"gradient {format_shape(g.shape)} does not match ids {format_shape(ids.shape)}")
        return TensorType((self.vocab, g.shape[-1]), g.dtype)

    def ref(self, g, ids):
        out = np.zeros((self.vocab, g.shape[-1]), g.dtype)
        np.add.at(out, ids.reshape(-1), g.reshape(-1, g.shape[-1]))
        return out

    def grad(self, gg, out, g, ids):
        return [apply(Embedding(), ids, gg), None]

    def emit_kernel(self, k, node):
        """Check every id, zero the table gradient, then add row i of `g` to row `ids[i]`."""
        b = k.b
        g, ids = node.inputs
        width = k.dims(node)[1]
        _check_indices(k, ids, i64(self.vocab), "id")
        zero = ir.Constant(llvm_type(node.dtype), 0.0)
        with for_range(b, k.count(node), "zero") as i:
            k.store(node, i, zero)
        with for_range(b, k.count(ids), "row") as row:
            target = b.mul(_load_index(k, ids, row, "id"), width, name="target")
            source = b.mul(row, width, name="source")
            with for_range(b, width, "j") as j:
                at = b.add(target, j, name="to")
                value = k.load(g, b.add(source, j, name="from"))
                k.store(node, at, b.fadd(k.load(node, at), value, name="sum"))

    @classmethod
    def example(cls, rng, dims):
        vocab = dims[1] + 1
        ids = rng.integers(0, vocab, size=(dims[0], 3)).astype(np.int32)
        return cls(vocab), Example([rng.standard_normal((dims[0], 3, 2)), ids], [True, False], {0: 0, 1: 0})


def softmax(x, axis: int = -1):
    return apply(Softmax(normalize_axes(axis, x.ndim)[0]), x)


def softmax_cross_entropy(logits, labels):
    """Mean over all rows of -log softmax(logits)[label]; stable for large logits."""
    return mean(apply(SoftmaxCrossEntropyRows(), logits, labels))


def one_hot(labels, depth: int, dtype="float32"):
    return apply(OneHot(int(depth), np.dtype(dtype)), labels)


def embedding(ids, table):
    return apply(Embedding(), ids, table)


_POOLS = {"avg": mean, "mean": mean, "sum": reduce_sum, "max": reduce_max, "min": reduce_min}


def global_pool(x, kind: str = "avg"):
    """Pool NCHW over both spatial axes -> NC."""
    if x.ndim != 4:
        raise ShapeError(f"global_pool needs NCHW input, got {x.describe()}")
    if kind not in _POOLS:
        raise ShapeError(f"global_pool kind must be one of {sorted(_POOLS)}, got {kind!r}")
    return _POOLS[kind](x, (2, 3))


def _pool_windows(x, size, op_name: str):
    """x (N, C, H, W) viewed as (N, C, H/sh, sh, W/sw, sw) windows; trailing rows and columns that
    do not fill a window are dropped first, like PyTorch's default (stride = size, no padding)."""
    if x.ndim != 4:
        raise ShapeError(f"{op_name} needs NCHW input, got {x.describe()}")
    sh, sw = (size, size) if isinstance(size, int) else tuple(size)
    h, w = x.shape[2], x.shape[3]
    if None in (h, w) or sh < 1 or sw < 1 or sh > h or sw > w:
        raise ShapeError(f"{op_name}: window {(sh, sw)} does not fit the spatial size of {x.describe()}")
    oh, ow = h // sh, w // sw
    if (oh * sh, ow * sw) != (h, w):
        x = x[:, :, : oh * sh, : ow * sw]
    return reshape(x, (x.shape[0], x.shape[1], oh, sh, ow, sw))


def max_pool2d(x, size: int | tuple[int, int] = 2):
    """Max over non-overlapping size x size windows of NCHW input. A reshape (no copy) and one
    reduction, so it runs as fused native loops and differentiates like `max` (ties share)."""
    return reduce_max(_pool_windows(x, size, "max_pool2d"), (3, 5))


def avg_pool2d(x, size: int | tuple[int, int] = 2):
    """Mean over non-overlapping size x size windows of NCHW input (see max_pool2d)."""
    return mean(_pool_windows(x, size, "avg_pool2d"), (3, 5))

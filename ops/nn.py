"""Neural-network ops: softmax, softmax cross-entropy, one-hot, embedding."""

from __future__ import annotations

import numpy as np

from ..core.errors import ShapeError
from ..core.node import apply
from ..core.op import Example, Op, same_float_dtype
from ..core.types import INT_DTYPES, TensorType, format_shape, normalize_axes
from .elementwise import mul, sub
from .reduce import mean
from .reduce import sum as reduce_sum
from .shape import broadcast_like, reshape


def _check_labels(op: Op, labels: np.ndarray, depth: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= depth):
        bad = labels[(labels < 0) | (labels >= depth)][0]
        raise ShapeError(f"op '{op.name}': label/id {bad} out of range [0, {depth})")


def _int_type(op_name: str, t: TensorType, what: str) -> None:
    if t.dtype not in INT_DTYPES:
        raise ShapeError(f"{what} must be int32 or int64, got {t.dtype}")


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

"""Neural-network ops: softmax, softmax cross-entropy, one-hot, embedding, global and local pooling."""

from __future__ import annotations

import numpy as np

from ..core.errors import DTypeError, ShapeError
from ..core.node import Node, apply, user_call
from ..core.op import Example, Op, same_float_dtype
from ..core.types import INT_DTYPES, TensorType, format_shape, normalize_axes
from .elementwise import mul, sub
from .reduce import max as reduce_max
from .reduce import mean
from .reduce import min as reduce_min
from .reduce import sum as reduce_sum
from .shape import broadcast_like, reshape


def _check_labels(op: Op, labels: np.ndarray, depth: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= depth):
        bad = labels[(labels < 0) | (labels >= depth)][0]
        raise ShapeError(f"label/id {bad} out of range [0, {depth}); the step was not completed")


def _int_type(op_name: str, t: TensorType, what: str) -> None:
    if t.dtype not in INT_DTYPES:
        raise DTypeError(f"{what} must be int32 or int64, got {t.dtype}")


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


@user_call()
def softmax(x: Node, axis: int = -1) -> Node:
    """`exp(x) / sum(exp(x))` along `axis`, computed stably (the max is subtracted first).

    Args:
        x: A float node.
        axis: The axis that sums to 1.

    Returns:
        A node of x's shape and dtype.

    Raises:
        ShapeError: The axis is out of range.
        DTypeError: x is not float.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2))
        >>> dg.softmax(x).eval(x=np.array([[0.0, 0.0], [1000.0, 1000.0]], np.float32))
        array([[0.5, 0.5],
               [0.5, 0.5]], dtype=float32)
    """
    return apply(Softmax(normalize_axes(axis, x.ndim)[0]), x)


@user_call()
def softmax_cross_entropy(logits: Node, labels: Node) -> Node:
    """The mean over all rows of `-log softmax(logits)[label]`: the classification loss, stable
    for large logits, with the gradient `softmax(logits) - one_hot(labels)` per row.

    Args:
        logits: Float scores (..., C) over C classes, e.g. (None, 10).
        labels: Integer class ids (...) (int32 or int64) in [0, C), one per row of logits.

    Returns:
        A float scalar node (shape ()) of the logits' dtype.

    Raises:
        ShapeError: labels' shape is not logits' without the last axis; at the call, a label
            out of range (the message names it; a train step changes nothing).
        DTypeError: Float labels, or non-float logits.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> logits, y = g.input("logits", (None, 3)), g.input("y", (None,), dtype="int32")
        >>> loss = dg.softmax_cross_entropy(logits, y)
        >>> round(float(loss.eval(logits=np.zeros((2, 3), np.float32), y=np.array([0, 2], np.int32))), 4)
        1.0986
    """
    return mean(apply(SoftmaxCrossEntropyRows(), logits, labels))


@user_call()
def one_hot(labels: Node, depth: int, dtype: str = "float32") -> Node:
    """Rows of the identity: `one_hot(labels, depth)[..., k]` is 1 where `labels == k`.

    Args:
        labels: Integer ids (...) (int32 or int64) in [0, depth).
        depth: The number of classes.
        dtype: The float dtype of the result.

    Returns:
        A node (..., depth) of `dtype`; no gradient flows to labels.

    Raises:
        DTypeError: Float labels.
        ShapeError: At the call, an id out of range.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> y = g.input("y", (None,), dtype="int32")
        >>> dg.one_hot(y, 3).eval(y=np.array([2, 0], np.int32))
        array([[0., 0., 1.],
               [1., 0., 0.]], dtype=float32)
    """
    return apply(OneHot(int(depth), np.dtype(dtype)), labels)


@user_call()
def embedding(ids: Node, table: Node) -> Node:
    """Rows of `table` picked by integer `ids`: a lookup whose gradient adds into the rows used
    (repeated ids accumulate).

    Args:
        ids: Integer ids (...) (int32 or int64) in [0, V).
        table: A float node (V, D), usually a parameter.

    Returns:
        A node (..., D) of the table's dtype.

    Raises:
        DTypeError: Float ids.
        ShapeError: table is not 2-D; at the call, an id out of range (named; nothing changes).

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> ids = g.input("ids", (None,), dtype="int32")
        >>> table = g.constant(np.arange(6.0).reshape(3, 2))
        >>> dg.embedding(ids, table).eval(ids=np.array([2, 0], np.int32))
        array([[4., 5.],
               [0., 1.]], dtype=float32)
    """
    return apply(Embedding(), ids, table)


_POOLS = {"avg": mean, "mean": mean, "sum": reduce_sum, "max": reduce_max, "min": reduce_min}


@user_call()
def global_pool(x: Node, kind: str = "avg") -> Node:
    """Pool NCHW feature maps over both spatial axes: (N, C, H, W) -> (N, C).

    Args:
        x: A float node (N, C, H, W).
        kind: "avg" (or "mean"), "max", "sum" or "min".

    Returns:
        A node (N, C) of x's dtype.

    Raises:
        ShapeError: x is not 4-D, or kind is unknown.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2, 2, 2))
        >>> dg.global_pool(x, "max").eval(x=np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2))
        array([[3., 7.]], dtype=float32)
    """
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


@user_call()
def max_pool2d(x: Node, size: int | tuple[int, int] = 2) -> Node:
    """The maximum over non-overlapping `size` x `size` windows of NCHW input (stride = size, no
    padding; rows and columns that do not fill a window are dropped, like PyTorch's default).
    A reshape (no copy) and one reduction, so it runs as fused native loops; ties share the
    gradient, as with `max`.

    Args:
        x: A float node (N, C, H, W) with static H and W.
        size: The window, one int or (height, width).

    Returns:
        A node (N, C, H // size, W // size) of x's dtype.

    Raises:
        ShapeError: x is not 4-D, or the window does not fit.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 1, 2, 4))
        >>> dg.max_pool2d(x).eval(x=np.arange(8, dtype=np.float32).reshape(1, 1, 2, 4))
        array([[[[5., 7.]]]], dtype=float32)
    """
    return reduce_max(_pool_windows(x, size, "max_pool2d"), (3, 5))


@user_call()
def avg_pool2d(x: Node, size: int | tuple[int, int] = 2) -> Node:
    """The mean over non-overlapping `size` x `size` windows of NCHW input (see `max_pool2d`).

    Args:
        x: A float node (N, C, H, W) with static H and W.
        size: The window, one int or (height, width).

    Returns:
        A node (N, C, H // size, W // size) of x's dtype.

    Raises:
        ShapeError: x is not 4-D, or the window does not fit.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 1, 2, 4))
        >>> dg.avg_pool2d(x).eval(x=np.arange(8, dtype=np.float32).reshape(1, 1, 2, 4))
        array([[[[2.5, 4.5]]]], dtype=float32)
    """
    return mean(_pool_windows(x, size, "avg_pool2d"), (3, 5))

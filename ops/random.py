"""Random numbers inside a graph: a counter-based generator (Philox-4x32-10, Salmon et al. 2011),
with no hidden state. Each random op has a key fixed when the graph is built (from the graph's
seed and the op's salt: the how-many-th random op of the graph it is) and reads the graph's
step counter, a state buffer that every compiled function drawing random numbers advances by
one per call (compiler/random.py). Element i of a draw is Philox(counter = (i, step), key): the
same bits on every backend, fresh numbers every step, and a checkpoint (which holds the counter)
resumes with the draws an uninterrupted run would have made.

Uniform floats come from the top bits (24 for float32, 53 for float64, in [0, 1)); normal ones
from the Box-Muller transform of two uniforms."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.errors import GraphError, ShapeError
from ..core.graph import Graph
from ..core.node import Node, apply, user_call
from ..core.op import Example, Op, Specialized
from ..core.types import FLOAT_DTYPES, INT_DTYPES, TensorType, format_shape, normalize_shape
from .elementwise import mul, zeros_like
from .logic import greater_equal, where

# Philox-4x32 constants (Random123)
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF
DISTRIBUTIONS = ("uniform", "normal")


def splitmix64(z: int) -> int:
    """One step of SplitMix64 (Steele et al.): spreads a seed over all 64 bits."""
    z = (z + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def philox_key(seed: int, salt: int) -> tuple[int, int]:
    """The 2 x 32-bit Philox key of the random op numbered `salt` in a graph seeded `seed`."""
    z = splitmix64((splitmix64(int(seed) & 0xFFFFFFFFFFFFFFFF) + int(salt)) & 0xFFFFFFFFFFFFFFFF)
    return z & MASK32, z >> 32


def philox(counter: tuple[np.ndarray, ...], key: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Philox-4x32-10 of counters (four uint32 arrays) under `key`: four uint32 arrays."""
    c0, c1, c2, c3 = (np.asarray(c, np.uint64) for c in counter)
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    m0, m1, mask = np.uint64(PHILOX_M[0]), np.uint64(PHILOX_M[1]), np.uint64(MASK32)
    for r in range(PHILOX_ROUNDS):
        if r:
            k0 = (k0 + np.uint64(PHILOX_W[0])) & mask
            k1 = (k1 + np.uint64(PHILOX_W[1])) & mask
        p0, p1 = m0 * c0, m1 * c2  # 32 x 32 -> 64 bits, exact in uint64
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & mask)
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))


def random_bits(n: int, step: int, key: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """The four words of elements 0..n-1 at step `step`: counter (i low, i high, step low, step high)."""
    i = np.arange(n, dtype=np.uint64)
    step = int(step) & 0xFFFFFFFFFFFFFFFF
    words = (i & np.uint64(MASK32), i >> np.uint64(32))
    return philox(words + (np.full(n, step & MASK32, np.uint64), np.full(n, step >> 32, np.uint64)), key)


def unit_uniform(words: tuple[np.ndarray, ...], first: int, dtype: np.dtype) -> np.ndarray:
    """[0, 1) from the top bits of words[first] (float32), or of words[first] and [first + 1] (float64)."""
    if np.dtype(dtype) == np.float32:
        return (words[first] >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)
    high = (words[first] >> np.uint32(5)).astype(np.float64)
    low = (words[first + 1] >> np.uint32(6)).astype(np.float64)
    return (high * 2.0**26 + low) * 2.0**-53


def sample(distribution: str, words: tuple[np.ndarray, ...], dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if distribution == "uniform":
        return unit_uniform(words, 0, dtype)
    # Box-Muller: u1 in (0, 1] (so log(u1) is finite), u2 in [0, 1); float32 uses words 0 and 1
    second = 1 if dtype == np.float32 else 2
    ulp = 2.0**-24 if dtype == np.float32 else 2.0**-53
    u1 = unit_uniform(words, 0, dtype).astype(np.float64) + ulp
    u2 = unit_uniform(words, second, dtype).astype(np.float64)
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)).astype(dtype)


class Random(Op):
    """Random numbers of a fixed `shape` (no batch), or shaped like the second input (read for
    its run-time shape only); the first input is the step counter (an int64 scalar)."""

    name = "random"

    def __init__(self, distribution: str, key: tuple[int, int], shape: tuple | None, dtype: np.dtype):
        self.distribution, self.key_words, self.shape, self.dtype = distribution, tuple(key), shape, np.dtype(dtype)

    shape_only_inputs = (1,)

    def infer(self, counter, *like):
        if counter.shape != () or counter.dtype not in INT_DTYPES:
            raise ShapeError(f"the step counter must be an integer scalar, got {counter}")
        if self.distribution not in DISTRIBUTIONS or self.dtype not in FLOAT_DTYPES:
            raise ShapeError(f"draws {DISTRIBUTIONS} of float32 or float64, not {self.distribution} {self.dtype}")
        if (self.shape is None) != bool(like) or len(like) > 1:
            raise ShapeError("takes a fixed shape or one node to take the shape of")
        return TensorType(like[0].shape if like else self.shape, self.dtype)

    def ref(self, counter, *like):
        shape = like[0].shape if like else self.shape
        words = random_bits(math.prod(shape), int(counter), self.key_words)
        return sample(self.distribution, words, self.dtype).reshape(shape)

    def grad(self, g, out, counter, *like):
        return [None] * (1 + len(like))

    @classmethod
    def example(cls, rng, dims):
        counter = np.array(rng.integers(0, 2**40), np.int64)
        like = rng.standard_normal((dims[0], dims[1] + 1))
        op = cls(DISTRIBUTIONS[dims[2] % 2], philox_key(int(rng.integers(2**31)), dims[2]), None, np.float64)
        return op, Example([counter, like], [False, False], {1: 0})


class Dropout(Op):
    """Inverted dropout: in a training step each element is kept with probability 1 - rate and
    scaled by 1 / (1 - rate), or zeroed; in inference it is the identity. Inputs: x, the step
    counter and, optionally, the node whose shape the mask is drawn for (x by default: the
    gradient, a dropout of its own with the same key, draws for x and so gets x's mask)."""

    name = "dropout"
    mode_dependent = True

    def __init__(self, rate: float, key: tuple[int, int]):
        self.rate, self.key_words = float(rate), tuple(key)

    def infer(self, x, counter, *like):
        if x.dtype not in FLOAT_DTYPES:
            raise ShapeError(f"needs float input, got {x.dtype}")
        if like and like[0].shape != x.shape:
            raise ShapeError(f"the mask is drawn for {format_shape(like[0].shape)}, not {format_shape(x.shape)}")
        return x

    def specialize(self, inputs, training):
        x, counter, *like = inputs
        if not training or self.rate == 0.0:
            return Specialized(x)
        source = like[0] if like else x
        batched = (source,) if None in source.shape else ()
        u = apply(Random("uniform", self.key_words, None if batched else x.shape, x.dtype), counter, *batched)
        kept = greater_equal(u, self.rate)
        return Specialized(where(kept, mul(x, 1.0 / (1.0 - self.rate)), zeros_like(x)))

    def grad(self, g, out, x, counter, *like):
        return [apply(Dropout(self.rate, self.key_words), g, counter, like[0] if like else x), None] + [None] * len(
            like
        )

    def params(self) -> dict[str, Any]:
        return {"rate": self.rate, "key": self.key_words}


def _stream(graph) -> tuple[Node, tuple[int, int]]:
    counter, salt = graph.random_stream()
    return counter, philox_key(graph.seed, salt)


def _draw(distribution: str, source, shape, dtype) -> Node:
    if isinstance(source, Node):
        if shape is not None:
            raise GraphError(f"random_{distribution}: give a node to take the shape of, or a graph and a shape")
        graph = source.graph
        dtype = np.dtype(dtype) if dtype is not None else source.dtype if source.dtype in FLOAT_DTYPES else graph.dtype
        counter, key = _stream(graph)
        fixed = None if None in source.shape else source.shape
        return apply(Random(distribution, key, fixed, dtype), counter, *(() if fixed else (source,)))
    graph = source
    if shape is None:
        raise GraphError(f"random_{distribution}: a graph needs a shape")
    shape = normalize_shape(shape)
    if None in shape:
        raise ShapeError(f"random_{distribution}: shape {format_shape(shape)} has the batch dimension; pass a node")
    counter, key = _stream(graph)
    return apply(Random(distribution, key, shape, np.dtype(dtype or graph.dtype)), counter)


@user_call()
def random_uniform(
    source: Node | Graph,
    shape: Sequence[int] | None = None,
    low: float = 0.0,
    high: float = 1.0,
    dtype: str | None = None,
) -> Node:
    """Uniform numbers in [low, high), fresh at every call of a compiled function (the graph's
    step counter advances once per call), the same bits on every backend.

    Args:
        source: A node to take the shape (batch included) from, or the graph (then give `shape`).
        shape: With a graph as source: a static shape.
        low: The lower end.
        high: The upper end (excluded).
        dtype: float32 or float64; default the source node's float dtype, else the graph's.

    Returns:
        A float node.

    Raises:
        GraphError: A node and a shape at once, or a graph without one.
        ShapeError: A shape with the batch dimension (pass a node instead).

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph(seed=0)
        >>> u = dg.random_uniform(g, (2, 3))
        >>> draw = g.compile(outputs=u)
        >>> a, b = draw(), draw()
        >>> bool((a >= 0).all() and (a < 1).all()), bool((a != b).any()), int(g.state["random/step"])
        (True, True, 2)
    """
    u = _draw("uniform", source, shape, dtype)
    return u if (low, high) == (0.0, 1.0) else u * (high - low) + low


@user_call()
def random_normal(
    source: Node | Graph,
    shape: Sequence[int] | None = None,
    mean: float = 0.0,
    std: float = 1.0,
    dtype: str | None = None,
) -> Node:
    """Normal numbers (Box-Muller from the generator of `random_uniform`).

    Args:
        source: A node to take the shape (batch included) from, or the graph (then give `shape`).
        shape: With a graph as source: a static shape.
        mean: The mean.
        std: The standard deviation.
        dtype: float32 or float64; default the source node's float dtype, else the graph's.

    Returns:
        A float node.

    Raises:
        GraphError: A node and a shape at once, or a graph without one.
        ShapeError: A shape with the batch dimension (pass a node instead).

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph(seed=0)
        >>> x = g.input("x", (None, 1000))
        >>> z = g.compile(outputs=dg.random_normal(x, std=2.0))(x=np.zeros((100, 1000), np.float32))
        >>> round(float(z.std()), 1)
        2.0
    """
    z = _draw("normal", source, shape, dtype)
    return z if (mean, std) == (0.0, 1.0) else z * std + mean


@user_call()
def dropout(x: Node, rate: float) -> Node:
    """Inverted dropout: in a train step (or `g.compile(..., training=True)`) each element of x
    is zeroed with probability `rate` and the others are scaled by 1 / (1 - rate); in a
    predictor (or `training=False`) it is x itself. Fresh masks every step; the gradient uses
    the step's mask.

    Args:
        x: A float node.
        rate: The probability of dropping an element, in [0, 1).

    Returns:
        A node of x's shape and dtype.

    Raises:
        GraphError: A rate outside [0, 1).

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph(seed=0)
        >>> x = g.input("x", (None, 1000))
        >>> h = dg.dropout(x, 0.5)
        >>> ones = np.ones((1, 1000), np.float32)
        >>> bool((g.compile(outputs=h)(x=ones) == 1).all())  # a predictor: the identity
        True
        >>> sorted(set(g.compile(outputs=h, training=True)(x=ones).ravel().tolist()))
        [0.0, 2.0]
    """
    if not isinstance(x, Node):
        raise GraphError(f"dropout needs a graph node, got {type(x).__name__}")
    if not 0.0 <= float(rate) < 1.0:
        raise GraphError(f"dropout of {x.describe()}: rate must be in [0, 1), got {rate}")
    counter, key = _stream(x.graph)
    return apply(Dropout(rate, key), x, counter)

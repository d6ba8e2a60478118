"""Random graphs for differential testing of the two backends (tests/test_fuzz_graphs.py and
the longer campaign in tests/fuzz_campaign.py).

A graph is described by a `Spec`: leaf shapes and a list of steps, each an op kind and a few
integers (operand choices, axes, sizes). `build` turns it into nodes deterministically, so
hypothesis can shrink a failing spec to a few steps. A step whose op rejects its operands at
build time (a ShapeError names the problem there, for both backends alike) is skipped."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

import drug as dg

KINDS = (
    "unary", "binary", "nary", "matmul", "reduce", "softmax", "reshape", "transpose", "slice",
    "concat", "conv", "pool", "cross_entropy", "embedding",
)  # fmt: skip
UNARY = (
    dg.relu, dg.sigmoid, dg.tanh, dg.neg,
    lambda v: dg.exp(dg.tanh(v)),  # bounded: exp of raw values overflows in both backends alike
    lambda v: dg.log(v * v + 1.0),
    lambda v: dg.sqrt(v * v + 0.5),
    lambda v: v * 0.5 + 1.0,
    lambda v: 1.0 / (v * v + 1.0),
)  # fmt: skip
BINARY = (dg.add, dg.sub, dg.mul, lambda a, b: a / (b * b + 1.0))
REDUCE = (dg.sum, dg.mean, dg.max, dg.min)


@dataclass
class Spec:
    inputs: list[tuple]  # shapes, None = batch
    params: list[tuple]
    steps: list[tuple[str, tuple[int, ...]]]
    batch: int
    seed: int
    train: int  # 0: outputs and gradients; 1: SGD steps; 2: Adam steps
    dtype: str = "float64"


@dataclass
class Built:
    graph: dg.Graph
    loss: dg.Node
    values: list  # every value the steps made (float nodes)
    wrt: list  # float inputs and parameters the loss depends on
    feeds: dict = field(default_factory=dict)


def shapes(draw, count: int, batched: bool) -> list[tuple]:
    out = []
    for _ in range(count):
        rank = draw(st.integers(1, 4))
        dims = [draw(st.integers(1, 4)) for _ in range(rank)]
        if batched and draw(st.integers(0, 4)):  # mostly batched, on axis 0 mostly
            dims[draw(st.sampled_from([0, 0, 0, rank - 1]))] = None
        out.append(tuple(dims))
    return out


@st.composite
def specs(draw, max_steps: int = 30) -> Spec:
    inputs = shapes(draw, draw(st.integers(1, 2)), batched=True)
    params = shapes(draw, draw(st.integers(0, 2)), batched=False)
    step = st.tuples(st.sampled_from(KINDS), st.tuples(*[st.integers(0, 2**16)] * 5))
    length = draw(st.integers(1, max_steps))  # uniform, not hypothesis's preference for short lists
    steps = draw(st.lists(step, min_size=length, max_size=length))
    batch, seed, train = draw(st.integers(1, 4)), draw(st.integers(0, 2**16)), draw(st.integers(0, 2))
    return Spec(inputs, params, steps, batch, seed, train, draw(st.sampled_from(["float64"] * 3 + ["float32"])))


class Builder:
    """Applies the steps of a spec to a growing list of values."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.g = dg.Graph(seed=spec.seed, dtype=spec.dtype)
        self.values: list = []
        self.leaves: list = []
        self.feeds: dict[str, np.ndarray] = {}
        for i, shape in enumerate(spec.inputs):
            self.values.append(self.input(f"x{i}", shape))
        for shape in spec.params:
            self.values.append(self.param(shape))

    # leaves
    def input(self, name: str, shape: tuple, dtype: str | None = None, high: int = 0, bad: int = 0):
        """A fed input: float normals, or integer ids below `high` (one of them `bad` if not 0)."""
        node = self.g.input(name, shape, dtype=dtype)
        concrete = tuple(self.spec.batch if d is None else d for d in shape)
        if dtype is None:
            self.feeds[name] = self.rng.standard_normal(concrete).astype(self.g.dtype)
            self.leaves.append(node)
        else:
            ids = self.rng.integers(0, high, concrete)
            if bad and ids.size:
                ids.reshape(-1)[ids.size // 2] = high if bad > 0 else -1  # both backends must refuse it
            self.feeds[name] = ids.astype(dtype)
        return node

    def param(self, shape: tuple):
        node = self.g.parameter(f"p{len(self.g.params)}", shape, init="normal")
        self.leaves.append(node)
        return node

    def pick(self, n: int):
        return self.values[n % len(self.values)]

    # steps
    def apply(self, kind: str, a: tuple[int, ...]):
        v = self.pick(a[0])
        return getattr(self, f"op_{kind}")(v, a)

    def op_unary(self, v, a):
        return UNARY[a[1] % len(UNARY)](v)

    def op_binary(self, v, a):
        return BINARY[a[1] % len(BINARY)](v, self.pick(a[2]))

    def op_nary(self, v, a):
        return (dg.add if a[1] % 2 else dg.mul)(v, self.pick(a[2]), self.pick(a[3]))

    def op_matmul(self, v, a):
        if v.ndim < 2 or v.shape[-1] is None:
            return None
        other = self.pick(a[2])
        if a[1] % 3 == 0 and other.ndim >= 2 and other.shape[-2] == v.shape[-1]:
            return v @ other
        if a[1] % 3 == 1 and v.shape[-2] is not None and v.ndim == 2:  # param @ v
            return self.param((1 + a[3] % 3, v.shape[-2])) @ v
        return v @ self.param((v.shape[-1], 1 + a[3] % 4))

    def op_reduce(self, v, a):
        if v.ndim == 0:
            return None
        axes = tuple(i for i in range(v.ndim) if (a[2] >> i) & 1) or (a[3] % v.ndim,)
        return REDUCE[a[1] % 4](v, axis=axes, keepdims=bool(a[4] % 2))

    def op_softmax(self, v, a):
        return dg.softmax(v, axis=a[1] % v.ndim) if v.ndim else None

    def op_reshape(self, v, a):
        if v.ndim < 2:
            return dg.reshape(v, v.shape + (1,))
        if None in v.shape:
            return dg.reshape(v, (None, -1)) if v.shape[0] is None else None
        return dg.reshape(v, (-1,)) if a[1] % 2 else dg.reshape(v, (v.shape[0], -1))

    def op_transpose(self, v, a):
        if v.ndim < 2:
            return None
        perm = list(np.random.default_rng(a[1]).permutation(v.ndim))
        return dg.transpose(v, perm)

    def op_slice(self, v, a):
        axes = [i for i, d in enumerate(v.shape) if d is not None]
        if not axes:
            return None
        axis = axes[a[1] % len(axes)]
        n = v.shape[axis]
        if a[2] % 4 == 0:  # an int index drops the axis
            item = a[3] % n - (n if a[4] % 2 else 0)
        else:
            step = (1 + a[4] % 2) * (-1 if a[2] % 4 == 3 else 1)
            item = slice(a[3] % n, None, step) if step > 0 else slice(n - 1 - a[3] % n, None, step)
        index = tuple(slice(None) if i != axis else item for i in range(v.ndim))
        return v[index]

    def op_concat(self, v, a):
        axes = [i for i, d in enumerate(v.shape) if d is not None]
        if not axes:
            return None
        other = self.pick(a[2])
        axis = axes[a[1] % len(axes)]
        try:
            return dg.concat([v, other, v][: 2 + a[3] % 2], axis=axis)
        except dg.ShapeError:
            return dg.concat([v, v], axis=axis)

    def op_conv(self, v, a):
        v = as_images(v)
        if v is None:
            return None
        c, h, w = v.shape[1:]
        kernel = (1 + a[1] % min(h, 3), 1 + a[2] % min(w, 3))
        weight = self.param((1 + a[3] % 3, c) + kernel)
        padding = "same" if a[4] % 2 else "valid"
        mode = ("zeros", "replicate", "reflect")[(a[4] >> 1) % 3]
        return dg.conv2d(v, weight, stride=1 + (a[4] >> 3) % 2, padding=padding, pad_mode=mode)

    def op_pool(self, v, a):
        v = as_images(v)
        if v is None:
            return None
        kind = a[1] % 3
        if kind == 0:
            return dg.global_pool(v, ("avg", "max", "sum", "min")[a[2] % 4])
        if None in v.shape[2:]:
            return None
        size = (1 + a[2] % v.shape[2], 1 + a[3] % v.shape[3])
        return (dg.max_pool2d if kind == 1 else dg.avg_pool2d)(v, size)

    def op_cross_entropy(self, v, a):
        if v.ndim == 0 or v.shape[-1] is None:
            return None
        name = f"labels{len(self.feeds)}"
        dtype = ("int32", "int64")[a[1] % 2]
        labels = self.input(name, v.shape[:-1], dtype=dtype, high=v.shape[-1], bad=_bad(a[4]))
        return dg.softmax_cross_entropy(v, labels)

    def op_embedding(self, v, a):
        if v.ndim == 2 and None not in v.shape:
            table = v
        else:
            table = self.param((1 + a[1] % 5, 1 + a[2] % 3))
        shape = (None,) if a[3] % 2 else (None, 1 + a[4] % 3)
        ids = self.input(f"ids{len(self.feeds)}", shape, dtype="int32", high=table.shape[0], bad=_bad(a[4]))
        return dg.embedding(ids, table)


def as_images(v):
    """v as NCHW images with a static C, H, W: itself, or (N, X) -> (N, 1, 1, X) and
    (N, H, W) -> (N, 1, H, W) by a reshape (None if it has no such view)."""
    if v.ndim < 2 or v.ndim > 4 or None in v.shape[1:]:
        return None
    if v.ndim == 4:
        return v
    return dg.reshape(v, (v.shape[0],) + (1,) * (4 - v.ndim) + v.shape[1:])


def _bad(choice: int) -> int:
    """One spec in eleven feeds an id out of range: +1 past the end, or -1."""
    return 0 if choice % 11 != 10 else (1 if choice % 2 else -1)


def build(spec: Spec) -> Built:
    b = Builder(spec)
    made = []
    for kind, args in spec.steps:
        try:
            value = b.apply(kind, args)
        except dg.ShapeError:  # refused at build time: the same for both backends
            continue
        if value is not None:
            b.values.append(value)
            made.append(value)
    terms = made[-3:] or b.values[:1]
    weights = np.random.default_rng(spec.seed + 1).uniform(0.5, 1.5, len(terms))
    parts = [dg.mean(dg.tanh(t)) * float(w) for t, w in zip(terms, weights)]
    parts.append(dg.mean(dg.tanh(terms[0] * b.param(()))))  # something to train in every graph
    loss = dg.add(*parts)
    depends = set(id(n) for n in _ancestors(loss))
    wrt = [leaf for leaf in b.leaves if id(leaf) in depends]
    return Built(b.g, loss, made, wrt, b.feeds)


def _ancestors(node) -> list:
    seen, stack, out = set(), [node], []
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        out.append(n)
        stack.extend(n.inputs)
    return out


def size(spec: Spec) -> int:
    """Elements of the largest leaf: keeps hypothesis away from specs no test could run quickly."""
    return max(math.prod(spec.batch if d is None else d for d in s) for s in spec.inputs + spec.params + [()])


# ---- running a spec on one backend, comparing two runs ----

# Tolerances, relative to the largest magnitude of each compared array: fused loops contract
# a*b+c into FMAs, reassociate sums and BLAS sums in its own order, so each op may differ from
# NumPy by a few ulps (float64 ~1e-16, float32 ~1e-7 relative); 30 chained ops whose derivatives
# stay below ~1e3 (the generator bounds exp, log and division) amplify that to ~1e-12 and ~1e-4
# at most. A wrong kernel (a misplaced element, a missing term) is off by O(scale).
RTOL = {"float64": 1e-9, "float32": 2e-3}


def outcome(spec: Spec, backend: str):
    """("ok", arrays) or ("error", exception type name); only dg errors count as errors,
    anything else propagates (a crash of the test is a finding too)."""
    built = build(spec)
    g = built.graph
    try:
        if spec.train:
            # Adam's epsilon well above rounding: a gradient that is zero but for rounding (-3e-9 on
            # one backend, +5e-9 on the other) would otherwise move its parameter by lr, opposite ways
            optimizer = dg.SGD(0.05, momentum=0.5) if spec.train == 1 else dg.Adam(0.01, epsilon=1e-4)
            fn = g.compile(loss=built.loss, optimizer=optimizer, backend=backend)
            feeds = {n.name: built.feeds[n.name] for n in fn.inputs}
            losses = [np.asarray(fn(**feeds)) for _ in range(2)]
            return "ok", losses + [g.params[name].copy() for name in sorted(g.params)]
        floats = [w for w in built.wrt]
        targets = [built.loss] + built.values[-3:] + (list(dg.grad(built.loss, floats)) if floats else [])
        fn = g.compile(outputs=targets, backend=backend)
        feeds = {n.name: built.feeds[n.name] for n in fn.inputs}
        result = fn(**feeds)
        return "ok", [np.asarray(r) for r in (result if isinstance(result, tuple) else (result,))]
    except (dg.GraphError, dg.ShapeError) as error:
        return "error", type(error).__name__


def assert_same(reference, native, rtol: float) -> None:
    assert reference[0] == native[0], f"numpy gave {reference}, llvm gave {native}"
    if reference[0] == "error":
        assert reference[1] == native[1]
        return
    assert len(reference[1]) == len(native[1])
    for i, (want, got) in enumerate(zip(reference[1], native[1])):
        assert got.shape == want.shape and got.dtype == want.dtype, (
            f"result {i}: {got.shape} {got.dtype} vs {want.shape} {want.dtype}"
        )
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"result {i}: NaN positions")
        finite = np.isfinite(want)
        np.testing.assert_array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)])
        scale = max(1.0, float(np.max(np.abs(want[finite]), initial=0.0)))
        np.testing.assert_allclose(got[finite], want[finite], rtol=rtol, atol=rtol * scale, err_msg=f"result {i}")


def check(spec: Spec) -> None:
    """Both backends agree on `spec`: the same values, or the same dg error."""
    assert_same(outcome(spec, "numpy"), outcome(spec, "llvm"), RTOL[spec.dtype])

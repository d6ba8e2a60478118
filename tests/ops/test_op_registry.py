"""Registry-driven checks: every builtin op's forward against its NumPy reference and its
gradient rule against finite differences, on hypothesis-drawn sizes. A new op with an
`example` is covered without new test code; a new op without one fails
`test_every_builtin_op_has_an_example` until it gets one or is documented below."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    BUILTIN_OPS,
    FD_ATOL,
    FD_EPS,
    FD_RTOL,
    OPS_WITH_EXAMPLE,
    assert_grads_match_fd,
    build_from_example,
    call,
    numeric_grad,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import drug as dg

REGISTRY = dg.ops.REGISTRY
concrete_shape = dg.core.types.concrete_shape

# Leaves have no inputs: their values come from feeds, the graph or the optimizer, not from `ref`.
LEAVES = {"input", "parameter", "buffer", "state", "constant"}
# Ops without an example, and why; their forward is tested by hand below.
NO_EXAMPLE = {
    "ones_like": "the autodiff seed; depends on its input's shape only, gradient None",
    "count": "runtime element count that mean divides by; depends on the shape only",
    "one_hot": "integer labels in; not differentiable",
    "scan": "a loop with a graph body and several results; tests/test_scan.py checks it against unrolled graphs",
    "scan_output": "picks one result of a scan; tested with it",
    "allreduce_sum": "an MPI collective over processes; tests/test_distributed.py runs it under mpirun",
    "batch_norm": "mode-dependent: replaced by batch_moments and elementwise ops before it runs; "
    "tests/ops/test_batch_norm.py checks both modes against PyTorch",
    "mode_gradient": "dg.grad through a mode-dependent op, replaced by the gradient of its specialization; "
    "tests/ops/test_batch_norm.py checks it against PyTorch",
    "layer_norm_grad": "layer_norm's gradient, checked through it (no second derivative)",
    "rms_norm_grad": "rms_norm's gradient, checked through it (no second derivative)",
    "attention_grad": "attention's gradient (three results), checked through attention",
    "result": "picks one result of a multi-output op (attention_grad); tested with it",
    "dropout": "mode-dependent: replaced by what it computes in each mode; tests/ops/test_random.py",
}


DIMS = st.lists(st.integers(1, 4), min_size=3, max_size=3)
SEED = st.integers(0, 2**32 - 1)
FEW = settings(max_examples=25, deadline=None)


def _batch_size(example):
    sizes = {example.inputs[i].shape[axis] for i, axis in example.batch_axis.items()}
    assert len(sizes) <= 1, "an example's batched inputs must agree on the batch size"
    return sizes.pop() if sizes else None


def test_every_builtin_op_has_an_example():
    missing = {name for name in BUILTIN_OPS if name not in OPS_WITH_EXAMPLE}
    assert missing == LEAVES | set(NO_EXAMPLE), (
        "give the op an `example` classmethod (or document why not in NO_EXAMPLE)"
    )


def test_registry_lists_the_public_ops():
    public = {"add", "mul", "sub", "div", "neg", "matmul", "relu", "sigmoid", "tanh", "exp", "log", "sqrt"}
    public |= {"softmax", "conv2d", "embedding", "reshape", "transpose", "concat", "sum", "max", "min"}
    assert public <= set(BUILTIN_OPS)


@pytest.mark.parametrize("name", OPS_WITH_EXAMPLE)
@FEW
@given(dims=DIMS, seed=SEED)
def test_forward_matches_reference(name, dims, seed):
    op, example = REGISTRY[name].example(np.random.default_rng(seed), dims)
    g, nodes, out, feeds = build_from_example(op, example)
    expected = np.asarray(op.ref(*feeds.values()))
    got = g.compile(outputs=out, backend="numpy")(**feeds)
    assert expected.shape == concrete_shape(out.shape, _batch_size(example)), "shape rule disagrees with ref"
    assert got.shape == expected.shape
    assert got.dtype == out.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", OPS_WITH_EXAMPLE)
@FEW
@given(dims=DIMS, seed=SEED)
def test_gradient_matches_finite_differences(name, dims, seed):
    rng = np.random.default_rng(seed)
    op, example = REGISTRY[name].example(rng, dims)
    g, nodes, out, feeds = build_from_example(op, example)
    arrays = list(feeds.values())
    wrt = [n for n, d in zip(nodes, example.differentiable) if d]
    if not wrt:  # comparisons, casts to integers, argmax: the rule must say so for every input
        assert all(gx is None for gx in op.grad(out, out, *nodes)), f"{name}: a gradient for a non-differentiable input"
        return
    # loss = sum(out * r) for a fixed random r: every output element gets its own weight, so a
    # gradient rule that mixes up elements cannot pass. r shares out's batch dimension.
    r = rng.standard_normal(np.shape(op.ref(*arrays)))
    r_node = g.input("r", out.shape, dtype=str(out.dtype))
    loss = dg.sum(out * r_node)
    grads = call(g.compile(outputs=dg.grad(loss, wrt), backend="numpy"), {**feeds, "r": r})
    grads = grads if isinstance(grads, tuple) else (grads,)
    for node, got in zip(wrt, grads):
        x = feeds[node.name]
        # tolerances: see FD_EPS in conftest.py
        expected = numeric_grad(lambda: float(np.sum(op.ref(*arrays) * r)), x, FD_EPS)
        assert got.shape == x.shape and got.dtype == x.dtype
        np.testing.assert_allclose(got, expected, rtol=FD_RTOL, atol=FD_ATOL, err_msg=f"{name}: d/d {node.name}")


# Hand-written forward checks for the ops without an example.


def test_ones_like_forward():
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 2))
    got = g.compile(outputs=dg.ops.ones_like(x), backend="numpy")(x=np.full((3, 2), 7.0))
    np.testing.assert_array_equal(got, np.ones((3, 2)))


def test_count_forward_includes_the_batch():
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 3, 2))
    count = REGISTRY["count"]((0, 2))(x)
    assert count.shape == ()
    got = g.compile(outputs=count, backend="numpy")(x=np.zeros((5, 3, 2)))
    assert got == 10.0 and got.dtype == np.float64


def test_one_hot_forward():
    g = dg.Graph(dtype="float64")
    labels = g.input("labels", (None,), dtype="int32")
    out = dg.one_hot(labels, 4, dtype="float64")
    assert out.shape == (None, 4)
    got = g.compile(outputs=out, backend="numpy")(labels=np.array([2, 0, 3], np.int32))
    np.testing.assert_array_equal(got, np.eye(4)[[2, 0, 3]])


def test_leaf_values():
    g = dg.Graph(dtype="float64")
    c = g.constant(np.arange(6.0).reshape(2, 3))
    w = g.parameter("w", (2, 3), init=np.full((2, 3), 0.5))
    x = g.input("x", (2, 3))
    got = g.compile(outputs=[c, w, x], backend="numpy")(x=np.ones((2, 3)))
    np.testing.assert_array_equal(got[0], np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(got[1], np.full((2, 3), 0.5))
    np.testing.assert_array_equal(got[2], np.ones((2, 3)))


# Composite gradients the per-op checks cannot see: fan-out, n-ary ops, broadcasting.


def test_fan_out_gradients_are_summed(rng):
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 4))
    y = x * x + dg.relu(x)
    xv = rng.uniform(0.1, 2.0, (3, 4)) * rng.choice([-1.0, 1.0], (3, 4))
    (got,) = assert_grads_match_fd(dg.sum(y), [x], {"x": xv})
    np.testing.assert_allclose(got, 2 * xv + (xv > 0), rtol=1e-12)


@pytest.mark.parametrize("n", [3, 4])
@pytest.mark.parametrize("fn", [dg.add, dg.mul])
def test_n_ary_gradients(fn, n, rng):
    g = dg.Graph(dtype="float64")
    shapes = [(None, 3), (3,), (None, 1), (1, 3)][:n]
    xs = [g.input(f"x{i}", s) for i, s in enumerate(shapes)]
    feeds = {f"x{i}": rng.uniform(0.5, 2.0, tuple(2 if d is None else d for d in s)) for i, s in enumerate(shapes)}
    out = fn(*xs)
    assert out.shape == (None, 3)
    r = rng.standard_normal((2, 3))
    feeds["r"] = r
    got = assert_grads_match_fd(dg.sum(out * g.input("r", (None, 3))), xs, feeds)
    values = [feeds[f"x{i}"] for i in range(n)]
    for i, grad in enumerate(got):
        others = [v for j, v in enumerate(values) if j != i]
        # d/dx_i of sum(r * add(...)) is r; of sum(r * mul(...)) it is r times the other factors
        expected = r if fn is dg.add else r * np.prod(np.broadcast_arrays(*others, r)[:-1], axis=0)
        while expected.ndim > values[i].ndim:
            expected = expected.sum(axis=0)
        expected = expected.sum(axis=tuple(a for a, d in enumerate(values[i].shape) if d == 1), keepdims=True)
        np.testing.assert_allclose(grad, expected, rtol=1e-12)


def test_broadcasting_gradients(rng):
    g = dg.Graph(dtype="float64")
    a = g.input("a", (None, 1, 4))
    b = g.input("b", (3, 1))
    s = g.input("s", ())
    out = dg.tanh(a * b) - s / (b * b + 1.0)
    assert out.shape == (None, 3, 4)
    feeds = {"a": rng.standard_normal((2, 1, 4)), "b": rng.standard_normal((3, 1)), "s": np.array(0.7)}
    r = rng.standard_normal((2, 3, 4))
    feeds["r"] = r
    assert_grads_match_fd(dg.sum(out * g.input("r", (None, 3, 4))), [a, b, s], feeds)


def test_mean_over_batch_gradient(rng):
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 3))
    loss = dg.mean(dg.exp(x) * 0.5, axis=(0, 1))
    (got,) = assert_grads_match_fd(loss, [x], {"x": rng.standard_normal((4, 3))})
    assert got.shape == (4, 3)

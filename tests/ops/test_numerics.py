"""Numerics at the edges, on both backends: softmax, log-sum-exp, sigmoid, tanh and softmax
cross-entropy at logits of +-1e4 and +-1e30; Adam without epsilon; and every registry op's
native float64 gradient against finite differences of the native forward.

Tolerances: the expected values are exact closed forms (0, 1, 1/3, log 3, 2|s|), so only the
ops' own rounding separates them: polynomial exp/log/tanh within a few ulps of the true value
(tests/test_mathlib.py), i.e. ~1e-15 in float64 and ~1e-6 after the float32 log and divide."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import FD_ATOL, FD_EPS, FD_RTOL, OPS_WITH_EXAMPLE, build_from_example, call, numeric_grad
from hypothesis import given, settings
from hypothesis import strategies as st

import drug as dg

BACKENDS = ["numpy", "llvm"]
RTOL = {"float32": 1e-6, "float64": 1e-12}
SCALES = [1e4, -1e4, 1e30, -1e30]


def logits_rows(s: float) -> np.ndarray:
    """Rows whose softmax and cross-entropy are known exactly: [s, 0, -s] and [s, s, s]."""
    return np.array([[s, 0.0, -s], [s, s, s], [-s, 0.0, s]])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("s", SCALES)
def test_softmax_family_at_extreme_logits(backend, dtype, s):
    g = dg.Graph(dtype=dtype)
    x, y = g.input("x", (None, 3)), g.input("y", (None,), dtype="int32")
    m = dg.max(x, axis=1, keepdims=True)
    logsumexp = dg.log(dg.sum(dg.exp(x - m), axis=1)) + dg.reshape(m, (None,))
    loss = dg.softmax_cross_entropy(x, y)
    outs = [dg.softmax(x), logsumexp, loss, dg.grad(loss, x), dg.grad(dg.sum(logsumexp), x)]
    xv, yv = logits_rows(s).astype(dtype), np.array([0, 1, 0], np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow or invalid value anywhere
        probs, lse, value, dlogits, dlse = g.compile(outputs=outs, backend=backend)(x=xv, y=yv)
    z = xv.astype(np.float64)  # the closed forms, shifted by the row maximum: nothing overflows
    top = z.max(axis=1, keepdims=True)
    hot = np.exp(z - top) / np.exp(z - top).sum(axis=1, keepdims=True)  # 0, 1 or 1/3 here
    rows = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    losses = rows - z[np.arange(3), yv]  # 0, log 3 or 2|s|
    rtol = RTOL[dtype]
    for got in (probs, lse, value, dlogits, dlse):
        assert np.all(np.isfinite(got)), got
    np.testing.assert_allclose(probs, hot, rtol=rtol, atol=1e-30)
    np.testing.assert_allclose(lse, rows, rtol=rtol)
    np.testing.assert_allclose(value, np.mean(losses), rtol=rtol)
    np.testing.assert_allclose(dlogits, (hot - np.eye(3)[yv]) / 3, rtol=rtol, atol=1e-30)
    np.testing.assert_allclose(dlse, hot, rtol=rtol, atol=1e-30)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_and_tanh_saturate_without_nan(backend, dtype):
    g = dg.Graph(dtype=dtype)
    x = g.input("x", (None,))
    sig, th = dg.sigmoid(x), dg.tanh(x)
    outs = [sig, th, dg.grad(dg.sum(sig), x), dg.grad(dg.sum(th), x)]
    xv = np.array([-1e30, -1e4, -100.0, 100.0, 1e4, 1e30], dtype)
    got = g.compile(outputs=outs, backend=backend)(x=xv)
    np.testing.assert_allclose(got[0], [0, 0, np.exp(-100.0), 1, 1, 1], rtol=RTOL[dtype], atol=1e-43)
    np.testing.assert_array_equal(got[1], np.sign(xv))
    for derivative in got[2:]:
        assert np.all(np.isfinite(derivative)) and np.all(derivative >= 0) and np.all(derivative < 1e-40)


def adam_run(backend: str, x_values: list[np.ndarray]):
    """w_used gets a gradient in step 1 only (x = 0 later), w_dead never gets one: with epsilon 0
    Adam divides 0 by 0 for w_dead (NaN, the reference's answer too) but not for w_used."""
    g = dg.Graph(seed=0, dtype="float64")
    x = g.input("x", (None, 3))
    w_used, w_dead = g.parameter("w_used", (3,)), g.parameter("w_dead", (2,))
    loss = dg.mean(dg.sum(x * w_used, axis=1)) + dg.sum(w_dead * 0.0)
    step = g.compile(loss=loss, optimizer=dg.Adam(0.1, epsilon=0.0), backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 in the reference
        for xv in x_values:
            step(x=xv)
    return {k: v.copy() for k, v in g.params.items()}, {k: v.copy() for k, v in step.state.items()}


def test_adam_without_epsilon_gives_nan_only_where_the_reference_does():
    xs = [np.ones((2, 3)), np.zeros((2, 3)), np.zeros((2, 3))]
    (ref_params, ref_state), (nat_params, nat_state) = adam_run("numpy", xs), adam_run("llvm", xs)
    assert np.all(np.isfinite(ref_params["w_used"])) and np.all(np.isnan(ref_params["w_dead"]))
    for ref, nat in ((ref_params, nat_params), (ref_state, nat_state)):
        for key in ref:
            np.testing.assert_array_equal(np.isnan(nat[key]), np.isnan(ref[key]), err_msg=key)
            finite = ~np.isnan(ref[key])
            np.testing.assert_allclose(nat[key][finite], ref[key][finite], rtol=1e-12, err_msg=key)


REGISTRY = dg.ops.REGISTRY


# ops with a differentiable input (not comparisons, casts to integers, argmax)
DIFFERENTIABLE = [
    n for n in OPS_WITH_EXAMPLE if any(REGISTRY[n].example(np.random.default_rng(0), [2, 2, 2])[1].differentiable)
]


@pytest.mark.parametrize("name", DIFFERENTIABLE)
@settings(max_examples=2, deadline=None)
@given(dims=st.lists(st.integers(1, 3), min_size=3, max_size=3), seed=st.integers(0, 2**32 - 1))
def test_native_gradient_matches_finite_differences(name, dims, seed):
    """test_op_registry.py checks the reference gradients against finite differences and
    test_native_ops.py the native ones against the reference; this closes the loop on the native
    backend alone: its compiled gradient against finite differences of its own forward (float64;
    tolerances: FD_EPS in conftest.py)."""
    rng = np.random.default_rng(seed)
    op, example = REGISTRY[name].example(rng, dims)
    g, nodes, out, feeds = build_from_example(op, example)
    wrt = [n for n, d in zip(nodes, example.differentiable) if d]
    r = rng.standard_normal(np.shape(op.ref(*feeds.values())))
    loss = dg.sum(out * g.input("r", out.shape, dtype=str(out.dtype)))
    feeds = {**feeds, "r": r}
    f_loss = g.compile(outputs=loss, backend="llvm")
    grads = call(g.compile(outputs=dg.grad(loss, wrt), backend="llvm"), feeds)
    for node, got in zip(wrt, grads if isinstance(grads, tuple) else (grads,)):
        expected = numeric_grad(lambda: float(call(f_loss, feeds)), feeds[node.name], FD_EPS)
        np.testing.assert_allclose(got, expected, rtol=FD_RTOL, atol=FD_ATOL, err_msg=f"{name}: d/d {node.name}")

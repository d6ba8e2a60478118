"""@dg.elementwise: scalar Python functions traced into fusable elementwise ops."""

from __future__ import annotations

import math
from math import tanh

import numpy as np
import pytest
from conftest import FD_ATOL, FD_EPS, FD_RTOL, numeric_grad

import drug as dg


@dg.elementwise
def gelu(x):
    return 0.5 * x * (1.0 + tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


@dg.elementwise
def swish(x, beta=1.5):
    return x / (1.0 + math.exp(-beta * x))


@dg.elementwise
def leaky_relu(x):
    if x > 0:
        return x
    return 0.1 * x


@dg.elementwise
def piecewise(x, y):
    """Nested branches, an early return, a conditional expression and builtins that compare."""
    if x < -1.0:
        return -y
    elif x < 1.0:
        t = x * y if y > 0 else x - y
    else:
        t = max(x, y) - min(x, 2.0) + abs(y) ** 0.5
    return t * math.fabs(x)


@dg.elementwise
def wave(x):
    """cos, sin and floor (the primitives learning-rate schedules use); floor's derivative is 0."""
    return math.cos(2.0 * x) * math.sin(x + 0.5) + 0.25 * math.floor(x)


NUMPY_TWINS = {
    gelu: lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    swish: lambda x: x / (1 + np.exp(-1.5 * x)),
    leaky_relu: lambda x: np.where(x > 0, x, 0.1 * x),
    wave: lambda x: np.cos(2 * x) * np.sin(x + 0.5) + 0.25 * np.floor(x),
    piecewise: lambda x, y: np.where(
        x < -1,
        -y,
        np.where(x < 1, np.where(y > 0, x * y, x - y), np.maximum(x, y) - np.minimum(x, 2) + np.sqrt(np.abs(y)))
        * np.abs(x),
    ),
}


def _inputs(fn, rng, n=40):
    # keep away from branch boundaries, where finite differences straddle two pieces
    def sample(size):
        v = rng.uniform(-3, 3, size)
        for edge in (-2.0, -1.0, 0.0, 1.0, 2.0):
            v[np.abs(v - edge) < 0.05] += 0.1
        return v

    arity = 2 if fn is piecewise else 1
    return [sample(n) for _ in range(arity)]


@pytest.mark.parametrize("fn", list(NUMPY_TWINS), ids=lambda f: f.__name__)
def test_forward_matches_numpy_and_python_and_gradient_matches_fd(fn, rng):
    values = _inputs(fn, rng)
    g = dg.Graph(dtype="float64")
    xs = [g.input(f"x{i}", (None,)) for i in range(len(values))]
    y = fn(*xs)
    feeds = {f"x{i}": v for i, v in enumerate(values)}
    expected = NUMPY_TWINS[fn](*values)
    python = [fn(*(float(v[j]) for v in values)) for j in range(len(values[0]))]  # the undecorated function
    np.testing.assert_allclose(expected, python, rtol=1e-12)
    loss = dg.sum(y * y)
    f_loss = g.compile(outputs=loss, backend="numpy")
    for backend in ("numpy", "llvm"):
        got, *grads = g.compile(outputs=[y, *dg.grad(loss, xs)], backend=backend)(**feeds)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
        for name, gv in zip(feeds, grads):
            fd = numeric_grad(lambda: float(f_loss(**feeds)), feeds[name], FD_EPS)
            np.testing.assert_allclose(gv, fd, rtol=FD_RTOL, atol=FD_ATOL, err_msg=f"{backend} d/d{name}")


def test_float32_native_close_to_reference(rng):
    g = dg.Graph()
    x = g.input("x", (None, 64))
    y = gelu(x)
    xv = rng.uniform(-6, 6, (8, 64)).astype(np.float32)
    ref = g.compile(outputs=y, backend="numpy")(x=xv)
    # the polynomial tanh differs from libm by a few ulp
    np.testing.assert_allclose(g.compile(outputs=y)(x=xv), ref, rtol=1e-6, atol=1e-6)


def test_traced_ops_fuse_with_their_neighbours():
    g = dg.Graph()
    x, w = g.input("x", (None, 16)), g.parameter("w", (16, 16))
    h = x @ w
    loss = dg.sum(swish(gelu(h) * 2.0 + 1.0) - leaky_relu(h))
    train = g.compile(loss=loss, optimizer=dg.SGD(0.1))
    # forward chain + its gradient chain: one loop each side of the GEMMs, not one per op
    elementwise = sum(1 for n in train.program.nodes if isinstance(n.op, dg.ops.Elementwise))
    assert train.kernel_count <= 6 < elementwise
    assert np.isfinite(train(x=np.ones((4, 16), np.float32)))


def test_same_function_twice_is_one_op_and_shares_code():
    g = dg.Graph()
    x = g.input("x", (None, 3))
    a, b = gelu(x), gelu(x * 2.0)
    assert a.op is b.op and a.op.key() == b.op.key()
    assert repr(a.op) == "traced(gelu)"


def test_erf_sin_cos_trace_to_native_code(rng):
    """math.erf, math.sin and math.cos trace (the exact GELU by hand) and match the built-in ops,
    on both backends, gradients included."""

    @dg.elementwise
    def wave_gelu(x):
        return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0))) + math.sin(x) * math.cos(2.0 * x)

    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 4))
    traced, builtin = wave_gelu(x), dg.gelu(x) + dg.sin(x) * dg.cos(x * 2.0)
    xv = rng.uniform(-3, 3, (5, 4))
    outs = [traced, builtin, dg.grad(dg.sum(traced), x), dg.grad(dg.sum(builtin), x)]
    for backend in ("numpy", "llvm"):
        got = g.compile(outputs=outs, backend=backend)(x=xv)
        np.testing.assert_allclose(got[0], got[1], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got[2], got[3], rtol=1e-12, atol=1e-12)
    assert wave_gelu(0.5) == 0.5 * 0.5 * (1.0 + math.erf(0.5 / math.sqrt(2.0))) + math.sin(0.5) * math.cos(1.0)


def test_clear_errors():
    with pytest.raises(dg.GraphError, match=r"math\.atan is not supported"):

        @dg.elementwise
        def angle(x):
            return math.atan(x)

    with pytest.raises(dg.GraphError, match="only comparisons can be used as conditions"):

        @dg.elementwise
        def truthy(x):
            return 1.0 if x else 0.0

    with pytest.raises(dg.GraphError, match="converted to a Python float"):

        @dg.elementwise
        def casts(x):
            return float(x) * 2.0

    with pytest.raises(dg.GraphError, match="more than 256 paths"):

        @dg.elementwise
        def staircase(x):
            total = 0.0
            for k in range(10):
                if x > k:
                    total = total + 1.0
            return total

    g = dg.Graph()
    with pytest.raises(dg.GraphError, match="'piecewise' takes 2 inputs, got 1"):
        piecewise(g.input("x", (3,)))

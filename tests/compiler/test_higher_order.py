"""dg.jvp, dg.hessian_vector_product and dg.jacobian: against finite differences and each other,
with both backends (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import FD_ATOL, FD_EPS, FD_RTOL, call, numeric_grad, numeric_jacobian

import drug as dg

BACKENDS = ["numpy", "llvm"]


def _mlp_loss(g, x, y):
    w1, b1 = g.input("w1", (3, 5)), g.input("b1", (5,))
    w2 = g.input("w2", (5, 4))
    h = dg.tanh(x @ w1 + b1)
    return dg.softmax_cross_entropy(dg.sigmoid(h) @ w2 * 2.0, y), [w1, b1, w2]


def _conv_loss(g, x, y):
    k = g.input("k", (2, 1, 3, 3))
    h = dg.relu(dg.conv2d(x, k, padding="same", pad_mode="reflect"))
    pooled = dg.concat([dg.global_pool(h, "avg"), dg.global_pool(h, "max")], axis=1)  # (None, 4)
    return dg.softmax_cross_entropy(pooled * 3.0, y), [k]


NETS = {
    "mlp": (_mlp_loss, (3,), 3),
    "conv": (_conv_loss, (1, 5, 4), 4),
}


def _net(name, rng, batch=2):
    build, x_shape, classes = NETS[name]
    g = dg.Graph(dtype="float64")
    x, y = g.input("x", (None, *x_shape)), g.input("y", (None,), dtype="int32")
    loss, weights = build(g, x, y)
    feeds = {"x": rng.standard_normal((batch, *x_shape)), "y": rng.integers(0, classes, batch).astype(np.int32)}
    for w in weights:
        feeds[w.name] = rng.standard_normal(w.shape)
    return g, loss, weights, feeds


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("net", sorted(NETS))
def test_hessian_vector_product_is_the_derivative_of_the_gradient(net, backend, rng):
    g, loss, weights, feeds = _net(net, rng)
    w = weights[0]
    v = g.input("v", w.shape)
    feeds["v"] = rng.standard_normal(w.shape)
    hv = call(g.compile(outputs=dg.hessian_vector_product(loss, w, v), backend=backend), feeds)
    grad_fn = g.compile(outputs=dg.grad(loss, w), backend="numpy")
    # H v = d/dt grad(w + t v) at t = 0, by central differences of the exact gradient
    base, eps = feeds[w.name].copy(), 1e-5
    plus = call(grad_fn, {**feeds, w.name: base + eps * feeds["v"]})
    minus = call(grad_fn, {**feeds, w.name: base - eps * feeds["v"]})
    np.testing.assert_allclose(hv, (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jvp_equals_jacobian_times_vector_and_finite_differences(backend, rng):
    g = dg.Graph(dtype="float64")
    x, v, w = g.input("x", (None, 3)), g.input("v", (None, 3)), g.input("w", (3, 4))
    y = dg.tanh(x @ w) * dg.sigmoid(x[:, :1]) + dg.softmax(x @ w)
    feeds = {"x": rng.standard_normal((2, 3)), "v": rng.standard_normal((2, 3)), "w": rng.standard_normal((3, 4))}
    jac, jv = call(g.compile(outputs=[dg.jacobian(y, x), dg.jvp(y, x, v)], backend=backend), feeds)
    np.testing.assert_allclose(jv, np.einsum("byx,bx->by", jac, feeds["v"]), rtol=1e-12, atol=1e-14)
    f_y = g.compile(outputs=y, backend="numpy")
    fd = numeric_jacobian(lambda: call(f_y, feeds), feeds["x"], FD_EPS)  # (2, 4, 2, 3): across examples too
    np.testing.assert_allclose(jv, np.einsum("byax,ax->by", fd, feeds["v"]), rtol=FD_RTOL, atol=FD_ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jvp_of_an_unbatched_parameter(backend, rng):
    """Forward mode where reverse mode would need per-example gradients: d y / d w along v."""
    g = dg.Graph(dtype="float64")
    x, w, v = g.input("x", (None, 3)), g.input("w", (3, 2)), g.input("v", (3, 2))
    y = dg.exp(x @ w) / 4.0
    feeds = {"x": rng.standard_normal((5, 3)), "w": rng.standard_normal((3, 2)), "v": rng.standard_normal((3, 2))}
    got = call(g.compile(outputs=dg.jvp(y, w, v), backend=backend), feeds)
    expected = np.exp(feeds["x"] @ feeds["w"]) / 4.0 * (feeds["x"] @ feeds["v"])
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_hvp_of_a_quadratic_is_exact(rng):
    g = dg.Graph(dtype="float64")
    a, x, v = g.input("a", (4, 4)), g.input("x", (4, 1)), g.input("v", (4, 1))
    loss = dg.sum(x * (a @ x)) * 0.5  # H = (A + Aᵀ) / 2
    feeds = {"a": rng.standard_normal((4, 4)), "x": rng.standard_normal((4, 1)), "v": rng.standard_normal((4, 1))}
    got = call(g.compile(outputs=dg.hessian_vector_product(loss, x, v), backend="llvm"), feeds)
    np.testing.assert_allclose(got, (feeds["a"] + feeds["a"].T) / 2 @ feeds["v"], rtol=1e-12)


def test_second_derivative_of_a_traced_function_matches_finite_differences(rng):
    @dg.elementwise
    def softplus(x):
        if x > 20.0:
            return x
        return math.log(1.0 + math.exp(x))

    g = dg.Graph(dtype="float64")
    x, v = g.input("x", (6,)), g.input("v", (6,))
    loss = dg.sum(softplus(x) * x)
    feeds = {"x": np.linspace(-3, 25, 6), "v": rng.standard_normal(6)}
    hv = call(g.compile(outputs=dg.hessian_vector_product(loss, x, v), backend="llvm"), feeds)
    gradient = g.compile(outputs=dg.grad(loss, x), backend="numpy")
    # H is symmetric, so H v is the gradient of <grad, v>
    expected = numeric_grad(lambda: float(call(gradient, feeds) @ feeds["v"]), feeds["x"], FD_EPS)
    np.testing.assert_allclose(hv, expected, rtol=FD_RTOL, atol=1e-6)


def test_errors_name_the_shapes():
    g = dg.Graph()
    x, v = g.input("x", (None, 3)), g.input("v", (None, 2))
    with pytest.raises(dg.GraphError, match=r"jvp: tangent 'v' \(None, 2\).*'x' \(None, 3\)"):
        dg.jvp(dg.tanh(x), x, v)
    with pytest.raises(dg.GraphError, match="needs a scalar loss"):
        dg.hessian_vector_product(dg.tanh(x), x, x)

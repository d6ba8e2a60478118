"""dg.grad and dg.jacobian on composite graphs, against finite differences (float64)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FD_ATOL, FD_EPS, FD_RTOL, assert_grads_match_fd, call, numeric_grad, numeric_jacobian

import drug as dg


def test_mlp_parameter_gradients(rng):
    g = dg.Graph(seed=1, dtype="float64")
    x, y = g.input("x", (None, 5)), g.input("y", (None,), dtype="int32")
    w1, b1 = g.parameter("w1", (5, 4)), g.parameter("b1", (4,), init=rng.standard_normal(4) * 0.1)
    w2, b2 = g.parameter("w2", (4, 3)), g.parameter("b2", (3,), init=rng.standard_normal(3) * 0.1)
    loss = dg.softmax_cross_entropy(dg.tanh(x @ w1 + b1) @ w2 + b2, y)
    feeds = {"x": rng.standard_normal((6, 5)), "y": rng.integers(0, 3, 6).astype(np.int32)}
    f_loss = g.compile(outputs=loss, backend="numpy")
    grads = g.compile(outputs=dg.grad(loss, [w1, b1, w2, b2]), backend="numpy")(**feeds)
    for name, got in zip(["w1", "b1", "w2", "b2"], grads):
        # parameters are live buffers: perturbing them in place perturbs the compiled loss
        expected = numeric_grad(lambda: float(f_loss(**feeds)), g.params[name], FD_EPS)
        np.testing.assert_allclose(got, expected, rtol=FD_RTOL, atol=FD_ATOL, err_msg=name)


def test_single_node_grad_returns_a_node(rng):
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 2))
    dx = dg.grad(dg.sum(dg.exp(x)), x)
    assert isinstance(dx, dg.Node) and dx.shape == (None, 2)
    xv = rng.standard_normal((3, 2))
    np.testing.assert_allclose(g.compile(outputs=dx, backend="numpy")(x=xv), np.exp(xv), rtol=1e-12)


def test_conv_net_gradients(rng):
    g = dg.Graph(dtype="float64")
    x, w1, w2 = g.input("x", (None, 2, 5, 4)), g.input("w1", (3, 2, 3, 3)), g.input("w2", (2, 3, 2, 2))
    v, y = g.input("v", (5, 2)), g.input("y", (None,), dtype="int32")
    h = dg.relu(dg.conv2d(x, w1, padding="same", pad_mode="reflect"))  # (None, 3, 5, 4)
    h2 = dg.tanh(dg.conv2d(h, w2, stride=2, padding="same", pad_mode="replicate"))  # (None, 2, 3, 2)
    feats = dg.concat([dg.global_pool(h2, "max"), dg.global_pool(h, "avg")], axis=1)  # (None, 5)
    loss = dg.softmax_cross_entropy(feats @ v, y)
    feeds = {
        "x": rng.standard_normal((2, 2, 5, 4)),
        "w1": rng.standard_normal((3, 2, 3, 3)) * 0.5,
        "w2": rng.standard_normal((2, 3, 2, 2)) * 0.5,
        "v": rng.standard_normal((5, 2)),
        "y": np.array([1, 0], np.int32),
    }
    assert_grads_match_fd(loss, [x, w1, w2, v], feeds)


def test_embedding_and_shape_ops_gradients(rng):
    g = dg.Graph(dtype="float64")
    ids, table = g.input("ids", (None, 3), dtype="int32"), g.input("table", (5, 4))
    e = dg.embedding(ids, table)  # (None, 3, 4)
    flat = dg.reshape(dg.transpose(e, (0, 2, 1)), (None, 12))
    s = dg.softmax(flat[:, 2:10] * 2.0) - dg.mean(e, axis=1)[:, 0:1]
    loss = dg.sum(s * s) + dg.mean(e[..., -1], axis=0)[1]
    feeds = {"ids": np.array([[0, 4, 4], [2, 0, 1]], np.int32), "table": rng.standard_normal((5, 4))}
    (got,) = assert_grads_match_fd(loss, [table], feeds)
    assert np.all(got[3] == 0.0), "an unused embedding row has zero gradient"


def test_softmax_cross_entropy_gradient_at_large_logits():
    g = dg.Graph(dtype="float64")
    logits, y = g.input("logits", (None, 3)), g.input("y", (None,), dtype="int32")
    lv = np.array([[1e4, 1e4 - 1, 1e4 - 3], [-1e4, -1e4, -1e4 + 2]])
    yv = np.array([1, 0], np.int32)
    got = g.compile(outputs=dg.grad(dg.softmax_cross_entropy(logits, y), logits), backend="numpy")(logits=lv, y=yv)
    z = np.exp(lv - lv.max(1, keepdims=True))
    expected = (z / z.sum(1, keepdims=True) - np.eye(3)[yv]) / 2
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_max_ties_share_the_gradient():
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 4))
    dx = dg.grad(dg.sum(dg.max(x, axis=1)), x)
    got = g.compile(outputs=dx, backend="numpy")(x=np.array([[1.0, 3.0, 3.0, 0.0], [5.0, 1.0, 2.0, 3.0]]))
    np.testing.assert_array_equal(got, [[0.0, 0.5, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]])


def test_second_order_gradient(rng):
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 3))
    dx = dg.grad(dg.sum(x * x * x + dg.tanh(x)), x)  # 3x^2 + 1 - tanh^2
    ddx = dg.grad(dg.sum(dx), x)  # 6x - 2 tanh (1 - tanh^2)
    xv = rng.standard_normal((2, 3))
    t = np.tanh(xv)
    np.testing.assert_allclose(g.compile(outputs=ddx, backend="numpy")(x=xv), 6 * xv - 2 * t * (1 - t * t), rtol=1e-12)


def test_unused_input_has_zero_gradient(rng):
    g = dg.Graph(dtype="float64")
    x, unused = g.input("x", (None, 3)), g.input("unused", (None, 2))
    w = g.parameter("w", (4,))
    loss = dg.sum(dg.exp(x))
    dx, du, dw = dg.grad(loss, [x, unused, w])
    assert du.shape == (None, 2) and dw.shape == (4,)
    xv = rng.standard_normal((5, 3))
    got = call(g.compile(outputs=[dx, du, dw], backend="numpy"), {"x": xv, "unused": rng.standard_normal((5, 2))})
    np.testing.assert_allclose(got[0], np.exp(xv), rtol=1e-12)
    np.testing.assert_array_equal(got[1], np.zeros((5, 2)))
    np.testing.assert_array_equal(got[2], np.zeros(4))


def test_n_ary_mul_with_zero_factors():
    g = dg.Graph(dtype="float64")
    a, b, c = (g.input(n, (None, 3)) for n in "abc")
    av = np.array([[0.0, 2.0, 0.0], [1.5, 0.0, -1.0]])
    bv = np.array([[3.0, 0.0, 0.0], [2.0, 4.0, 0.5]])
    cv = np.array([[-2.0, 5.0, 0.0], [0.5, 1.0, 3.0]])
    feeds = {"a": av, "b": bv, "c": cv}
    da, db, dc = assert_grads_match_fd(dg.sum(dg.mul(a, b, c)), [a, b, c], feeds)
    # the product of the other factors, never out / x (which is 0/0 at a zero)
    np.testing.assert_array_equal(da, bv * cv)
    np.testing.assert_array_equal(db, av * cv)
    np.testing.assert_array_equal(dc, av * bv)


def test_fan_out_through_several_paths(rng):
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 3))
    h = dg.tanh(x)
    y = dg.sum(h * h) + dg.sum(dg.exp(h)) - dg.mean(h + x)
    assert_grads_match_fd(y, [x], {"x": rng.standard_normal((4, 3))})


def test_jacobian_unbatched(rng):
    g = dg.Graph(dtype="float64")
    x, w = g.input("x", (3,)), g.input("w", (2, 3))
    y = dg.reshape(dg.matmul(w, dg.reshape(dg.tanh(x), (3, 1))), (2,))  # (2,)
    jac = dg.jacobian(y, x)
    assert jac.shape == (2, 3)
    xv, wv = rng.standard_normal(3), rng.standard_normal((2, 3))
    got = g.compile(outputs=jac, backend="numpy")(x=xv, w=wv)
    f = g.compile(outputs=y, backend="numpy")
    expected = numeric_jacobian(lambda: f(x=xv, w=wv), xv, FD_EPS)
    np.testing.assert_allclose(got, expected, rtol=FD_RTOL, atol=FD_ATOL)
    np.testing.assert_allclose(got, wv * (1 - np.tanh(xv) ** 2), rtol=1e-12)


def test_jacobian_of_a_matrix_output(rng):
    g = dg.Graph(dtype="float64")
    x = g.input("x", (2, 3))
    y = dg.softmax(x * 2.0, axis=0)  # (2, 3)
    jac = dg.jacobian(y, x)
    assert jac.shape == (2, 3, 2, 3)
    xv = rng.standard_normal((2, 3))
    f = g.compile(outputs=y, backend="numpy")
    expected = numeric_jacobian(lambda: f(x=xv), xv, FD_EPS)
    got = g.compile(outputs=jac, backend="numpy")(x=xv)
    np.testing.assert_allclose(got, expected, rtol=FD_RTOL, atol=FD_ATOL)


def test_jacobian_batched(rng):
    g = dg.Graph(dtype="float64")
    x, w = g.input("x", (None, 3)), g.input("w", (3, 2))
    y = dg.softmax(dg.tanh(x @ w) * x[:, 0:2])  # (None, 2); example i depends on x[i] only
    jac = dg.jacobian(y, x)
    assert jac.shape == (None, 2, 3)
    xv, wv = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    got = g.compile(outputs=jac, backend="numpy")(x=xv, w=wv)
    assert got.shape == (4, 2, 3)
    f = g.compile(outputs=y, backend="numpy")
    full = numeric_jacobian(lambda: f(x=xv, w=wv), xv, FD_EPS)  # (4, 2, 4, 3)
    per_example = np.stack([full[i, :, i, :] for i in range(4)])
    np.testing.assert_allclose(got, per_example, rtol=FD_RTOL, atol=FD_ATOL)


def test_jacobian_of_batched_output_wrt_unbatched_input_is_rejected():
    g = dg.Graph(dtype="float64")
    x, w = g.input("x", (None, 3)), g.input("w", (3, 2))
    with pytest.raises(dg.GraphError, match="per-example"):
        dg.jacobian(x @ w, w)

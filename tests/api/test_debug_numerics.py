"""debug_numerics=True: the first node that produces NaN or Inf is named, and the step changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

import drug as dg

BACKENDS = ["numpy", "llvm"]
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy warns of the NaNs made on purpose


def mlp(epsilon=1e-8):
    g = dg.Graph(seed=0)
    x, y = g.input("x", (None, 6)), g.input("y", (None,), dtype="int32")
    h = dg.layers.Dense(5, "relu", name="fc1")(x)
    loss = dg.softmax_cross_entropy(dg.layers.Dense(3, name="fc2")(h), y).named("loss")
    return g, loss


def batch(n=4):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, 6)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)


def snapshot(g, train):
    return {k: v.copy() for k, v in g.params.items()}, {k: v.copy() for k, v in train.state.items()}


def assert_unchanged(g, train, before, steps):
    params, state = before
    for k, v in params.items():
        np.testing.assert_array_equal(g.params[k], v, err_msg=k)
    for k, v in state.items():
        np.testing.assert_array_equal(train.state[k], v, err_msg=k)
    assert train.step_count == steps


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_a_feed_names_the_first_node_reading_it(backend):
    g, loss = mlp()
    train = g.compile(loss=loss, optimizer=dg.Adam(1e-2), backend=backend, debug_numerics=True)
    x, y = batch()
    assert np.isfinite(train(x=x, y=y))
    before = snapshot(g, train)
    x[2, 3] = np.nan
    with pytest.raises(dg.NonFiniteError) as info:
        train(x=x, y=y)
    message = str(info.value)
    assert message.startswith("debug_numerics: node 'fc1#") and "layer 'fc1' (Dense)" in message
    product = "matmul_bias" if backend == "llvm" else "matmul"  # the LLVM backend adds the bias in the product
    assert f"internal node {product}#" in message and "produced NaN" in message
    assert "'x' NaN (1 of 24 values; the first at index (2, 3))" in message and "'fc1/w' finite" in message
    assert "The step changed nothing" in message
    assert info.value.node.startswith(f"{product}#")
    assert isinstance(info.value, FloatingPointError) and isinstance(info.value, dg.GraphError)
    assert_unchanged(g, train, before, steps=1)
    x[2, 3] = 0.0
    assert np.isfinite(train(x=x, y=y)) and train.step_count == 2  # goes on as before


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_made_inside_the_graph_is_traced_to_its_op(backend):
    g = dg.Graph()
    x = g.input("x", (None, 3))
    w = g.parameter("w", (3,), init="ones")
    out = dg.sum(dg.exp(dg.log(x) * w)).named("out")
    predict = g.compile(outputs=out, backend=backend, debug_numerics=True)
    assert predict(x=np.ones((2, 3), np.float32)) == pytest.approx(6.0)
    with pytest.raises(
        dg.NonFiniteError, match=r"node 'log#\d+' \(op 'log'\) produced NaN .* all its inputs were finite"
    ):
        predict(x=np.array([[1.0, -1.0, 2.0]], np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_inf_in_the_backward_pass_is_named_as_a_gradient(backend):
    g = dg.Graph()
    x = g.input("x", (None, 2))
    w = g.parameter("w", (2,), init="ones")
    loss = dg.sum(dg.sqrt(x * w))
    train = g.compile(loss=loss, optimizer=dg.SGD(0.1), backend=backend, debug_numerics=True)
    before = snapshot(g, train)
    with pytest.raises(dg.NonFiniteError, match=r"in the gradient of sqrt#\d+\) produced Inf"):
        train(x=np.array([[0.0, 1.0]], np.float32))  # d sqrt(u) / du = 1 / (2 sqrt(0))
    assert_unchanged(g, train, before, steps=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_in_the_optimizer_update_restores_every_parameter(backend):
    g = dg.Graph()
    x = g.input("x", (None, 2))
    w, unused = g.parameter("w", (2, 1)), g.parameter("unused", (1,))
    loss = dg.mean(x @ w) + dg.sum(unused * 0.0)
    # Adam with epsilon 0 divides 0 by 0 for a parameter whose gradient is always zero
    train = g.compile(loss=loss, optimizer=dg.Adam(0.1, epsilon=0.0), backend=backend, debug_numerics=True)
    before = snapshot(g, train)
    with pytest.raises(dg.NonFiniteError, match=r"produced NaN") as info:
        train(x=np.ones((3, 2), np.float32))
    assert "update of unused" in str(info.value) or "optimizer update of 'unused'" in str(info.value)
    assert_unchanged(g, train, before, steps=0)


def test_without_debug_numerics_nan_propagates_silently():
    g, loss = mlp()
    train = g.compile(loss=loss, optimizer=dg.SGD(0.1))
    x, y = batch()
    x[0, 0] = np.nan
    assert np.isnan(train(x=x, y=y))
    assert np.isnan(g.params["fc1/w"]).any()


def test_a_custom_ops_python_forward_is_checked_too():
    class Poison(dg.Op):
        name = "poison"
        arity = 1

        def infer(self, x):
            return x

        def ref(self, x):
            out = np.array(x, copy=True)
            out[..., 0] = np.inf
            return out

    g = dg.Graph()
    x = g.input("x", (None, 3))
    predict = g.compile(outputs=dg.relu(Poison()(x)), debug_numerics=True)
    with pytest.raises(dg.NonFiniteError, match=r"node 'poison#\d+' \(op 'poison'\) produced Inf \(2 of 6 values"):
        predict(x=np.ones((2, 3), np.float32))


def test_numerics_build_computes_what_the_plain_build_does():
    g, loss = mlp()
    x, y = batch(16)
    plain = g.compile(loss=loss, optimizer=dg.SGD(0.1))
    checked = g.compile(loss=loss, optimizer=dg.SGD(0.1), debug_numerics=True)
    start = {k: v.copy() for k, v in g.params.items()}
    a = [plain(x=x, y=y) for _ in range(3)]
    for k, v in start.items():
        g.params[k][...] = v
    b = [checked(x=x, y=y) for _ in range(3)]
    np.testing.assert_allclose(a, b, rtol=1e-6)

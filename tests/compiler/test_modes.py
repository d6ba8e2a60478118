"""Training and inference modes (compiler/modes.py) and graph state buffers (Graph.buffer): a
mode-dependent op specializes per program, its buffer updates run in train steps, both backends
agree, and checkpoints carry the buffers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import skip_unless_available, unavailable

import drug as dg
from drug.core.op import Op, Specialized

BACKENDS = ("numpy", "llvm", "opencl")


class Centered(dg.Op):
    """Training: x minus its batch mean, and a running mean tracked in a state buffer.
    Inference: x minus the running mean (batch norm without the scale, in miniature)."""

    name = "test_centered"
    arity = 1
    mode_dependent = True

    def __init__(self, buffer: str):
        self.buffer = buffer

    def infer(self, x):
        return x

    def specialize(self, inputs, training):
        (x,) = inputs
        running = x.graph[self.buffer]
        if training:
            mean = dg.mean(x, 0)
            return Specialized(x - mean, ((running, running * 0.9 + mean * 0.1),))
        return Specialized(x - running)


def _model():
    g = dg.Graph(seed=1, dtype="float64")
    x = g.input("x", (None, 3))
    w = g.parameter("w", (3, 3))
    g.buffer("running", np.zeros(3))
    h = Centered("running")(x @ w)
    return g, x, h, dg.mean(h * h)


X = np.arange(12.0).reshape(4, 3) / 7.0


def _reference_run(steps: int):
    """What the modes mean, step by step in NumPy, with the same SGD."""
    g, _, _, _ = _model()
    w, running = g.params["w"].copy(), np.zeros(3)
    for _ in range(steps):
        h = X @ w
        mean = h.mean(0)
        c = h - mean
        # d mean(c^2)/dw with c = h - mean(h): the mean's own gradient cancels
        grad = X.T @ (2 * c / c.size - (2 * c / c.size).mean(0))
        running = running * 0.9 + mean * 0.1
        w = w - 0.1 * grad
    return w, running


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_step_updates_the_buffer_and_a_predictor_reads_it(backend):
    skip_unless_available(backend)
    g, x, h, loss = _model()
    train = g.compile(loss=loss, optimizer=dg.SGD(0.1), backend=backend)
    predict = g.compile(outputs=h, backend=backend)
    for _ in range(3):
        train(x=X)
    w, running = _reference_run(3)
    np.testing.assert_allclose(g.params["w"], w, rtol=1e-10)
    np.testing.assert_allclose(g.state["running"], running, rtol=1e-10)
    np.testing.assert_allclose(predict(x=X), X @ w - running, rtol=1e-10)
    before = g.state["running"].copy()
    predict(x=X)
    np.testing.assert_array_equal(g.state["running"], before)  # inference leaves state alone


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_flag_overrides_the_default_mode(backend):
    skip_unless_available(backend)
    g, x, h, loss = _model()
    in_training = g.compile(outputs=h, training=True, backend=backend)
    out = in_training(x=X)
    z = X @ g.params["w"]
    np.testing.assert_allclose(out, z - z.mean(0), rtol=1e-10)
    np.testing.assert_allclose(g.state["running"], 0.1 * z.mean(0), rtol=1e-10)  # training mode updates it
    evaluate = g.compile(loss=loss, optimizer=dg.SGD(0.1), training=False, backend=backend)
    evaluate(x=X)  # a train step in inference mode: running statistics used, not updated
    np.testing.assert_allclose(g.state["running"], 0.1 * z.mean(0), rtol=1e-10)


def test_both_backends_agree_over_steps():
    results = []
    for backend in [b for b in BACKENDS if not unavailable(b)]:
        g, x, h, loss = _model()
        train = g.compile(loss=loss, optimizer=dg.Adam(0.01), backend=backend)
        losses = [train(x=X) for _ in range(5)]
        results.append((losses, g.state["running"].copy(), g.params["w"].copy()))
    first, *others = results
    for other in others:
        for a, b in zip(first, other):
            np.testing.assert_allclose(a, b, rtol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoints_carry_state_buffers(backend, tmp_path):
    skip_unless_available(backend)
    g, x, h, loss = _model()
    train = g.compile(loss=loss, optimizer=dg.SGD(0.1), backend=backend)
    train(x=X)
    saved = g.state["running"].copy()
    train.save(tmp_path / "ck.npz")
    train(x=X)
    assert not np.array_equal(g.state["running"], saved)
    train.load(tmp_path / "ck.npz")
    np.testing.assert_array_equal(g.state["running"], saved)

    # a predictor of a graph whose checkpoint lacks the buffer refuses it, naming the buffer
    g2 = dg.Graph(seed=1, dtype="float64")
    x2 = g2.input("x", (None, 3))
    w2 = g2.parameter("w", (3, 3))
    plain = g2.compile(loss=dg.mean(x2 @ w2), optimizer=dg.SGD(0.1), backend=backend)
    plain.save(tmp_path / "plain.npz")
    predict = g.compile(outputs=h, backend=backend)
    with pytest.raises(dg.GraphError, match="missing state buffer 'running'"):
        predict.load(tmp_path / "plain.npz")


def test_a_buffer_updated_twice_in_one_step_is_refused():
    g, x, h, loss = _model()
    twice = Centered("running")(h)
    with pytest.raises(dg.GraphError, match="updated by two nodes"):
        g.compile(loss=dg.mean(twice * twice), optimizer=dg.SGD(0.1), backend="numpy")


def test_a_specialization_of_the_wrong_type_is_refused():
    class Wrong(Op):
        name = "test_wrong_mode"
        arity = 1
        mode_dependent = True

        def infer(self, x):
            return x

        def specialize(self, inputs, training):
            return Specialized(dg.sum(inputs[0], 1))

    g = dg.Graph()
    x = g.input("x", (None, 3))
    with pytest.raises(dg.GraphError, match="test_wrong_mode.*specializes to"):
        g.compile(outputs=Wrong()(x), backend="numpy")


def test_buffers_are_named_nodes_with_their_initial_value():
    g = dg.Graph(dtype="float32")
    counter = g.buffer("counter", 0, dtype="int64")
    stats = g.buffer("stats", [1.0, 2.0])
    assert g["counter"] is counter and counter.dtype == np.int64 and counter.shape == ()
    assert stats.dtype == np.float32 and g.state["stats"].tolist() == [1.0, 2.0]
    with pytest.raises(dg.GraphError, match="duplicate node name 'stats'"):
        g.buffer("stats", 0.0)
    with pytest.raises(dg.GraphError, match="no state buffer named 'missing'"):
        g.state["missing"]

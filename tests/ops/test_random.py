"""In-graph randomness: Philox-4x32-10 against Random123's known answers, the same bits on both
backends, fresh numbers every call (one counter step per call, whatever the number of random
ops), checkpoints that resume the stream, dropout's training and inference modes and its
gradient, and a failed step that draws nothing."""

from __future__ import annotations

import numpy as np
import pytest

import drug as dg
from drug.ops.random import philox, philox_key

BACKENDS = ("numpy", "llvm")
COUNTER = "random/step"

# Random123's kat_vectors for philox4x32 with 10 rounds: (counter, key) -> output
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, expected):
    words = philox(tuple(np.array([c], np.uint64) for c in counter), key)
    assert tuple(int(w[0]) for w in words) == expected


def _draws(dtype: str, seed: int = 5):
    g = dg.Graph(seed=seed, dtype=dtype)
    x = g.input("x", (None, 300))
    return g, x, [dg.random_uniform(x), dg.random_normal(x), dg.random_uniform(g, (4, 50), low=-2.0, high=3.0)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_both_backends_draw_the_same_numbers(dtype):
    """Uniforms bit for bit (integer arithmetic and exact conversions); normals to rounding (log
    and cos); the affine map of the fixed-shape draw to one fused multiply-add."""
    results = {}
    for backend in BACKENDS:
        g, x, outs = _draws(dtype)
        fn = g.compile(outputs=outs, backend=backend)
        results[backend] = [fn(x=np.zeros((7, 300), dtype)) for _ in range(3)]
    for (u_ref, z_ref, c_ref), (u, z, c) in zip(results["numpy"], results["llvm"]):
        np.testing.assert_array_equal(u, u_ref)
        np.testing.assert_allclose(z, z_ref, rtol=1e-6 if dtype == "float32" else 1e-13, atol=1e-6)
        np.testing.assert_allclose(c, c_ref, rtol=1e-6, atol=1e-6)
        assert u.dtype == z.dtype == c.dtype == np.dtype(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fresh_numbers_every_call_and_one_counter_step_per_call(backend):
    g, x, outs = _draws("float32")
    fn = g.compile(outputs=outs, backend=backend)
    xv = np.zeros((1000, 300), np.float32)
    first, second = fn(x=xv), fn(x=xv)
    assert g.state[COUNTER] == 2  # three random ops, one step per call
    assert not np.array_equal(first[0], second[0]) and not np.array_equal(first[2], second[2])
    u, z, c = first
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.01
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01
    assert -2.0 <= c.min() and c.max() < 3.0
    assert not np.array_equal(u, (z > 0).astype(u.dtype))  # the ops have streams of their own
    g.state[COUNTER][...] = 0
    np.testing.assert_array_equal(fn(x=xv)[0], u)  # the counter is the whole state


def test_graphs_with_other_seeds_draw_other_numbers():
    a, b = (
        g.compile(outputs=outs)(x=np.zeros((2, 300), np.float32))
        for g, _, outs in (_draws("float32", 1), _draws("float32", 2))
    )
    assert not np.array_equal(a[0], b[0])
    assert philox_key(1, 0) != philox_key(1, 1) != philox_key(2, 0)


def _dropout_model(seed: int = 0, rate: float = 0.5):
    g = dg.Graph(seed=seed, dtype="float64")
    x = g.input("x", (None, 6))
    y = g.input("y", (None,), dtype="int32")
    h = dg.dropout(dg.layers.Dense(16, activation="tanh", name="fc1")(x), rate)
    logits = dg.layers.Dense(3, name="fc2")(h)
    return g, x, h, dg.softmax_cross_entropy(logits, y)


X = np.random.default_rng(0).standard_normal((8, 6))
Y = np.arange(8, dtype=np.int32) % 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_is_active_in_train_steps_and_the_identity_in_predictors(backend):
    g, x, h, loss = _dropout_model(rate=0.25)
    predict = g.compile(outputs=h, backend=backend)
    train_mode = g.compile(outputs=h, backend=backend, training=True)
    clean = predict(x=X)
    assert g.random_counter is not None and g.state[COUNTER] == 0  # inference draws nothing
    dropped = train_mode(x=X)
    assert g.state[COUNTER] == 1
    kept = dropped != 0
    np.testing.assert_allclose(dropped[kept], clean[kept] / 0.75, rtol=1e-12)  # inverted dropout's scaling
    assert 0.5 < kept.mean() < 0.95
    train = g.compile(loss=loss, optimizer=dg.SGD(0.1), backend=backend)
    assert "random/step" in train.buffers
    evaluate = g.compile(loss=loss, optimizer=dg.SGD(0.0), backend=backend, training=False)
    assert "random/step" not in evaluate.buffers


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_gradient_uses_the_forward_mask(backend):
    g = dg.Graph(seed=3, dtype="float64")
    x = g.input("x", (None, 40))
    r = g.input("r", (None, 40))
    out = dg.dropout(x, 0.4)
    fn = g.compile(outputs=[out, dg.grad(dg.sum(out * r), x)], backend=backend, training=True)
    xv, rv = np.random.default_rng(1).uniform(1, 2, (5, 40)), np.random.default_rng(2).standard_normal((5, 40))
    value, grad = fn(x=xv, r=rv)
    np.testing.assert_allclose(grad, np.where(value != 0, rv / 0.6, 0.0), rtol=1e-12)


def test_both_backends_train_alike_with_dropout():
    losses = {}
    for backend in BACKENDS:
        g, *_, loss = _dropout_model()
        train = g.compile(loss=loss, optimizer=dg.Adam(0.05), backend=backend)
        losses[backend] = [train(x=X, y=Y) for _ in range(5)]
    np.testing.assert_allclose(losses["llvm"], losses["numpy"], rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_resumed_run_draws_what_an_uninterrupted_one_would(backend, tmp_path):
    g, *_, loss = _dropout_model()
    train = g.compile(loss=loss, optimizer=dg.Adam(0.05), backend=backend)
    straight = [train(x=X, y=Y) for _ in range(6)]
    g1, *_, loss1 = _dropout_model()
    first = g1.compile(loss=loss1, optimizer=dg.Adam(0.05), backend=backend)
    for _ in range(3):
        first(x=X, y=Y)
    first.save(tmp_path / "half.npz")
    g2, *_, loss2 = _dropout_model(seed=0)
    second = g2.compile(loss=loss2, optimizer=dg.Adam(0.05), backend=backend)
    second.load(tmp_path / "half.npz")
    assert g2.state[COUNTER] == 3
    resumed = [second(x=X, y=Y) for _ in range(3)]
    np.testing.assert_array_equal(resumed, straight[3:])
    for name in g.params:
        np.testing.assert_array_equal(g2.params[name], g.params[name])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_step_draws_nothing_and_changes_nothing(backend):
    g = dg.Graph(seed=0, dtype="float64")
    ids = g.input("ids", (None,), dtype="int32")
    table = g.parameter("table", (5, 4))
    h = dg.dropout(dg.embedding(ids, table), 0.5)
    train = g.compile(loss=dg.mean(h * h), optimizer=dg.SGD(0.1), backend=backend)
    train(ids=np.array([0, 1, 2], np.int32))
    before = {k: v.copy() for k, v in g.params.items()} | {COUNTER: g.state[COUNTER].copy()}
    with pytest.raises(dg.ShapeError, match="out of range"):
        train(ids=np.array([0, 7, 2], np.int32))
    assert g.state[COUNTER] == before[COUNTER]
    np.testing.assert_array_equal(g.params["table"], before["table"])


def test_bad_rates_and_sources_are_refused():
    g = dg.Graph()
    x = g.input("x", (None, 3))
    for rate in (1.0, -0.1, 2):
        with pytest.raises(dg.GraphError, match=r"dropout of 'x' \(None, 3\) float32: rate must be in \[0, 1\)"):
            dg.dropout(x, rate)
    with pytest.raises(dg.GraphError, match="rate must be in"):
        dg.layers.Dropout(1.5)
    with pytest.raises(dg.ShapeError, match="batch dimension"):
        dg.random_uniform(g, (None, 3))
    with pytest.raises(dg.GraphError, match="a graph needs a shape"):
        dg.random_normal(g)
    assert dg.dropout(x, 0.0).op.rate == 0.0
    np.testing.assert_array_equal(
        g.compile(outputs=dg.dropout(x, 0.0), training=True)(x=np.ones((2, 3), np.float32)), 1
    )

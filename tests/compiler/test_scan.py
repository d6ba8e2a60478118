"""dg.scan: equal to the unrolled graph (outputs and gradients), finite differences, both
backends, training, and a compiled size that does not grow with the sequence length."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_grads_match_fd, call

import drug as dg
from drug import layers as L

BACKENDS = ["numpy", "llvm"]


def _rnn(g, T=5, H=4, C=3):
    xs, h0 = g.input("xs", (T, None, C)), g.input("h0", (None, H))
    w, u = g.input("w", (C, H)), g.input("u", (H, H))
    return xs, h0, w, u


def _feeds(rng, T=5, H=4, C=3, batch=2):
    return {
        "xs": rng.standard_normal((T, batch, C)),
        "h0": rng.standard_normal((batch, H)),
        "w": rng.standard_normal((C, H)) * 0.6,
        "u": rng.standard_normal((H, H)) * 0.6,
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_equals_the_unrolled_loop(backend, rng):
    g = dg.Graph(dtype="float64")
    xs, h0, w, u = _rnn(g)
    step = lambda h, x: (dg.tanh(x @ w + h @ u), dg.sigmoid(h) * 2.0)  # noqa: E731 - y reads the old carry
    last, ys = dg.scan(step, h0, xs)
    assert last.shape == (None, 4) and ys.shape == (5, None, 4)
    h, unrolled = h0, []
    for t in range(5):
        h, y = step(h, xs[t])
        unrolled.append(dg.reshape(y, (1, None, 4)))
    stacked = dg.concat(unrolled, axis=0)
    loss_scan = dg.sum(ys * ys) + dg.sum(last)
    loss_unrolled = dg.sum(stacked * stacked) + dg.sum(h)
    wrt = [xs, h0, w, u]
    feeds = _feeds(rng)
    got = call(g.compile(outputs=[last, ys, loss_scan, *dg.grad(loss_scan, wrt)], backend=backend), feeds)
    want = call(g.compile(outputs=[h, stacked, loss_unrolled, *dg.grad(loss_unrolled, wrt)], backend="numpy"), feeds)
    for name, a, b in zip(["last", "ys", "loss", "d xs", "d h0", "d w", "d u"], got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=name)


def test_scan_gradients_match_finite_differences(rng):
    g = dg.Graph(dtype="float64")
    xs, h0, w, u = _rnn(g, T=4)
    last, ys = dg.scan(lambda h, x: (dg.tanh(x @ w + h @ u) * h, dg.exp(h * 0.5)), h0, xs)
    loss = dg.sum(ys * ys) * 0.1 + dg.sum(last * last)
    assert_grads_match_fd(loss, [xs, h0, w, u], _feeds(rng, T=4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_several_carries_and_xs_reverse_and_integer_inputs(backend, rng):
    """Carries (h, count), xs (ids, mask), no y; reverse order; an embedding inside the body."""
    g = dg.Graph(dtype="float64")
    ids, mask = g.input("ids", (6, None), dtype="int32"), g.input("mask", (6, None, 1))
    table, h0 = g.input("table", (7, 3)), g.input("h0", (None, 3))
    count = g.input("count", ())

    def body(carry, x):
        h, n = carry
        i, m = x
        return (dg.tanh(dg.embedding(i, table) + h) * m + h * (1.0 - m), n + 1.0), None

    (h, n), ys = dg.scan(body, (h0, count), (ids, mask), reverse=True)
    assert ys is None
    feeds = {
        "ids": rng.integers(0, 7, (6, 2)).astype(np.int32),
        "mask": (rng.uniform(size=(6, 2, 1)) > 0.3).astype(np.float64),
        "table": rng.standard_normal((7, 3)),
        "h0": rng.standard_normal((2, 3)),
        "count": np.array(2.0),
    }
    loss = dg.sum(h * h) + n
    got_h, got_n, d_table, d_h0 = call(g.compile(outputs=[h, n, *dg.grad(loss, [table, h0])], backend=backend), feeds)
    expected = feeds["h0"]
    for t in reversed(range(6)):
        m = feeds["mask"][t]
        expected = np.tanh(feeds["table"][feeds["ids"][t]] + expected) * m + expected * (1 - m)
    np.testing.assert_allclose(got_h, expected, rtol=1e-12)
    assert float(got_n) == 8.0
    assert_grads_match_fd(loss, [table, h0], feeds)
    ref = call(g.compile(outputs=dg.grad(loss, [table, h0]), backend="numpy"), feeds)
    np.testing.assert_allclose(d_table, ref[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(d_h0, ref[1], rtol=1e-10, atol=1e-12)


def test_gru_layer_scan_equals_unrolled_and_trains_the_same(rng):
    def build(scan: bool):
        g = dg.Graph(seed=3)
        ids, targets = g.input("ids", (None, 12), dtype="int32"), g.input("targets", (None, 12), dtype="int32")
        cell = L.GRUCell(16, name="gru")
        states, _ = cell.sequence(L.Embedding(9, 8, name="emb")(ids), scan=scan)
        loss = dg.softmax_cross_entropy(L.Dense(9, name="out")(states), targets)
        return g, g.compile(loss=loss, optimizer=dg.Adam(1e-2))

    batches = [{k: rng.integers(0, 9, (n, 12)).astype(np.int32) for k in ("ids", "targets")} for n in (4, 4, 3, 1, 4)]
    (g1, unrolled), (g2, scanned) = build(False), build(True)
    assert sorted(g1.params) == sorted(g2.params)
    for feeds in batches:  # variable batch sizes, one compiled step
        np.testing.assert_allclose(scanned(**feeds), unrolled(**feeds), rtol=2e-5)
    for name in g1.params:
        np.testing.assert_allclose(g2.params[name], g1.params[name], rtol=2e-4, atol=2e-6, err_msg=name)


def test_compiled_code_does_not_grow_with_the_length():
    def ir_size(T: int) -> tuple[int, int]:
        g = dg.Graph()
        xs = g.input("xs", (T, None, 8))
        w = g.parameter("w", (8, 8))
        last, ys = dg.scan(lambda h, x: (dg.tanh(x @ w + h), h), g.input("h0", (None, 8)), xs)
        train = g.compile(loss=dg.mean(ys * ys) + dg.mean(last), optimizer=dg.SGD(0.1))
        return train.ir().count("\n"), train.ir().count("define ")  # lines and functions

    assert ir_size(8) == ir_size(256)


def test_nested_scan(rng):
    g = dg.Graph(dtype="float64")
    xss = g.input("xss", (3, 4, None, 2))
    inner = lambda c, x: (c * 0.5 + dg.tanh(x), c)  # noqa: E731
    outer = lambda c, xs: (dg.scan(inner, c, xs)[0] * 2.0, None)  # noqa: E731
    total, _ = dg.scan(outer, g.input("c0", (None, 2)), xss)
    feeds = {"xss": rng.standard_normal((3, 4, 2, 2)), "c0": rng.standard_normal((2, 2))}
    expected = feeds["c0"]
    for xs in feeds["xss"]:
        for x in xs:
            expected = expected * 0.5 + np.tanh(x)
        expected = expected * 2.0
    for backend in BACKENDS:
        np.testing.assert_allclose(g.compile(outputs=total, backend=backend)(**feeds), expected, rtol=1e-12)
    grad = dg.grad(dg.sum(total * total), g["c0"])
    np.testing.assert_allclose(
        g.compile(outputs=grad, backend="llvm")(**feeds), g.compile(outputs=grad, backend="numpy")(**feeds), rtol=1e-10
    )


def test_clear_errors():
    g = dg.Graph()
    xs, h0 = g.input("xs", (4, None, 3)), g.input("h0", (None, 3))
    with pytest.raises(dg.ShapeError, match=r"carry 'h0' \(None, 3\) float32 comes back from fn as .*\(None, 2\)"):
        dg.scan(lambda h, x: (h[:, :2], None), h0, xs)
    with pytest.raises(dg.ShapeError, match="needs a static leading axis"):
        dg.scan(lambda h, x: (h, None), h0, g.input("bad", (None, 3)))
    with pytest.raises(dg.ShapeError, match="disagree"):
        dg.scan(lambda h, x: (h, None), h0, xs, length=5)
    with pytest.raises(dg.GraphError, match="must return a pair"):
        dg.scan(lambda h, x: h, h0, xs)

    class Twice(dg.Op):  # a custom op with no native kernel cannot run inside a native loop
        name = "test_twice"
        arity = 1

        def infer(self, t):
            return t

        def ref(self, x):
            return 2 * x

    last, _ = dg.scan(lambda h, x: (Twice()(h + x), None), h0, xs)
    feeds = {"xs": np.ones((4, 1, 3), np.float32), "h0": np.zeros((1, 3), np.float32)}
    np.testing.assert_allclose(g.compile(outputs=last, backend="numpy")(**feeds), 30.0)  # 2, 6, 14, 30
    with pytest.raises(dg.GraphError, match="'test_twice'.*no native kernel"):
        g.compile(outputs=last, backend="llvm")(**feeds)


def test_a_failing_body_stops_the_step_before_any_update():
    """An embedding id out of range inside the loop body: a clear error, parameters unchanged."""
    g = dg.Graph()
    ids, h0 = g.input("ids", (4, None), dtype="int32"), g.input("h0", (None, 3))
    table, w = g.parameter("table", (5, 3)), g.parameter("w", (3, 3))
    last, _ = dg.scan(lambda h, i: (dg.tanh(dg.embedding(i, table) @ w + h), None), h0, ids)
    train = g.compile(loss=dg.mean(last * last), optimizer=dg.SGD(0.1))
    before = {k: v.copy() for k, v in g.params.items()}
    h = np.ones((1, 3), np.float32)
    with pytest.raises(dg.ShapeError, match="out of range"):
        train(ids=np.array([[0], [1], [7], [2]], np.int32), h0=h)
    for k, v in g.params.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    train(ids=np.array([[0], [1], [4], [2]], np.int32), h0=h)
    assert not np.array_equal(g.params["w"], before["w"])

"""Focused checks of the model-language ops beyond the registry's: NumPy semantics of comparisons,
where, casts, argmax, take/gather, cumsum and pad on both backends; layer_norm's numerics; and
bad inputs (ids out of range, NaN cast to int, dtype mismatches) refused with errors that name
the node, before anything changes."""

from __future__ import annotations

import numpy as np
import pytest

import drug as dg

BACKENDS = ("numpy", "llvm")


def run(outputs, backend, **feeds):
    g = (outputs[0] if isinstance(outputs, list) else outputs).graph
    return g.compile(outputs=outputs, backend=backend)(**feeds)


@pytest.mark.parametrize("backend", BACKENDS)
def test_comparisons_are_node_operators_with_numpy_semantics(backend):
    g = dg.Graph()
    x, y = g.input("x", (None, 4)), g.input("y", (4,))
    ids = g.input("ids", (None, 4), dtype="int32")
    outs = [x < y, x <= y, x > 0.5, x >= y, x == y, x != y, ids == 2, ids >= ids * 2 - 1, (x > 0) & (ids != 0)]
    outs += [(x > 0) | (ids == 1), ~(x > 0), (x > 0) ^ (y > 0)]
    assert all(o.dtype == np.bool_ for o in outs)
    xv = np.array([[0.0, 1.0, np.nan, -2.0], [3.0, 0.5, 1.0, np.inf]], np.float32)
    yv = np.array([0.0, 2.0, np.nan, -np.inf], np.float32)
    iv = np.array([[0, 1, 2, 3], [2, 2, 0, 1]], np.int32)
    expected = [xv < yv, xv <= yv, xv > 0.5, xv >= yv, xv == yv, xv != yv, iv == 2, iv >= iv * 2 - 1]
    expected += [(xv > 0) & (iv != 0), (xv > 0) | (iv == 1), ~(xv > 0), (xv > 0) ^ (yv > 0)]
    with np.errstate(invalid="ignore"):
        got = run(outs, backend, x=xv, y=yv, ids=iv)
    for a, b in zip(got, expected):
        assert a.dtype == np.bool_
        np.testing.assert_array_equal(a, b)


def test_nodes_hash_by_identity_and_compare_into_nodes():
    g = dg.Graph()
    a, b = g.input("a", (2,)), g.input("b", (2,))
    assert len({a, b, a}) == 2 and {a: 1}[a] == 1
    assert isinstance(a == b, dg.Node)
    with pytest.raises(dg.GraphError, match="cannot be used as a bool"):
        bool(a == b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_where_routes_the_gradient_to_the_selected_side(backend):
    g = dg.Graph(dtype="float64")
    x, y = g.input("x", (None, 3)), g.input("y", (None, 3))
    out = dg.where(x > y, x * 2.0, y * y)
    gx, gy = dg.grad(dg.sum(out), [x, y])
    xv, yv = np.array([[1.0, -1.0, 3.0]]), np.array([[0.0, 2.0, 5.0]])
    value, dx, dy = run([out, gx, gy], backend, x=xv, y=yv)
    np.testing.assert_array_equal(value, np.where(xv > yv, 2 * xv, yv * yv))
    np.testing.assert_array_equal(dx, np.where(xv > yv, 2.0, 0.0))
    np.testing.assert_array_equal(dy, np.where(xv > yv, 0.0, 2 * yv))


@pytest.mark.parametrize("backend", BACKENDS)
def test_casts_follow_numpy_astype(backend):
    g = dg.Graph()
    x = g.input("x", (None,))
    i = g.input("i", (None,), dtype="int32")
    outs = [
        x.astype("int32"),
        x.astype("bool"),
        x.astype("float64"),
        i.astype("float32"),
        i.astype("bool"),
        (x > 0).astype("int32"),
        (x > 0).astype("float32"),
        i.astype("int64"),
        dg.cast(x, np.float32),
    ]
    assert outs[-1] is x  # casting to its own dtype is the node itself
    xv = np.array([-2.7, -0.5, 0.0, 0.5, 1.9, 1e9, -1e9, np.nan], np.float32)
    iv = np.array([-3, 0, 1, 2, 7, -1, 5, 0], np.int32)
    finite = xv[:-1]
    got = run(outs[1:-1], backend, x=xv, i=iv)
    np.testing.assert_array_equal(run(outs[0], backend, x=finite), finite.astype(np.int32))
    expected = [
        xv.astype(bool),
        xv.astype(np.float64),
        iv.astype(np.float32),
        iv.astype(bool),
        (xv > 0).astype(np.int32),
        (xv > 0).astype(np.float32),
        iv.astype(np.int64),
    ]
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, 3e9])
def test_casting_a_value_no_integer_holds_stops_the_step(backend, bad):
    g = dg.Graph()
    x = g.input("x", (None, 2))
    w = g.parameter("w", (2, 2))
    h = x @ w
    picked = dg.take(g.parameter("table", (4, 2)), x[:, 0].astype("int32"))
    step = g.compile(loss=dg.sum(h * h) + dg.sum(picked), optimizer=dg.SGD(0.1), backend=backend)
    step(x=np.ones((2, 2), np.float32))
    before = {k: v.copy() for k, v in g.params.items()}
    with pytest.raises(
        dg.GraphError,
        match=r"node 'float_to_int#\d+' \(op 'float_to_int'\): cannot cast (nan|inf|3000000000.0) to int32",
    ):
        step(x=np.array([[1.0, 0.0], [bad, 1.0]], np.float32))
    for name, value in before.items():
        np.testing.assert_array_equal(g.params[name], value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_argmax_argmin_like_numpy(backend):
    g = dg.Graph()
    x = g.input("x", (3, 5))
    xv = np.array([[1, 3, 3, -1, 0], [np.nan, 2, np.nan, 9, -9], [0, 0, 0, 0, 0]], np.float32)
    got = run([dg.argmax(x), dg.argmin(x), dg.argmax(x, 0)], backend, x=xv)
    for a, b in zip(got, [np.argmax(xv, -1), np.argmin(xv, -1), np.argmax(xv, 0)]):
        assert a.dtype == np.int32
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_take_and_gather_like_numpy_with_scatter_add_gradients(backend, rng):
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 5, 3))
    ids = g.input("ids", (2, 4), dtype="int64")
    picks = g.input("picks", (None, 2, 3), dtype="int32")
    taken, gathered = dg.take(x, ids, axis=1), dg.gather(x, picks, axis=1)
    grads = dg.grad(dg.sum(taken * taken) + dg.sum(gathered), x)
    xv = rng.standard_normal((2, 5, 3))
    iv, pv = np.array([[0, 4, 4, 1], [2, 2, 2, 0]]), rng.integers(0, 5, (2, 2, 3)).astype(np.int32)
    t, gth, dx = run([taken, gathered, grads], backend, x=xv, ids=iv, picks=pv)
    np.testing.assert_array_equal(t, np.take(xv, iv, axis=1))
    np.testing.assert_array_equal(gth, np.take_along_axis(xv, pv, axis=1))
    expected = np.zeros_like(xv)
    np.add.at(expected, (slice(None), iv.ravel()), 2 * np.take(xv, iv.ravel(), axis=1))
    for b in range(2):
        for j in range(2):
            for c in range(3):
                expected[b, pv[b, j, c], c] += 1
    np.testing.assert_allclose(dx, expected, rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_take_and_gather_ids_out_of_range_stop_the_step(backend, rng):
    g = dg.Graph(dtype="float64")
    ids = g.input("ids", (None,), dtype="int32")
    table = g.parameter("table", (6, 3))
    step = g.compile(loss=dg.sum(dg.take(table, ids) ** 2), optimizer=dg.SGD(0.1), backend=backend)
    step(ids=np.array([0, 5], np.int32))
    before = g.params["table"].copy()
    for bad in (6, -1):
        with pytest.raises(
            dg.ShapeError, match=rf"node 'take#\d+' \(op 'take'\): label/id {bad} out of range \[0, 6\)"
        ):
            step(ids=np.array([1, bad], np.int32))
        np.testing.assert_array_equal(g.params["table"], before)
    x = g.input("x", (None, 4))
    picks = g.input("picks", (None, 1), dtype="int32")
    fn = g.compile(outputs=dg.gather(x, picks, 1), backend=backend)
    with pytest.raises(dg.ShapeError, match=r"\(op 'gather'\): label/id 4 out of range \[0, 4\)"):
        fn(x=np.zeros((2, 4)), picks=np.array([[0], [4]], np.int32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_cumsum_and_pad_like_numpy(backend, rng):
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 4, 5))
    xv = rng.standard_normal((2, 4, 5))
    pads = ((0, 0), (2, 1), (3, 4))
    outs = [
        dg.cumsum(x, 1),
        dg.cumsum(x, -1, reverse=True),
        dg.pad(x, pads, "constant", 1.5),
        dg.pad(x, pads, "replicate"),
        dg.pad(x, pads, "reflect"),
        dg.pad(x, (1, 2)),
    ]
    expected = [
        np.cumsum(xv, 1),
        np.flip(np.cumsum(np.flip(xv, -1), -1), -1),
        np.pad(xv, pads, constant_values=1.5),
        np.pad(xv, pads, mode="edge"),
        np.pad(xv, pads, mode="reflect"),
        np.pad(xv, ((0, 0), (0, 0), (1, 2))),
    ]
    for a, b in zip(run(outs, backend, x=xv), expected):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_shape_helpers():
    g = dg.Graph()
    x = g.input("x", (None, 1, 3))
    assert dg.expand_dims(x, -1).shape == (None, 1, 3, 1)
    assert dg.squeeze(x).shape == (None, 3) and dg.squeeze(x, 1).shape == (None, 3)
    assert dg.broadcast_to(x, (None, 4, 3)).shape == (None, 4, 3)
    with pytest.raises(dg.ShapeError, match="axis 2 has size 3, not 1"):
        dg.squeeze(x, 2)
    with pytest.raises(dg.ShapeError, match="must be x's own"):
        dg.broadcast_to(g.input("y", (1, 3)), (None, 3))
    xv = np.arange(6, dtype=np.float32).reshape(2, 1, 3)
    np.testing.assert_array_equal(
        g.compile(outputs=dg.broadcast_to(x, (None, 4, 3)))(x=xv), np.broadcast_to(xv, (2, 4, 3))
    )


def test_where_and_arithmetic_dtype_errors_name_the_nodes():
    g = dg.Graph()
    x = g.input("x", (None, 3))
    d = g.input("d", (None, 3), dtype="float64")
    i = g.input("i", (None, 3), dtype="int32")
    with pytest.raises(dg.ShapeError, match=r"op 'where' on inputs .*'x' .*'d' .*branches disagree in dtype"):
        dg.where(x > 0, x, d)
    with pytest.raises(dg.ShapeError, match="the condition must be bool"):
        dg.where(x, x, x)
    with pytest.raises(dg.ShapeError, match=r"op 'add' on inputs 'x' \(None, 3\) float32, 'i' \(None, 3\) int32"):
        x + i
    with pytest.raises(dg.ShapeError, match="needs bool inputs"):
        x & (x > 0)
    assert (i + 1).dtype == np.int32 and (i * 2 - i).dtype == np.int32  # integer arithmetic stays integer
    with pytest.raises(dg.ShapeError, match="float"):
        i / 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm_keeps_its_digits_far_from_zero(backend, rng):
    """Rows with a mean 1e4 times their spread: the shifted one-pass variance does not cancel."""
    g = dg.Graph()
    x = g.input("x", (None, 256))
    xv = (1e4 + rng.standard_normal((4, 256))).astype(np.float32)
    got = run([dg.layer_norm(x), dg.rms_norm(x)], backend, x=xv)
    x64 = xv.astype(np.float64)
    want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(got[0], want, atol=5e-3)
    np.testing.assert_allclose(got[1], x64 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + 1e-6), rtol=1e-5)


torch = pytest.importorskip("torch", reason="the comparisons with PyTorch's functions need PyTorch")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_silu_softplus_elu_match_torch(approximate, rng):
    g = dg.Graph()
    x = g.input("x", (None,))
    xv = np.concatenate([rng.standard_normal(1000) * 4, [-30.0, -10.0, 0.0, 10.0, 30.0]]).astype(np.float32)
    t = torch.tensor(xv, requires_grad=True)
    F = torch.nn.functional
    pairs = [
        (dg.gelu(x, approximate), F.gelu(t, approximate=approximate)),
        (dg.silu(x), F.silu(t)),
        (dg.softplus(x), F.softplus(t)),
        (dg.elu(x), F.elu(t)),
        (dg.leaky_relu(x, 0.1), F.leaky_relu(t, 0.1)),
    ]
    for ours, theirs in pairs:
        (grad,) = [dg.grad(dg.sum(ours), x)]
        t.grad = None
        theirs.sum().backward()
        for backend in BACKENDS:
            value, dx = g.compile(outputs=[ours, grad], backend=backend)(x=xv)
            np.testing.assert_allclose(value, theirs.detach().numpy(), rtol=2e-6, atol=1e-6)
            np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-5, atol=5e-6)


def test_layer_norm_matches_torch(rng):
    g = dg.Graph()
    x, r = g.input("x", (None, 7, 33)), g.input("r", (None, 7, 33))
    xv, rv = (rng.standard_normal((5, 7, 33)).astype(np.float32) * 3 + 1 for _ in range(2))
    t = torch.tensor(xv, requires_grad=True)
    (torch.nn.functional.layer_norm(t, (33,)) * torch.tensor(rv)).sum().backward()
    for axis, shape in ((-1, (33,)), ((1, 2), (7, 33))):
        t.grad = None
        want = torch.nn.functional.layer_norm(t, shape)
        (want * torch.tensor(rv)).sum().backward()
        out = dg.layer_norm(x, axis)
        for backend in BACKENDS:
            value, dx = g.compile(outputs=[out, dg.grad(dg.sum(out * r), x)], backend=backend)(x=xv, r=rv)
            np.testing.assert_allclose(value, want.detach().numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-4, atol=1e-5)

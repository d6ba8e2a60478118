"""Forward values of the public ops against expectations computed by hand in NumPy.

Graphs are float64 so that the only differences from the expectations are reassociated
sums and the like: rtol=1e-12 is a few ulps for these small sizes."""

from __future__ import annotations

import numpy as np
import pytest

import drug as dg

RTOL = 1e-12


def run(outputs, **feeds):
    graph = (outputs[0] if isinstance(outputs, (list, tuple)) else outputs).graph
    return graph.compile(outputs=outputs, backend="numpy")(**feeds)


@pytest.fixture
def g():
    return dg.Graph(dtype="float64")


# Elementwise arithmetic, n-ary ops and operators.


def test_add_and_mul_n_ary(g, rng):
    a, b, c, d = (g.input(n, (None, 3)) for n in "abcd")
    v = {n: rng.standard_normal((2, 3)) for n in "abcd"}
    got_add, got_mul, got_add3 = run([dg.add(a, b, c, d), dg.mul(a, b, c, d), dg.add(a, b, c)], **v)
    np.testing.assert_allclose(got_add, v["a"] + v["b"] + v["c"] + v["d"], rtol=RTOL)
    np.testing.assert_allclose(got_mul, v["a"] * v["b"] * v["c"] * v["d"], rtol=RTOL)
    np.testing.assert_allclose(got_add3, v["a"] + v["b"] + v["c"], rtol=RTOL)


def test_binary_and_unary_elementwise(g, rng):
    x, y = g.input("x", (None, 4)), g.input("y", (4,))
    xv, yv = rng.standard_normal((3, 4)), rng.uniform(0.5, 2.0, 4)
    outs = run([dg.sub(x, y), dg.div(x, y), dg.neg(x), dg.relu(x), dg.tanh(x), dg.exp(x)], x=xv, y=yv)
    expected = [xv - yv, xv / yv, -xv, np.where(xv > 0, xv, 0.0), np.tanh(xv), np.exp(xv)]
    for got, want in zip(outs, expected):
        np.testing.assert_allclose(got, want, rtol=RTOL)


def test_log_sqrt_sigmoid(g, rng):
    x = g.input("x", (None, 5))
    xv = rng.uniform(0.1, 4.0, (2, 5))
    log, sqrt, sig = run([dg.log(x), dg.sqrt(x), dg.sigmoid(x)], x=xv)
    np.testing.assert_allclose(log, np.log(xv), rtol=RTOL)
    np.testing.assert_allclose(sqrt, np.sqrt(xv), rtol=RTOL)
    np.testing.assert_allclose(sig, 1.0 / (1.0 + np.exp(-xv)), rtol=RTOL)


def test_sigmoid_is_stable_for_large_inputs(g):
    x = g.input("x", (4,))
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        got = run(dg.sigmoid(x), x=np.array([-1000.0, -40.0, 40.0, 1000.0]))
    np.testing.assert_allclose(got, [0.0, np.exp(-40.0) / (1 + np.exp(-40.0)), 1 / (1 + np.exp(-40.0)), 1.0])


def test_relu_propagates_nan(g):
    x = g.input("x", (3,))
    got = run(dg.relu(x), x=np.array([np.nan, -1.0, 2.0]))
    assert np.isnan(got[0]) and got[1] == 0.0 and got[2] == 2.0


def test_operators(g, rng):
    x, y = g.input("x", (None, 3)), g.input("y", (None, 3))
    w = g.input("w", (3, 2))
    xv, yv, wv = rng.standard_normal((4, 3)), rng.uniform(0.5, 2.0, (4, 3)), rng.standard_normal((3, 2))
    outs = run([x + y, x - y, x * y, x / y, x @ w, -x], x=xv, y=yv, w=wv)
    expected = [xv + yv, xv - yv, xv * yv, xv / yv, xv @ wv, -xv]
    for got, want in zip(outs, expected):
        np.testing.assert_allclose(got, want, rtol=RTOL)


def test_python_scalars_on_either_side(g, rng):
    x = g.input("x", (None, 3))
    xv = rng.uniform(0.5, 2.0, (2, 3))
    nodes = [x + 1, 1 + x, x - 2.5, 2.5 - x, x * 3, 3 * x, x / 4, 4 / x, -x + 0.5]
    assert all(n.dtype == np.float64 and n.shape == (None, 3) for n in nodes)
    expected = [xv + 1, 1 + xv, xv - 2.5, 2.5 - xv, xv * 3, 3 * xv, xv / 4, 4 / xv, -xv + 0.5]
    for got, want in zip(run(nodes, x=xv), expected):
        np.testing.assert_allclose(got, want, rtol=RTOL)


def test_scalar_constants_stay_scalars(g):
    x = g.input("x", (3,))
    assert g.constant(2.0).shape == ()
    assert (dg.sum(x) * 2.0).shape == ()
    assert dg.mean(x).shape == ()
    got = run(dg.mean(x) * 2.0, x=np.array([1.0, 2.0, 6.0]))
    assert got.shape == () and got == 6.0


def test_numpy_operands_on_either_side(g, rng):
    x, w = g.input("x", (None, 3)), g.input("w", (3, 2))
    c, m = np.array([1.0, 2.0, 4.0]), rng.standard_normal((4, 3))
    xv, wv = rng.uniform(0.5, 2.0, (2, 3)), rng.standard_normal((3, 2))
    nodes = [c * x, c + x, c - x, c / x, x * c, np.float64(2.0) * x, m @ w, x @ wv]
    assert all(isinstance(n, dg.Node) for n in nodes), "a NumPy operand must become a constant, not an object array"
    expected = [c * xv, c + xv, c - xv, c / xv, xv * c, 2.0 * xv, m @ wv, xv @ wv]
    for got, want in zip(run(nodes, x=xv, w=wv), expected):
        np.testing.assert_allclose(got, want, rtol=RTOL)


def test_default_dtype_is_float32(rng):
    g = dg.Graph()
    x = g.input("x", (None, 2))
    y = 2.0 * x + 1
    assert y.dtype == np.float32
    got = run(y, x=np.ones((3, 2), np.float32))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.full((3, 2), 3.0, np.float32))


# Linear algebra.


def test_matmul_2d(g, rng):
    a, b = g.input("a", (None, 4)), g.input("b", (4, 5))
    av, bv = rng.standard_normal((3, 4)), rng.standard_normal((4, 5))
    out = dg.matmul(a, b)
    assert out.shape == (None, 5)
    np.testing.assert_allclose(run(out, a=av, b=bv), av @ bv, rtol=RTOL)


def test_matmul_batched(g, rng):
    a, b = g.input("a", (None, 3, 4)), g.input("b", (4, 2))
    c, d = g.input("c", (2, 3, 4)), g.input("d", (2, 4, 5))
    av, bv = rng.standard_normal((5, 3, 4)), rng.standard_normal((4, 2))
    cv, dv = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 5))
    ab, cd = dg.matmul(a, b), c @ d
    assert ab.shape == (None, 3, 2) and cd.shape == (2, 3, 5)
    got_ab, got_cd = run([ab, cd], a=av, b=bv, c=cv, d=dv)
    np.testing.assert_allclose(got_ab, np.einsum("nij,jk->nik", av, bv), rtol=RTOL)
    np.testing.assert_allclose(got_cd, np.stack([cv[i] @ dv[i] for i in range(2)]), rtol=RTOL)


# Softmax and cross-entropy.


def test_softmax(g, rng):
    x = g.input("x", (None, 3, 4))
    xv = rng.standard_normal((2, 3, 4))
    last, middle = run([dg.softmax(x), dg.softmax(x, axis=1)], x=xv)
    np.testing.assert_allclose(last, np.exp(xv) / np.exp(xv).sum(-1, keepdims=True), rtol=RTOL)
    np.testing.assert_allclose(middle, np.exp(xv) / np.exp(xv).sum(1, keepdims=True), rtol=RTOL)


def test_softmax_large_logits(g):
    x = g.input("x", (None, 3))
    got = run(dg.softmax(x), x=np.array([[1e4, 1e4 - 1, 1e4 - 3], [-1e4, -1e4, -1e4]]))
    z = np.exp([0.0, -1.0, -3.0])
    np.testing.assert_allclose(got, [z / z.sum(), [1 / 3] * 3], rtol=RTOL)


def test_softmax_cross_entropy(g, rng):
    logits, labels = g.input("logits", (None, 5)), g.input("labels", (None,), dtype="int32")
    lv, yv = rng.standard_normal((4, 5)) * 3, np.array([0, 4, 2, 2], np.int32)
    loss = dg.softmax_cross_entropy(logits, labels)
    assert loss.shape == ()
    p = np.exp(lv) / np.exp(lv).sum(1, keepdims=True)
    expected = -np.mean(np.log(p[np.arange(4), yv]))
    np.testing.assert_allclose(run(loss, logits=lv, labels=yv), expected, rtol=RTOL)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_softmax_cross_entropy_is_stable(dtype, scale):
    g = dg.Graph(dtype=dtype)
    logits, labels = g.input("logits", (None, 3)), g.input("labels", (None,), dtype="int32")
    # integer offsets from +-1e4 are exact in float32 too
    offsets = np.array([[0.0, -1.0, -3.0], [-2.0, 0.0, 0.0]])
    yv = np.array([1, 0], np.int32)
    got = run(dg.softmax_cross_entropy(logits, labels), logits=(scale + offsets).astype(dtype), labels=yv)
    rows = [np.log(np.exp(row - row[y]).sum()) for row, y in zip(offsets, yv)]  # exact: offsets are small
    assert np.isfinite(got)
    np.testing.assert_allclose(got, np.mean(rows), rtol=1e-6 if dtype == "float32" else RTOL)


# Convolution: against a straightforward loop over output positions, padding with np.pad.


def conv2d_loop(x, w, stride, padding, pad_mode):
    sh, sw = stride
    kh, kw = w.shape[2:]
    if padding == "same":
        pads = []
        for n, k, s in zip(x.shape[2:], (kh, kw), stride):
            out = -(-n // s)  # ceil(n / s), as TensorFlow's 'same'
            total = max((out - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        mode = {"zeros": "constant", "replicate": "edge", "reflect": "reflect"}[pad_mode]
        x = np.pad(x, ((0, 0), (0, 0), *pads), mode=mode)
    n, _, h, wd = x.shape
    ho, wo = (h - kh) // sh + 1, (wd - kw) // sw + 1
    out = np.zeros((n, w.shape[0], ho, wo))
    for b in range(n):
        for o in range(w.shape[0]):
            for i in range(ho):
                for j in range(wo):
                    out[b, o, i, j] = np.sum(x[b, :, i * sh : i * sh + kh, j * sw : j * sw + kw] * w[o])
    return out


@pytest.mark.parametrize("pad_mode", ["zeros", "replicate", "reflect"])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d(g, rng, stride, padding, pad_mode):
    x, w = g.input("x", (None, 2, 7, 6)), g.input("w", (3, 2, 3, 2))
    xv, wv = rng.standard_normal((2, 2, 7, 6)), rng.standard_normal((3, 2, 3, 2))
    out = dg.conv2d(x, w, stride=stride, padding=padding, pad_mode=pad_mode)
    expected = conv2d_loop(xv, wv, (stride, stride), padding, pad_mode)
    if padding == "same":
        assert expected.shape[2:] == (-(-7 // stride), -(-6 // stride))
    assert out.shape == (None,) + expected.shape[1:]
    np.testing.assert_allclose(run(out, x=xv, w=wv), expected, rtol=RTOL, atol=1e-14)


@pytest.mark.parametrize("pad_mode", ["zeros", "replicate", "reflect"])
def test_conv2d_same_on_a_short_image_with_a_wide_kernel(g, rng, pad_mode):
    # height 2 needs no padding, width 8 with a 5-wide kernel pads 2 each side: valid for
    # reflect too, since each axis's pad is smaller than that axis's size
    x, w = g.input("x", (None, 1, 2, 8)), g.input("w", (2, 1, 1, 5))
    xv, wv = rng.standard_normal((3, 1, 2, 8)), rng.standard_normal((2, 1, 1, 5))
    out = dg.conv2d(x, w, padding="same", pad_mode=pad_mode)
    expected = conv2d_loop(xv, wv, (1, 1), "same", pad_mode)
    np.testing.assert_allclose(run(out, x=xv, w=wv), expected, rtol=RTOL, atol=1e-14)


def test_conv2d_non_square_stride(g, rng):
    x, w = g.input("x", (None, 1, 6, 7)), g.input("w", (2, 1, 2, 3))
    xv, wv = rng.standard_normal((1, 1, 6, 7)), rng.standard_normal((2, 1, 2, 3))
    out = dg.conv2d(x, w, stride=(2, 1), padding="same", pad_mode="replicate")
    expected = conv2d_loop(xv, wv, (2, 1), "same", "replicate")
    np.testing.assert_allclose(run(out, x=xv, w=wv), expected, rtol=RTOL, atol=1e-14)


@pytest.mark.parametrize(
    "kind,fn", [("avg", np.mean), ("mean", np.mean), ("max", np.max), ("sum", np.sum), ("min", np.min)]
)
def test_global_pool(g, rng, kind, fn):
    x = g.input("x", (None, 3, 4, 5))
    xv = rng.standard_normal((2, 3, 4, 5))
    out = dg.global_pool(x, kind)
    assert out.shape == (None, 3)
    np.testing.assert_allclose(run(out, x=xv), fn(xv, axis=(2, 3)), rtol=RTOL)


def test_embedding(g, rng):
    ids, table = g.input("ids", (None, 3), dtype="int32"), g.input("table", (6, 4))
    idv, tv = np.array([[0, 5, 5], [2, 1, 0]], np.int32), rng.standard_normal((6, 4))
    out = dg.embedding(ids, table)
    assert out.shape == (None, 3, 4)
    np.testing.assert_array_equal(run(out, ids=idv, table=tv), tv[idv])


# Shape ops, slicing, reductions.


def test_reshape(g, rng):
    x = g.input("x", (None, 2, 3))
    xv = rng.standard_normal((4, 2, 3))
    flat, inferred, static = dg.reshape(x, (None, 6)), dg.reshape(x, (None, -1)), dg.reshape(x, (None, 3, 2))
    assert flat.shape == inferred.shape == (None, 6)
    got = run([flat, inferred, static], x=xv)
    np.testing.assert_array_equal(got[0], xv.reshape(4, 6))
    np.testing.assert_array_equal(got[1], xv.reshape(4, 6))
    np.testing.assert_array_equal(got[2], xv.reshape(4, 3, 2))


def test_transpose(g, rng):
    x = g.input("x", (None, 2, 3))
    xv = rng.standard_normal((4, 2, 3))
    rev, perm, last2 = dg.transpose(x), dg.transpose(x, (1, 0, 2)), dg.transpose(x, (0, 2, 1))
    assert rev.shape == (3, 2, None) and perm.shape == (2, None, 3)
    got = run([rev, perm, last2], x=xv)
    np.testing.assert_array_equal(got[0], xv.transpose())
    np.testing.assert_array_equal(got[1], xv.transpose(1, 0, 2))
    np.testing.assert_array_equal(got[2], xv.transpose(0, 2, 1))


def test_matrix_T(g, rng):
    w = g.input("w", (2, 3))
    wv = rng.standard_normal((2, 3))
    np.testing.assert_array_equal(run(w.T, w=wv), wv.T)


def test_concat(g, rng):
    a, b, c = g.input("a", (None, 2)), g.input("b", (None, 3)), g.input("c", (None, 1))
    av, bv, cv = (rng.standard_normal((2, n)) for n in (2, 3, 1))
    out, out_neg = dg.concat([a, b, c], axis=1), dg.concat([c, a], axis=-1)
    assert out.shape == (None, 6)
    got, got_neg = run([out, out_neg], a=av, b=bv, c=cv)
    np.testing.assert_array_equal(got, np.concatenate([av, bv, cv], axis=1))
    np.testing.assert_array_equal(got_neg, np.concatenate([cv, av], axis=1))


def test_slicing(g, rng):
    x = g.input("x", (None, 5, 3))
    xv = rng.standard_normal((2, 5, 3))
    nodes = [x[:, 1:3], x[..., 0], x[:, -1], x[:, ::2, 1:], x[:, 1]]
    assert [n.shape for n in nodes] == [(None, 2, 3), (None, 5), (None, 3), (None, 3, 2), (None, 3)]
    expected = [xv[:, 1:3], xv[..., 0], xv[:, -1], xv[:, ::2, 1:], xv[:, 1]]
    for got, want in zip(run(nodes, x=xv), expected):
        np.testing.assert_array_equal(got, want)


def test_sum_and_mean(g, rng):
    x = g.input("x", (None, 3, 4))
    xv = rng.standard_normal((5, 3, 4))
    cases = [
        (dg.sum(x), xv.sum()),
        (dg.sum(x, axis=1), xv.sum(axis=1)),
        (dg.sum(x, axis=(0, 2)), xv.sum(axis=(0, 2))),
        (dg.sum(x, axis=-1, keepdims=True), xv.sum(axis=-1, keepdims=True)),
        (dg.mean(x), xv.mean()),
        (dg.mean(x, axis=0), xv.mean(axis=0)),  # over the batch axis: divides by the runtime batch
        (dg.mean(x, axis=(1, 2)), xv.mean(axis=(1, 2))),
        (dg.mean(x, axis=-2), xv.mean(axis=-2)),
    ]
    outs = run([node for node, _ in cases], x=xv)
    for (node, want), got in zip(cases, outs):
        assert got.shape == np.shape(want), node
        np.testing.assert_allclose(got, want, rtol=RTOL)


def test_mean_over_the_batch_follows_the_batch_size(g, rng):
    x = g.input("x", (None, 2))
    fn = g.compile(outputs=dg.mean(x, axis=0), backend="numpy")
    for n in (1, 3, 7):
        xv = rng.standard_normal((n, 2))
        np.testing.assert_allclose(fn(x=xv), xv.mean(axis=0), rtol=RTOL)


def test_max_min(g, rng):
    x = g.input("x", (None, 3, 4))
    xv = rng.standard_normal((2, 3, 4))
    got = run([dg.max(x, axis=1), dg.min(x, axis=(0, 2)), dg.max(x)], x=xv)
    np.testing.assert_array_equal(got[0], xv.max(axis=1))
    np.testing.assert_array_equal(got[1], xv.min(axis=(0, 2)))
    np.testing.assert_array_equal(got[2], xv.max())

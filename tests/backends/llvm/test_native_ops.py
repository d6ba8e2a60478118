"""Native kernels against the NumPy backend, driven by the op registry: for every builtin op with
an example, the op's output and the gradients of sum(out * r) compiled with backend="llvm" must
agree with backend="numpy" in float32 and float64. Ops with a native kernel must not fall back
to the Python callback, and bad labels or ids must stop a native train step before it writes."""

from __future__ import annotations

import platform
import re

import numpy as np
import pytest
from conftest import OPS_WITH_EXAMPLE, call, output_and_gradients
from hypothesis import given, settings
from hypothesis import strategies as st

import drug as dg
from drug.backends.llvm import bounds

# ops with their own native kernel (emit_kernel) that must never run through the Python callback
NATIVE = {
    "softmax", "softmax_cross_entropy_rows", "one_hot", "embedding", "embedding_grad",
    "transpose", "slice", "slice_grad", "concat", "conv2d", "conv_transpose2d", "conv2d_grad_filter", "pad",
    "pad_grad", "max_pool2d", "max_pool2d_grad", "max_pool2d_tangent", "avg_pool2d", "avg_pool2d_grad", "batch_moments",
    "sum_squares",
    "float_to_int", "argmax", "argmin", "take", "take_grad", "gather", "gather_grad", "cumsum", "pad_nd",
    "pad_nd_grad", "layer_norm", "layer_norm_grad", "rms_norm", "rms_norm_grad", "attention", "attention_grad",
    "random", "contract_leading",
}  # fmt: skip

DIMS = st.lists(st.integers(1, 4), min_size=3, max_size=3)
SEED = st.integers(0, 2**32 - 1)
INT_DTYPE = st.sampled_from(["int32", "int64"])
FEW = settings(max_examples=15, deadline=None)

# Tolerances, relative to the largest magnitude in the expected array (`scale`) so values that
# cancel to ~0 are judged against the size of what cancelled:
# - float64: both backends round to ~1e-16; sums reassociated by the vectorizer and the
#   polynomial exp/log (< 1 ulp) differ by a few ulps per operation, far below 1e-10.
# - float32: eps is 1.2e-7. Both backends compute in float32 but sum in different orders (NumPy
#   pairwise, LLVM in vector lanes; the error bound grows like n * eps * sum|x| for n terms, a few
#   dozen in these examples), and the polynomial exp/log differ from NumPy's libm by 1-2 ulps,
#   which softmax and cross-entropy gradients chain through max, exp, sum, divide and log.
#   Measured worst case over 12 seeds per op: 4e-7 * scale (tanh, conv). 1e-5 * scale (~80
#   ulps) leaves a 25x margin, while a wrong kernel (a misplaced element, a missing term) is off
#   by O(scale).
RTOL = {"float64": 1e-10, "float32": 1e-5}


def assert_close(got, want, dtype: str, what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} vs {want.dtype}"
    if got.dtype.kind != "f":  # bools and integers (comparisons, argmax, casts) match exactly
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    rtol = RTOL[dtype]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


def callbacks(fn) -> set[str]:
    """Names of the ops a compiled function runs through the Python callback."""
    return {n.op.name for k in fn.program.schedule.kernels if k.kind == "callback" for n in k.nodes}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", OPS_WITH_EXAMPLE)
@FEW
@given(dims=DIMS, seed=SEED, int_dtype=INT_DTYPE)
def test_llvm_matches_numpy(name, dtype, dims, seed, int_dtype):
    g, _, targets, labels, feeds = output_and_gradients(name, dtype, dims, int_dtype, np.random.default_rng(seed))
    native = g.compile(outputs=targets, backend="llvm")
    reference = g.compile(outputs=targets, backend="numpy")
    assert not callbacks(native) & NATIVE, f"{sorted(callbacks(native) & NATIVE)} ran through the callback"
    want, got = call(reference, feeds), call(native, feeds)
    want, got = (v if isinstance(v, tuple) else (v,) for v in (want, got))
    for label, a, b in zip(labels, got, want):
        assert_close(a, b, dtype, f"{name} {dtype}: {label}")


@pytest.mark.parametrize("out_dtype", ["float32", "float64", "int32"])
@pytest.mark.parametrize("int_dtype", ["int32", "int64"])
def test_one_hot_native(int_dtype, out_dtype):
    g = dg.Graph()
    labels = g.input("labels", (None,), dtype=int_dtype)
    fn = g.compile(outputs=dg.one_hot(labels, 5, dtype=out_dtype), backend="llvm")
    assert not callbacks(fn)
    values = np.array([4, 0, 2, 2, 1, 3], int_dtype)
    got = fn(labels=values)
    assert got.dtype == np.dtype(out_dtype)
    np.testing.assert_array_equal(got, np.eye(5, dtype=out_dtype)[values])
    for bad in (5, -1):
        with pytest.raises(dg.ShapeError, match="out of range"):
            fn(labels=np.array([0, bad, 1], int_dtype))


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_any_axis(axis, dtype, rng):
    g = dg.Graph(dtype=dtype)
    x = g.input("x", (None, 4, 5))
    out = dg.softmax(x, axis=axis)
    xv = (rng.standard_normal((3, 4, 5)) * 30).astype(dtype)
    native = g.compile(outputs=out, backend="llvm")
    assert not callbacks(native)
    assert_close(native(x=xv), g.compile(outputs=out, backend="numpy")(x=xv), dtype, f"softmax axis {axis}")


def test_softmax_special_values():
    """Rows with NaN give NaN (like NumPy); huge logits do not overflow; -inf entries give 0."""
    g = dg.Graph(dtype="float32")
    x = g.input("x", (None, 3))
    xv = np.array([[1.0, np.nan, 2.0], [1e30, 1e30, -1e30], [0.0, -np.inf, 0.0]], np.float32)
    got = g.compile(outputs=dg.softmax(x), backend="llvm")(x=xv)
    want = g.compile(outputs=dg.softmax(x), backend="numpy")(x=xv)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[1:], want[1:], rtol=1e-6)


@pytest.mark.parametrize("rows", [1, 3, 4, 7, 8, 9])
def test_rows_of_softmax_and_cross_entropy_in_blocks(rows, rng):
    """Short rows are reduced four at a time (nn.ROWS_AT_ONCE), the rest one by one: every row
    count agrees with NumPy, a NaN stays in its own row, and each row's label picks its own loss."""
    g = dg.Graph(dtype="float32")
    x, y = g.input("x", (None, 11)), g.input("y", (None,), dtype="int32")
    outputs = [dg.softmax(x), dg.softmax_cross_entropy(x, y)]
    xv = (rng.standard_normal((rows, 11)) * 5).astype(np.float32)
    xv[rows // 2, 3] = np.nan
    yv = rng.integers(0, 11, rows).astype(np.int32)
    native = g.compile(outputs=outputs, backend="llvm")
    assert not callbacks(native)
    got = native(x=xv, y=yv)
    want = g.compile(outputs=outputs, backend="numpy")(x=xv, y=yv)
    for value, expected in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.isnan(value), np.isnan(expected))
        np.testing.assert_allclose(value, expected, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("int_dtype", ["int32", "int64"])
@pytest.mark.parametrize("bad", [3, -1, "largest"])
def test_cross_entropy_label_out_of_range(bad, int_dtype, rng):
    bad = np.iinfo(int_dtype).max if bad == "largest" else bad
    g = dg.Graph(dtype="float32", seed=0)
    x = g.input("x", (None, 4))
    y = g.input("y", (None,), dtype=int_dtype)
    w = g.parameter("w", (4, 3))
    b = g.parameter("b", (3,), init="zeros")
    step = g.compile(loss=dg.softmax_cross_entropy(x @ w + b, y), optimizer=dg.Adam(lr=0.1), backend="llvm")
    assert not callbacks(step)
    xv = rng.standard_normal((5, 4)).astype(np.float32)
    step(x=xv, y=np.array([0, 1, 2, 1, 0], int_dtype))
    before = {k: v.copy() for k, v in g.params.items()}
    state = {k: v.copy() for k, v in step.state.items()}
    with pytest.raises(dg.ShapeError, match="out of range"):
        step(x=xv, y=np.array([0, 1, bad, 1, 0], int_dtype))
    for name, value in before.items():
        np.testing.assert_array_equal(g.params[name], value, err_msg=name)
    for key, value in state.items():
        np.testing.assert_array_equal(step.state[key], value, err_msg=key)
    step(x=xv, y=np.array([0, 1, 2, 1, 0], int_dtype))  # the step still works afterwards
    assert not np.array_equal(g.params["w"], before["w"])


@pytest.mark.parametrize("int_dtype", ["int32", "int64"])
@pytest.mark.parametrize("bad", [6, -1])
def test_embedding_id_out_of_range(bad, int_dtype, rng):
    g = dg.Graph(dtype="float64", seed=0)
    ids = g.input("ids", (None, 2), dtype=int_dtype)
    table = g.parameter("table", (6, 3))
    w = g.parameter("w", (6, 1))
    h = dg.reshape(dg.embedding(ids, table), (None, 6))
    loss = dg.mean(dg.tanh(h @ w))
    step = g.compile(loss=loss, optimizer=dg.SGD(lr=0.5, momentum=0.9), backend="llvm")
    assert not callbacks(step)
    good = np.array([[0, 5], [2, 2], [4, 1]], int_dtype)
    step(ids=good)
    before = {k: v.copy() for k, v in g.params.items()}
    with pytest.raises(dg.ShapeError, match="out of range"):
        step(ids=np.array([[0, 5], [2, bad], [4, 1]], int_dtype))
    for name, value in before.items():
        np.testing.assert_array_equal(g.params[name], value, err_msg=name)


def test_embedding_gradient_accumulates_repeated_ids():
    g = dg.Graph(dtype="float64")
    ids = g.input("ids", (None,), dtype="int64")
    table = g.input("table", (4, 2))
    r = g.input("r", (None, 2))
    (grad,) = dg.grad(dg.sum(dg.embedding(ids, table) * r), [table])
    fn = g.compile(outputs=grad, backend="llvm")
    assert not callbacks(fn)
    rv = np.arange(10.0).reshape(5, 2)
    got = fn(ids=np.array([1, 3, 1, 1, 0]), table=np.zeros((4, 2)), r=rv)
    np.testing.assert_array_equal(got, [rv[4], rv[0] + rv[2] + rv[3], [0, 0], rv[1]])


def test_slice_negative_step_and_int_index(rng):
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 7, 3))
    parts = [x[:, ::-2, 1], x[:, 5:1:-1], x[..., 2], x[:, 3:3]]
    out = dg.concat([dg.reshape(p, (None, -1)) for p in parts[:3]], axis=1)
    xv = rng.standard_normal((2, 7, 3))
    native = g.compile(outputs=parts + [out], backend="llvm")
    assert not callbacks(native)
    want = [xv[:, ::-2, 1], xv[:, 5:1:-1], xv[..., 2], xv[:, 3:3]]
    want.append(np.concatenate([w.reshape(2, -1) for w in want[:3]], axis=1))
    for got, expected in zip(native(x=xv), want):
        np.testing.assert_array_equal(got, expected)


def test_transpose_with_batch_inside(rng):
    g = dg.Graph(dtype="float32")
    x = g.input("x", (2, None, 3, 4))
    outs = [dg.transpose(x), dg.transpose(x, (1, 3, 0, 2)), dg.concat([x, x[:, :, :1]], axis=2)]
    native = g.compile(outputs=outs, backend="llvm")
    assert not callbacks(native)
    xv = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    want = [xv.transpose(), xv.transpose(1, 3, 0, 2), np.concatenate([xv, xv[:, :, :1]], axis=2)]
    for got, expected in zip(native(x=xv), want):
        np.testing.assert_array_equal(got, expected)


def test_size_one_constants_reach_op_kernels():
    """Loops inline scalar-sized constants as literals; op kernels still need their buffers."""
    g = dg.Graph(dtype="float64")
    x = g.input("x", (1, 3))
    c = g.constant(np.array([[5.0]]))
    ids = g.input("ids", (None,), dtype="int32")
    outs = [dg.concat([x, c], axis=1), dg.transpose(x) @ c, dg.embedding(ids, c), dg.softmax(c)]
    feeds = {"x": np.arange(3.0).reshape(1, 3), "ids": np.zeros(4, np.int32)}
    native = g.compile(outputs=outs, backend="llvm")
    assert not callbacks(native)
    for got, want in zip(native(**feeds), g.compile(outputs=outs, backend="numpy")(**feeds)):
        np.testing.assert_array_equal(got, want)


def test_shape_ops_on_integer_labels(rng):
    """Slices, transposes and concats of int64 labels feed a native cross-entropy."""
    g = dg.Graph(dtype="float64")
    logits = g.input("logits", (None, 2, 4))
    pairs = g.input("pairs", (None, 2), dtype="int64")
    labels = dg.concat([pairs[:, 1:], pairs[:, :1]], axis=1)
    outs = [dg.softmax_cross_entropy(logits, labels), labels, dg.transpose(pairs)]
    feeds = {"logits": rng.standard_normal((3, 2, 4)), "pairs": np.array([[0, 3], [1, 2], [2, 0]])}
    native = g.compile(outputs=outs, backend="llvm")
    assert not callbacks(native)
    got, want = native(**feeds), g.compile(outputs=outs, backend="numpy")(**feeds)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    for a, b in zip(got[1:], want[1:]):
        assert a.dtype == np.int64
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="reads x86 assembly")
@pytest.mark.skipif(bounds.enabled(), reason="DRUG_BOUNDS_CHECK=1: the checks keep loops from vectorizing")
@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_kernel_vectorizes(axis):
    """The max, exp-sum and divide loops of softmax use packed (SIMD) instructions: a regression
    (a lost `reassoc` flag, a libm call in the loop) would leave only scalar `ss` forms."""
    g = dg.Graph(dtype="float32")
    x = g.input("x", (None, 1000))
    fn = g.compile(outputs=dg.softmax(x, axis=axis), backend="llvm")
    asm = fn._executor.compiled.asm()
    for packed in ("maxps", "divps", "fmadd\\d+ps", "addps"):
        assert re.search(rf"\bv?{packed}\s", asm), f"no packed {packed} in the softmax kernel"

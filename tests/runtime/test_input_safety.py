"""Whatever users feed a compiled function, it either runs on exactly the values they meant or
raises a clear error naming the input before anything changes: wrong shapes and dtypes, odd
memory layouts, Python values, empty and huge batches, NaN/Inf, labels and ids out of range,
bad `out=` arrays. Both backends behave alike."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import drug as dg

BACKENDS = ["numpy", "llvm"]


def mlp(backend: str, optimizer=None):
    """A small classifier: its train step, its predictor, its graph."""
    g = dg.Graph(seed=0)
    x, y = g.input("x", (None, 4)), g.input("y", (None,), dtype="int32")
    w, b = g.parameter("w", (4, 3)), g.parameter("b", (3,), init="normal")
    logits = dg.tanh(x @ w + b)
    train = g.compile(loss=dg.softmax_cross_entropy(logits, y), optimizer=optimizer or dg.Adam(0.1), backend=backend)
    return train, g.compile(outputs=logits, backend=backend), g


def snapshot(train, g):
    return [v.copy() for v in g.params.values()] + [v.copy() for v in train.state.values()] + [train.step_count]


def assert_unchanged(before, train, g):
    for a, b in zip(before, snapshot(train, g)):
        np.testing.assert_array_equal(a, b)


# ---- layouts and dtypes, fuzzed ----

DTYPES = ["float32", "float64", "float16", "int32", "int64", "uint8", "bool", "complex64", ">f4"]
LAYOUTS = ["C", "F", "strided", "reversed", "readonly", "broadcast"]


def arrange(array: np.ndarray, layout: str) -> np.ndarray:
    """The same values in another memory layout."""
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "strided":
        wide = np.zeros(array.shape[:-1] + (array.shape[-1] * 2,), array.dtype)
        wide[..., ::2] = array
        return wide[..., ::2]
    if layout == "reversed":
        return np.ascontiguousarray(array[::-1])[::-1]
    if layout == "readonly":
        array = array.copy()
        array.flags.writeable = False
        return array
    if layout == "broadcast" and array.shape[0] > 0:
        return np.broadcast_to(array[:1], array.shape)
    return np.ascontiguousarray(array)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(0, 5),
    width=st.sampled_from([4, 4, 4, 3, 5]),
    rank=st.sampled_from([2, 2, 2, 1, 3]),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
)
def test_fuzzed_feeds_run_on_their_values_or_are_refused(backend, batch, width, rank, dtype, layout):
    train, predict, g = _cached(backend)
    shape = ((batch, width) + (2,) * (rank - 2))[:rank]
    values = np.random.default_rng(batch * 7 + width).standard_normal(shape)
    x = arrange(values.astype(dtype), layout)
    valid = x.shape == (batch, 4) and x.dtype == np.float32
    if valid:
        expected = predict(x=np.array(x, order="C"))  # the same values, C-contiguous and writeable
        np.testing.assert_array_equal(predict(x=x), expected)
        return
    before = snapshot(train, g)
    with pytest.raises(dg.ShapeError, match="input 'x' expects"):
        predict(x=x)
    with pytest.raises(dg.ShapeError, match="input 'x' expects"):
        train(x=x, y=np.zeros(x.shape[0] if x.ndim else 0, np.int32))
    assert_unchanged(before, train, g)


_COMPILED: dict = {}


def _cached(backend):
    """One compilation per backend for all fuzzed examples."""
    if backend not in _COMPILED:
        _COMPILED[backend] = mlp(backend)
    return _COMPILED[backend]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "name,value,match",
    [
        ("x", None, "input 'x' expects float32 numbers, got NoneType"),  # np.asarray(None, float32) is NaN
        ("x", "abc", "input 'x' expects float32 numbers, got str"),
        ("x", [[1.0, 2.0], [3.0]], "input 'x' is not an array of numbers"),
        ("y", [0.0, 2.7], r"input 'y' expects integers \(int32\), got floats"),  # would be truncated to 2
        ("y", [0, 2**40], "input 'y' has integers out of the range of int32"),  # would wrap around
        ("y", [0, 2**70], "input 'y' expects int32 numbers"),
    ],
)
def test_python_values_that_would_change_are_refused(backend, name, value, match):
    train, _, g = mlp(backend)
    feeds = {"x": np.zeros((2, 4), np.float32), "y": [0, 1]}
    feeds[name] = value
    before = snapshot(train, g)
    with pytest.raises(dg.ShapeError, match=match):
        train(**feeds)
    assert_unchanged(before, train, g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_python_lists_that_fit_are_accepted(backend):
    train, predict, _ = mlp(backend)
    xs = [[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    np.testing.assert_array_equal(predict(x=xs), predict(x=np.array(xs, np.float32)))
    assert np.isfinite(train(x=xs, y=[2, 0]))


def test_byte_order_is_named_in_the_dtype_error():
    _, predict, _ = mlp("numpy")
    with pytest.raises(dg.ShapeError, match="expects dtype float32, got >f4"):
        predict(x=np.zeros((2, 4), ">f4"))


# ---- empty and huge batches ----


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_predicts_nothing_and_refuses_to_train(backend):
    train, predict, g = mlp(backend)
    assert predict(x=np.zeros((0, 4), np.float32)).shape == (0, 3)
    before = snapshot(train, g)
    with pytest.raises(dg.ShapeError, match="at least one example, got a batch of size 0; nothing was updated"):
        train(x=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int32))
    assert_unchanged(before, train, g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [10**12, 2**50])
def test_batch_too_big_for_the_machine_is_a_memory_error(backend, batch):
    """An input of shape (batch, 0) takes no memory, but the (batch, 100) activations it implies
    would: the call refuses it before allocating or running anything (Linux would otherwise
    overcommit and kill the process when native code touches the pages)."""
    g = dg.Graph(seed=0)
    x = g.input("x", (None, 0))
    w = g.parameter("w", (0, 100))
    fn = g.compile(outputs=dg.sum(dg.relu(x @ w)), backend=backend)
    with pytest.raises(MemoryError, match=f"batch size {batch} would need .* more than this machine's memory"):
        fn(x=np.zeros((batch, 0), np.float32))
    assert fn(x=np.zeros((3, 0), np.float32)) == 0.0  # still usable


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_broadcast_view_feed_is_a_memory_error(backend):
    _, predict, _ = mlp(backend)
    view = np.broadcast_to(np.ones(4, np.float32), (10**12, 4))
    with pytest.raises(MemoryError, match=r"copy of input 'x' \(1000000000000, 4\) would need 14.6 TiB"):
        predict(x=view)


# ---- NaN and Inf ----


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_finite_names_the_input_and_changes_nothing(backend, bad):
    g = dg.Graph(seed=0)
    x, y = g.input("x", (None, 4)), g.input("y", (None,), dtype="int32")
    loss = dg.softmax_cross_entropy(x @ g.parameter("w", (4, 3)), y)
    train = g.compile(loss=loss, optimizer=dg.Adam(0.1), backend=backend, check_finite=True)
    xv = np.ones((3, 4), np.float32)
    xv[2, 1] = bad
    before = snapshot(train, g)
    with pytest.raises(dg.GraphError, match="input 'x' contains NaN or Inf"):
        train(x=xv, y=np.zeros(3, np.int32))
    assert_unchanged(before, train, g)


def test_without_check_finite_nan_propagates_like_numpy():
    """The documented behaviour (README, Reliability): no check, NaN flows through the step like
    NumPy arithmetic, so the loss and every parameter it reaches become NaN, in both backends."""
    results = []
    for backend in BACKENDS:
        train, _, g = mlp(backend, dg.SGD(0.1))
        xv = np.ones((3, 4), np.float32)
        xv[0, 0] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            loss = train(x=xv, y=np.zeros(3, np.int32))
        results.append((loss, {k: np.isnan(v) for k, v in g.params.items()}))
    for loss, nans in results:
        assert np.isnan(loss)
        assert nans["w"].any() and nans["b"].all()
    for key in results[0][1]:
        np.testing.assert_array_equal(results[0][1][key], results[1][1][key])


# ---- labels and ids ----


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label", [3, -1, 2**31 - 1])
def test_label_out_of_range_names_node_and_value_and_changes_nothing(backend, label):
    train, _, g = mlp(backend)
    train(x=np.ones((3, 4), np.float32), y=np.array([0, 1, 2], np.int32))
    before = snapshot(train, g)
    # the first kernel to read the labels names it: the loss's rows, or the one_hot of its gradient
    first_reader = r"(softmax_cross_entropy_rows#\d+|'one_hot#\d+' \(op 'one_hot', "
    first_reader += r"in the gradient of softmax_cross_entropy#\d+\))"
    with pytest.raises(dg.ShapeError, match=rf"node {first_reader}.*label/id {label} out of range"):
        train(x=np.ones((3, 4), np.float32), y=np.array([0, label, 2], np.int32))
    assert_unchanged(before, train, g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_embedding_id_out_of_range_in_a_train_step_changes_nothing(backend):
    g = dg.Graph(seed=0, dtype="float64")
    ids = g.input("ids", (None, 2), dtype="int64")
    table, w = g.parameter("table", (5, 3)), g.parameter("w", (6, 1))
    loss = dg.mean(dg.tanh(dg.reshape(dg.embedding(ids, table), (None, 6)) @ w)) + dg.sum(w * w)
    train = g.compile(loss=loss, optimizer=dg.Adam(0.05), backend=backend)
    train(ids=np.array([[0, 4], [1, 1]]))
    before = snapshot(train, g)
    with pytest.raises(
        dg.ShapeError, match=r"node 'embedding#\d+' \(op 'embedding'\): label/id 5 out of range \[0, 5\)"
    ):
        train(ids=np.array([[0, 4], [5, 1]]))
    assert_unchanged(before, train, g)


# ---- out= arrays ----


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: np.zeros((3, 3), np.float32), r"out= array is \(3, 3\) float32, the output is \(2, 3\) float32"),
        (lambda: np.zeros((2, 3), np.float64), "out= array is .* float64"),
        (lambda: np.zeros((2, 3), np.float32)[:, ::-1].copy().T.T.view(), None),  # fine: a plain array
        (lambda: _readonly(np.zeros((2, 3), np.float32)), "out= array is read-only"),
        (lambda: ([[0.0] * 3] * 2,), "out= array is list"),
    ],
)
def test_bad_out_arrays_are_refused_before_the_step_runs(backend, make, match):
    g = dg.Graph(seed=0)
    x, y = g.input("x", (None, 4)), g.input("y", (None,), dtype="int32")
    logits = x @ g.parameter("w", (4, 3))
    train = g.compile(loss=dg.softmax_cross_entropy(logits, y), outputs=logits, optimizer=dg.SGD(0.1), backend=backend)
    feeds = {"x": np.ones((2, 4), np.float32), "y": np.array([0, 1], np.int32)}
    before = snapshot(train, g)
    out = make()
    if match is None:
        loss, got = train(**feeds, out=out)
        assert got is out
        return
    with pytest.raises(dg.ShapeError, match=match):
        train(**feeds, out=out)
    assert_unchanged(before, train, g)
    with pytest.raises(dg.GraphError, match="out= has 2 arrays for 1 outputs"):
        train(**feeds, out=(np.zeros((2, 3), np.float32),) * 2)


def _readonly(array):
    array.flags.writeable = False
    return array


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_arrays_that_alias_inputs_or_parameters(backend):
    """The native runtime writes outputs straight into `out=` arrays; one that was also an input
    (x @ w into x) or a parameter made the GEMM read what it was overwriting: wrong values, where
    the reference copies after the step. Such arrays now receive a copy too."""
    g = dg.Graph(dtype="float64")
    x, w = g.input("x", (4, 4)), g.parameter("w", (4, 4))
    product = g.compile(outputs=x @ w, backend=backend)
    both = g.compile(outputs=[dg.softmax(x @ w), x + 1.0], backend=backend)
    xv = np.arange(16.0).reshape(4, 4) / 10
    w_before = g.params["w"].copy()
    inplace = xv.copy()
    product(x=inplace, out=inplace)
    np.testing.assert_allclose(inplace, xv @ w_before, rtol=1e-12)
    plus = np.empty((4, 4))
    both(x=xv, out=(g.params["w"], plus))  # the first output overwrites the parameter, after the step
    z = np.exp(xv @ w_before - (xv @ w_before).max(axis=1, keepdims=True))
    np.testing.assert_allclose(g.params["w"], z / z.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_array_equal(plus, xv + 1.0)

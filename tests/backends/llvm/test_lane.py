"""The C lane of plain calls (backends/llvm/lane.py, csrc/drug_lane.c): a call whose feeds are
exactly what the inputs declare runs there, any other takes the Python path, and both give the
same results and the same errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import drug as dg
from drug.backends.llvm import csources, lane

pytestmark = pytest.mark.skipif(lane.extension() is None, reason="the call lane is not built")


class Spy:
    """Wraps an executor's lane: how many calls it ran and how many it declined."""

    def __init__(self, executor):
        self.inner, self.ran, self.declined = executor._lane, 0, 0
        executor._lane = self

    def __call__(self, feeds):
        result = self.inner(feeds)
        if result is None:
            self.declined += 1
        else:
            self.ran += 1
        return result


def _graph():
    """Inputs with the batch first, in the middle, absent, and int ids; an output of each."""
    g = dg.Graph(seed=1)
    x = g.input("x", (None, 3))
    ids = g.input("ids", (None,), dtype="int32")
    m = g.input("m", (2, None, 2))
    c = g.input("c", (4,))
    table = g.parameter("table", (5, 3))
    rows = dg.embedding(ids, table) * x + dg.sum(c)
    mixed = dg.sum(m, axis=(0, 2))
    return g, rows, mixed


def _predictors():
    """The same predictor twice: through the lane, and with the lane off (the Python path)."""
    g, rows, mixed = _graph()
    through = g.compile(outputs=[rows, mixed], backend="llvm")
    python = g.compile(outputs=[rows, mixed], backend="llvm")
    python._executor.runs_plain = False
    return through, python


def _feeds(batch: int, rng: np.random.Generator) -> dict:
    return {
        "x": rng.standard_normal((batch, 3)).astype(np.float32),
        "ids": rng.integers(0, 5, batch).astype(np.int32),
        "m": rng.standard_normal((2, batch, 2)).astype(np.float32),
        "c": rng.standard_normal(4).astype(np.float32),
    }


def _outcome(fn, feeds):
    try:
        return [a.tolist() for a in fn(feeds)]
    except Exception as error:  # noqa: BLE001 - the error itself is what is compared
        return type(error), str(error)


_VARIANTS = ["ok", "readonly", "dtype", "shape", "batch", "transposed", "list", "missing", "extra", "subclass", "range"]


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(0, 4), variant=st.sampled_from(_VARIANTS), which=st.sampled_from(["x", "ids", "m", "c"]))
def test_the_lane_and_the_python_path_agree(batch, variant, which):
    through, python = _predictors()
    spy = Spy(through._executor)
    feeds = _feeds(batch, np.random.default_rng(batch))
    for fn in (through, python):  # a first call makes the batch's buffers
        fn(_feeds(batch, np.random.default_rng(99)))
    if variant == "readonly":
        feeds[which].flags.writeable = False
    elif variant == "dtype":
        feeds[which] = feeds[which].astype(np.float64)
    elif variant == "shape":
        feeds[which] = feeds[which][..., None]
    elif variant == "batch" and which != "c":
        feeds[which] = np.concatenate([feeds[which]] * 2, axis=1 if which == "m" else 0)
    elif variant == "transposed":
        feeds[which] = np.asfortranarray(feeds[which][..., None])[..., 0]
    elif variant == "list":
        feeds[which] = feeds[which].tolist()
    elif variant == "missing":
        del feeds[which]
    elif variant == "extra":
        feeds["y"] = feeds[which]
    elif variant == "subclass":
        feeds[which] = np.ma.masked_array(feeds[which])
    elif variant == "range" and batch:
        feeds["ids"][-1] = 5
    ran = spy.ran
    assert _outcome(through, feeds) == _outcome(python, feeds)
    if variant in ("ok", "readonly"):
        assert spy.ran == ran + 1


def test_a_plain_train_step_runs_in_the_lane_and_trains_as_the_python_path():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((8, 4)).astype(np.float32), rng.integers(0, 3, 8).astype(np.int32)
    params = []
    for plain in (True, False):
        g = dg.Graph(seed=3)
        x, y = g.input("x", (None, 4)), g.input("y", (None,), dtype="int32")
        loss = dg.softmax_cross_entropy(dg.relu(x @ g.parameter("w", (4, 3))), y)
        train = g.compile(loss=loss, optimizer=dg.Adam(lr=0.01), backend="llvm")
        train._executor.runs_plain = plain
        spy = Spy(train._executor)
        losses = [train(x=data[0], y=data[1]) for _ in range(5)]
        assert train.step_count == 5 and (spy.ran == 4 if plain else spy.ran == 0)  # the first makes buffers
        params.append((losses, g.params["w"].copy()))
    assert params[0][0] == params[1][0]
    np.testing.assert_array_equal(params[0][1], params[1][1])


def test_a_step_stopped_in_the_lane_names_the_node_and_updates_nothing():
    g = dg.Graph(seed=0)
    ids, y = g.input("ids", (None,), dtype="int32"), g.input("y", (None,), dtype="int32")
    table = g.parameter("table", (4, 3))
    loss = dg.softmax_cross_entropy(dg.embedding(ids, table).named("lookup"), y)
    train = g.compile(loss=loss, optimizer=dg.SGD(lr=0.1), backend="llvm")
    spy = Spy(train._executor)
    train(ids=np.array([0, 1], np.int32), y=np.array([0, 2], np.int32))
    before = g.params["table"].copy()
    with pytest.raises(dg.ShapeError, match="lookup") as raised:
        train(ids=np.array([0, 7], np.int32), y=np.array([0, 2], np.int32))
    assert spy.ran == 1 and "7" in str(raised.value)
    np.testing.assert_array_equal(g.params["table"], before)
    assert train.step_count == 1


def test_batches_evicted_from_the_executor_leave_the_lane():
    through, python = _predictors()
    spy = Spy(through._executor)
    rng = np.random.default_rng(2)
    sizes = [1, 2, 3, 4, 5, 6, 1, 2, 6, 1]  # more sizes than the executor keeps buffers for
    for batch in sizes:
        feeds = _feeds(batch, rng)
        for got, want in zip(through(feeds), python(feeds)):
            np.testing.assert_array_equal(got, want)
        executor = through._executor
        assert set(executor._plain_tables) <= set(executor._bindings)
    assert spy.ran == 2  # 6 and 1 again: their buffers were still there


def test_large_outputs_are_written_in_place_by_the_python_path():
    """Outputs from 64 KiB are written straight into recycled arrays: the lane leaves those calls
    (and only those batch sizes) to the Python path, which saves their copy."""
    g = dg.Graph()
    x = g.input("x", (None, 256))
    predict = g.compile(outputs=x * 2.0, backend="llvm")
    spy = Spy(predict._executor)
    for batch in (1, 1, 128, 128):
        x_value = np.full((batch, 256), 1.5, np.float32)
        np.testing.assert_array_equal(predict(x=x_value), x_value * 2)
    assert spy.ran == 1 and spy.declined == 3


def test_drug_lane_0_turns_the_lane_off(monkeypatch):
    monkeypatch.setenv("DRUG_LANE", "0")
    lane.extension.cache_clear()
    try:
        g, rows, _ = _graph()
        assert not g.compile(outputs=rows, backend="llvm")._executor.runs_plain
    finally:
        monkeypatch.delenv("DRUG_LANE")
        lane.extension.cache_clear()
    assert lane.extension() is not None


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_a_lane_built_from_another_source_is_not_used(tmp_path, monkeypatch):
    """A development tree whose installed build is older than its source compiles the source into
    the cache directory; the extension reports the source it was built from."""
    monkeypatch.setenv("DRUG_CACHE_DIR", str(tmp_path))
    digest = csources.digest(lane.SOURCE)
    path = csources.compile_into_cache(lane.SOURCE, "DRUG_LANE_SOURCE", digest, python=True)
    assert path.parent == tmp_path and lane._load(path, digest) is not None
    assert lane._load(path, "0" * 64) is None

"""The README's reliability promises, attacked as an adversarial user would (issue 16): feeds
changed while a step reads them, custom ops that break their own shape rule, Ctrl-C during a
step or a load, a step's Python forward waiting for another thread's call of its graph, Python
floats float32 cannot hold, reductions over an empty batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import graph_errors_in_thread

import drug as dg
from drug.runtime import locks

BACKENDS = ["numpy", "llvm"]


def state_of(g, step) -> list[np.ndarray]:
    return [v.copy() for v in list(g.params.values()) + list(step.state.values())]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))


# ---- 1. a feed changed by another thread while native steps read it ----

MUTATED_IDS = """
import threading
import numpy as np
import drug as dg

g = dg.Graph(seed=0)
ids = g.input("ids", (None, 64), dtype="int32")
labels = g.input("labels", (None,), dtype="int32")
logits = g.input("logits", (None, 10))
table = g.parameter("table", (10, 256))
loss = dg.sum(dg.embedding(ids, table)) + dg.sum(dg.one_hot(labels, 10))
train = g.compile(loss=loss, optimizer=dg.SGD(0.0), backend=BACKEND)
predict = g.compile(outputs=[dg.embedding(ids, table), dg.softmax_cross_entropy(logits, labels)], backend=BACKEND)
fed, fed_labels = np.zeros((256, 64), np.int32), np.zeros(256, np.int32)
zeros = np.zeros((256, 10), np.float32)
done = threading.Event()

def mutate():
    while not done.is_set():
        for value in (0, 100_000_000, -100_000_000):
            fed[...] = value
            fed_labels[...] = value

thread = threading.Thread(target=mutate)
thread.start()
refused = 0
try:
    for _ in range(STEPS):
        calls = ((train, dict(ids=fed, labels=fed_labels)), (predict, dict(ids=fed, labels=fed_labels, logits=zeros)))
        for fn, feeds in calls:
            try:
                fn(**feeds)
            except dg.ShapeError:
                refused += 1
finally:
    done.set()
    thread.join()
print("refused", refused)
"""


@pytest.mark.parametrize("backend, steps", [("llvm", 1500), ("numpy", 300)])
def test_ids_changed_during_steps_never_reach_memory_out_of_bounds(backend, steps):
    """Ids that passed the kernel's check were read again from the caller's array for the copy: a
    thread writing huge ids meanwhile made the step read and write far outside the table
    (SIGSEGV, "double free or corruption"). The message of a refused step came from the op's
    NumPy forward on the same live array, and np.add.at crashed the same way. Whatever a feed holds
    at any moment, a step stays inside its buffers: a bad id raises ShapeError, a changing one gives
    some in-range row."""
    script = f"BACKEND, STEPS = {backend!r}, {steps}\n" + MUTATED_IDS
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stderr[-3000:]}"
    assert result.stdout.startswith("refused")


# ---- 3. a custom op whose forward breaks its shape rule ----


class FirstRow(dg.Op):
    """Declares its input's shape but returns one row: a bug in a user's op."""

    name = "test_reliability_first_row"
    arity = 1

    def infer(self, x):
        return x

    def ref(self, x):
        return x[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_op_returning_the_wrong_shape_is_named_by_both_backends(backend):
    """The native callback wrote the (4,) result into the (3, 4) buffer with NumPy broadcasting, so
    every row became the first one, silently; the reference raised. Both raise the same error."""
    g = dg.Graph(dtype="float64")
    x = g.input("x", (3, 4))
    node = FirstRow()(x)
    fn = g.compile(outputs=node * 2.0, backend=backend)
    with pytest.raises(dg.GraphError) as info:
        fn(x=np.arange(12.0).reshape(3, 4))
    assert str(info.value) == f"node {node.where} produced shape (4,), expected (3, 4)"
    assert node.where == f"'{node.label}' (op '{FirstRow.name}')"


# ---- 6, 7. Ctrl-C during a step or a load ----


class Ready(dg.Op):
    """Identity whose Python forward sets `event`: tells a test the step is running."""

    name = "test_reliability_ready"
    arity = 1
    event: threading.Event | None = None

    def infer(self, x):
        return x

    def ref(self, x):
        Ready.event.set()
        return x

    def grad(self, g, out, x):
        return [g]


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test: a process started in the
    background by a shell without job control inherits SIGINT ignored, and Python keeps that."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def interrupt_when(event: threading.Event, delay: float = 0.0) -> threading.Thread:
    """A thread that sends this process SIGINT (as Ctrl-C does) once `event` is set."""

    def run():
        event.wait(30)
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.usefixtures("ctrl_c_raises")
def test_ctrl_c_during_a_native_step_leaves_it_complete_and_counted(monkeypatch):
    """The step ran natively (GIL released) when SIGINT came; Python raised KeyboardInterrupt as it
    returned, after the parameters and optimizer state were updated but before the step count was:
    a retry applied the batch twice. Now the interrupt waits for the step to be complete: it was
    applied and counted, then KeyboardInterrupt is raised."""
    g = dg.Graph(seed=0)
    x = g.input("x", (None, 1024))
    w = g.parameter("w", (1024, 1024))
    h = Ready()(x) @ w  # the callback runs first, then the large GEMMs and the update
    train = g.compile(loss=dg.mean(dg.tanh(h @ w)), optimizer=dg.Adam(0.01))
    xb = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)
    monkeypatch.setattr(Ready, "event", threading.Event())
    train(x=xb)
    monkeypatch.setattr(Ready, "event", threading.Event())
    before = state_of(g, train)
    thread = interrupt_when(Ready.event)
    with pytest.raises(KeyboardInterrupt):
        train(x=xb)
        time.sleep(5)  # the interrupt must arrive during the call, not be lost
    thread.join()
    assert train.step_count == 2, "the step changed the parameters but was not counted"
    assert not same(state_of(g, train), before)


class SlowCopies:
    """np.copyto that sends SIGINT (pending, as a real Ctrl-C between two copies) on its second call."""

    def __init__(self):
        self.calls = 0
        self.copyto = np.copyto

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return self.copyto(*args, **kwargs)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_ctrl_c_between_the_reference_backends_updates_leaves_them_whole(monkeypatch):
    """The reference backend copied new values into the parameters one by one: an interrupt between
    two copies left some updated and others not. The updates are now committed as one."""
    g = dg.Graph(seed=0, dtype="float64")
    x = g.input("x", (None, 3))
    w1, w2 = g.parameter("w1", (3, 3)), g.parameter("w2", (3, 1))
    train = g.compile(loss=dg.mean(dg.tanh(x @ w1) @ w2), optimizer=dg.SGD(0.1), backend="numpy")
    xb = np.ones((4, 3))
    before = state_of(g, train)
    copies = SlowCopies()
    monkeypatch.setattr(np, "copyto", copies)
    with pytest.raises(KeyboardInterrupt):
        train(x=xb)
        time.sleep(5)
    monkeypatch.undo()
    assert copies.calls >= 2, "the test did not interrupt between two updates"
    changed = [not np.array_equal(before[i], g.params[name]) for i, name in enumerate(g.params)]
    assert all(changed) and train.step_count == 1, f"a torn step: changed {changed}, count {train.step_count}"


@pytest.mark.usefixtures("ctrl_c_raises")
def test_ctrl_c_during_load_changes_everything_or_nothing(tmp_path, monkeypatch):
    """load() copied the parameters in one at a time: Ctrl-C in between left a mix of old and
    loaded values. Now it stages everything, then commits with interrupts deferred."""
    g = dg.Graph(seed=0, dtype="float64")
    x = g.input("x", (None, 3))
    w1, w2 = g.parameter("w1", (3, 3)), g.parameter("w2", (3, 1))
    train = g.compile(loss=dg.mean(dg.tanh(x @ w1) @ w2), optimizer=dg.Adam(0.1), backend="numpy")
    train(x=np.ones((4, 3)))
    path = tmp_path / "c.npz"
    train.save(path)
    saved = state_of(g, train)
    train(x=np.ones((4, 3)))
    before = state_of(g, train)
    copies = SlowCopies()
    monkeypatch.setattr(np, "copyto", copies)
    with pytest.raises(KeyboardInterrupt):
        train.load(path)
        time.sleep(5)
    monkeypatch.undo()
    assert copies.calls >= 2
    after = state_of(g, train)
    assert (same(after, saved) and train.step_count == 1) or (same(after, before) and train.step_count == 2)


# ---- 9. a step's Python forward waiting for another thread's call of the same graph ----


class HandsOff(dg.Op):
    """A forward that runs a compiled function of its own graph on a worker thread and waits."""

    name = "test_reliability_hands_off"
    arity = 1
    target = None

    def infer(self, x):
        return x

    def ref(self, x):
        result = {}

        def work():
            try:
                HandsOff.target(x=np.ascontiguousarray(x))
            except dg.GraphError as error:
                result["error"] = error

        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
        if "error" in result:
            raise result["error"]
        return x


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_call_made_for_a_running_step_from_another_thread_does_not_hang(backend, monkeypatch):
    """The lock detected only same-thread re-entry: a forward handing the call to a worker and
    waiting for it deadlocked forever. Now a call waiting on a step that runs Python forwards gives
    up after locks.PYTHON_STEP_WAIT seconds with GraphError (shortened here)."""
    monkeypatch.setattr(locks, "PYTHON_STEP_WAIT", 0.5)
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 2))
    fn = g.compile(outputs=HandsOff()(x) + 1.0, backend=backend)
    other = g.compile(outputs=x * 2.0, backend=backend)
    monkeypatch.setattr(HandsOff, "target", other)
    errors = graph_errors_in_thread(fn, x=np.zeros((1, 2)))
    assert errors and "waited" in str(errors[0]) and "running a Python forward" in str(errors[0])
    monkeypatch.setattr(HandsOff, "target", lambda **feeds: None)
    np.testing.assert_array_equal(fn(x=np.zeros((1, 2))), np.ones((1, 2)))


def test_threads_still_take_turns_on_a_graph_with_python_forwards(monkeypatch):
    """The wait limit concerns calls stuck behind a step's Python forward, not ordinary turns: two
    threads calling a step with a custom op many times both finish, serialized."""
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 2))
    monkeypatch.setattr(HandsOff, "target", lambda **feeds: None)
    fn = g.compile(outputs=HandsOff()(x) * 3.0)
    results = []

    def calls():
        results.append(all(np.array_equal(fn(x=np.ones((2, 2))), np.full((2, 2), 3.0)) for _ in range(50)))

    threads = [threading.Thread(target=calls) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [True, True]


# ---- 13. Python floats float32 cannot hold ----


@pytest.mark.parametrize("value", [[[1e300, 0.0]], [[-1e39, 1.0]], [[1.0, 3.5e38]]])
@pytest.mark.parametrize("backend", BACKENDS)
def test_python_floats_beyond_float32_are_refused(value, backend):
    """1e300 and -1e39 became +-inf silently, against "converted only when that keeps their values"."""
    g = dg.Graph()
    x = g.input("x", (None, 2))
    fn = g.compile(outputs=x * 1.0, backend=backend)
    with pytest.raises(dg.ShapeError, match="input 'x'.*float32"):
        fn(x=value)


def test_python_floats_float32_holds_are_converted():
    g = dg.Graph()
    x = g.input("x", (None, 3))
    fn = g.compile(outputs=x * 1.0)
    np.testing.assert_array_equal(fn(x=[[3e38, -1e-45, float("inf")]]), np.float32([[3e38, -1e-45, np.inf]]))
    assert np.isnan(fn(x=[[float("nan"), 0, 1]])[0, 0])


# ---- 14. reductions over an empty batch ----


def empty_batch_graphs():
    g = dg.Graph()
    x = g.input("x", (None, 3))
    images = g.input("images", (2, 3, None, 4))
    return g, {
        "max over the batch": (dg.max(x, 0), "max"),
        "min over the batch": (dg.min(x, 0), "min"),
        "max of everything": (dg.max(x), "max"),
        "global max pool over an empty axis": (dg.global_pool(images, "max"), "max"),
        "global min pool over an empty axis": (dg.global_pool(images, "min"), "min"),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", list(empty_batch_graphs()[1]))
def test_max_and_min_of_an_empty_batch_raise_naming_the_node(backend, which):
    """The reference raised NumPy's "zero-size array to reduction operation maximum which has no
    identity" and native code returned -inf: max and min of nothing are undefined, so both raise
    ShapeError naming the node, before anything runs."""
    g, cases = empty_batch_graphs()
    node, op = cases[which]
    fn = g.compile(outputs=node, backend=backend)
    feeds = {"x": np.zeros((0, 3), np.float32), "images": np.zeros((2, 3, 0, 4), np.float32)}
    with pytest.raises(dg.ShapeError) as info:
        fn(**{i.name: feeds[i.name] for i in fn.inputs})
    assert f"node {node.label} (op '{op}')" in str(info.value) and "empty" in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reductions_with_an_identity_and_softmax_agree_on_an_empty_batch(backend):
    """sum is 0, mean is NaN (0/0, like NumPy); softmax over an empty axis is empty; the reference
    raised for softmax over the batch axis."""
    g = dg.Graph()
    x = g.input("x", (None, 3))
    fn = g.compile(
        outputs=[dg.sum(x, 0), dg.mean(x, 0), dg.softmax(x, 0), dg.softmax(x, 1), dg.max(x, 1)], backend=backend
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        total, mean, soft0, soft1, row_max = fn(x=np.zeros((0, 3), np.float32))
    np.testing.assert_array_equal(total, np.zeros(3, np.float32))
    assert np.isnan(mean).all() and mean.shape == (3,)
    assert soft0.shape == soft1.shape == (0, 3) and row_max.shape == (0,)


# ---- found by the issue-16 campaign ----


class Increments(dg.Op):
    """A custom op whose forward writes into its input (a bug of the user's)."""

    name = "test_reliability_increments"
    arity = 1

    def infer(self, x):
        return x

    def ref(self, x):
        x += 1.0
        return x.copy()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_forward_writing_into_its_inputs_cannot_change_feeds_or_parameters(backend):
    """A Python forward got the caller's feed and (natively) the parameter buffer itself: `x += 1`
    in it changed the user's array and the parameter. Forwards now get read-only views."""
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 2))
    w = g.parameter("w", (2,), init="zeros")
    fn = g.compile(outputs=[Increments()(w + 0.0), Increments()(x)], backend=backend)
    xv = np.zeros((1, 2))
    with pytest.raises(ValueError, match="read-only"):
        fn(x=xv)
    np.testing.assert_array_equal(xv, np.zeros((1, 2)))
    np.testing.assert_array_equal(g.params["w"], np.zeros(2))


@pytest.mark.parametrize("value", ["abc", float("nan"), -1.0, float("inf"), 1e300, None, True])
def test_the_learning_rate_takes_only_finite_non_negative_numbers(value):
    """train.lr = 'abc' raised NumPy's ValueError; NaN, -1, None (as NaN) and 1e300 (as inf) were stored."""
    g = dg.Graph()
    x = g.input("x", (None, 2))
    train = g.compile(loss=dg.mean(x @ g.parameter("w", (2, 1))), optimizer=dg.SGD(0.1))
    with pytest.raises(dg.GraphError, match="learning rate"):
        train.lr = value
    assert train.lr == pytest.approx(0.1)
    train.lr = 0.25
    assert train.lr == 0.25


def test_a_masked_array_feed_is_refused():
    """The mask was ignored silently (the values under it were used)."""
    g = dg.Graph()
    x = g.input("x", (None, 2))
    fn = g.compile(outputs=x * 2.0)
    masked = np.ma.array(np.ones((2, 2), np.float32), mask=[[0, 1], [0, 0]])
    with pytest.raises(dg.ShapeError, match="masked array"):
        fn(x=masked)
    np.testing.assert_array_equal(fn(x=masked.filled(0)), [[2, 0], [2, 2]])


def test_the_reference_embedding_gradient_refuses_negative_ids():
    """np.add.at counted negative ids from the end of the table (found re-checking native errors)."""
    op = dg.ops.REGISTRY["embedding_grad"](4)
    with pytest.raises(dg.ShapeError, match="-1 out of range"):
        op.ref(np.ones((2, 3)), np.array([0, -1]))


def test_a_read_only_parameter_fails_the_reference_step_before_anything_is_written():
    """The reference backend copied the updates in one by one and hit the read-only parameter
    half-way, leaving the others updated."""
    g = dg.Graph(seed=0)
    x = g.input("x", (None, 2))
    w1, w2 = g.parameter("w1", (2, 2)), g.parameter("w2", (2, 1))
    train = g.compile(loss=dg.mean(dg.tanh(x @ w1) @ w2), optimizer=dg.SGD(0.1), backend="numpy")
    g.params["w2"].flags.writeable = False
    before = g.params["w1"].copy()
    with pytest.raises(dg.GraphError, match="w2 was made read-only"):
        train(x=np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(g.params["w1"], before)
    assert train.step_count == 0


def test_max_over_a_declared_empty_axis_is_refused_when_built():
    """x (None, 0): max over axis 1 raised NumPy's ValueError in the reference and gave -inf natively."""
    g = dg.Graph()
    x = g.input("x", (None, 0))
    for reduce in (dg.max, dg.min):
        with pytest.raises(dg.ShapeError, match="empty axis"):
            reduce(x, 1)
    fn = g.compile(outputs=dg.softmax(x, 1))
    assert fn(x=np.zeros((2, 0), np.float32)).shape == (2, 0)

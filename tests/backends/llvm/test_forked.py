"""Compiling in a forked child process (backends/llvm/forked.py): the result is the same machine
code as compiling here, an error in the child is raised here as itself, and a child that dies
without a result is reported rather than waited for."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

import drug as dg
from drug.backends.llvm import executor, forked

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")


def _train(monkeypatch, tmp_path, in_child: bool):
    monkeypatch.setenv("DRUG_CACHE_DIR", str(tmp_path / ("child" if in_child else "here")))
    monkeypatch.setenv(forked.ENV, "1" if in_child else "0")
    g = dg.Graph(seed=0)
    x, y = g.input("x", (None, 12)), g.input("y", (None,), dtype="int32")
    h = dg.relu(x @ g.parameter("w1", (12, 16)) + g.parameter("b1", (16,)))
    step = g.compile(loss=dg.softmax_cross_entropy(h @ g.parameter("w2", (16, 3)), y), optimizer=dg.Adam(0.01))
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((8, 12)).astype(np.float32), "y": rng.integers(0, 3, 8).astype(np.int32)}
    return [step(**feeds) for _ in range(3)], step


def test_a_child_compiles_the_same_program(monkeypatch, tmp_path):
    here, _ = _train(monkeypatch, tmp_path, in_child=False)
    there, step = _train(monkeypatch, tmp_path, in_child=True)
    assert here == there
    assert not step._executor.compiled.from_cache and "drug_step" in step.ir()  # the IR is rebuilt on demand


def test_an_error_in_the_child_is_raised_here():
    def fails() -> bytes:
        raise dg.ShapeError("node n7: shapes (2, 3) and (4,) do not match")

    with pytest.raises(dg.ShapeError, match="node n7"):
        forked.call(fails)


def test_an_error_that_does_not_pickle_arrives_as_text():
    class Local(Exception):  # a local class: pickle cannot find it by name
        pass

    def fails() -> bytes:
        raise Local("inner detail")

    with pytest.raises(RuntimeError, match="inner detail"):
        forked.call(fails)


def test_a_child_that_dies_is_reported():
    def dies() -> bytes:
        os.kill(os.getpid(), signal.SIGKILL)
        return b""

    with pytest.raises(RuntimeError, match="without a result"):
        forked.call(dies)


def test_the_result_comes_back_whole():
    data = bytes(range(256)) * 40_000  # larger than a pipe's buffer
    assert forked.call(lambda: data) == data


def test_meanwhile_work_runs_here_while_the_child_compiles(tmp_path, monkeypatch):
    """Work handed to `meanwhile` (storing the finished program) runs in this process after the
    fork and before the child's result is read: the child here waits for what it writes."""
    monkeypatch.setenv(forked.ENV, "1")
    flag = tmp_path / "stored"
    ran_in: list[int] = []

    def store() -> None:
        ran_in.append(os.getpid())
        flag.write_text("done")

    def compile_after_the_store() -> bytes:
        deadline = time.monotonic() + 30
        while not flag.exists():
            if time.monotonic() > deadline:
                return b"no store while compiling"
            time.sleep(0.01)
        return b"saw the store"

    forked.meanwhile(store)
    assert not flag.exists()  # nothing ran yet
    assert forked.call(compile_after_the_store) == b"saw the store"
    assert ran_in == [os.getpid()]


def test_meanwhile_work_stays_with_its_thread(monkeypatch):
    """Another thread's compile (drug's kernels, compiled beside the program) neither runs this
    thread's pending work nor forks while doing it; without fork it runs at once."""
    monkeypatch.setenv(forked.ENV, "1")
    done: list[str] = []
    forked.meanwhile(lambda: done.append("main"))
    other = threading.Thread(target=lambda: forked.call(lambda: b"kernels"))
    other.start()
    other.join()
    assert done == []
    forked.catch_up()
    assert done == ["main"]
    monkeypatch.setenv(forked.ENV, "0")
    forked.meanwhile(lambda: done.append("at once"))
    assert done == ["main", "at once"]


def test_the_child_is_not_waited_for_and_a_later_call_reaps_it(monkeypatch):
    """The parent returns once the whole result has arrived (the child's exit, tearing down its
    copy of this process, is not waited for); later calls collect the exit status."""
    monkeypatch.setenv(forked.ENV, "1")
    before = set(forked._unreaped)
    assert forked.call(lambda: b"first") == b"first"
    (pid,) = forked._unreaped - before
    deadline = time.monotonic() + 30
    while pid in forked._unreaped and time.monotonic() < deadline:
        forked._reap_finished()
        time.sleep(0.01)
    assert pid not in forked._unreaped
    with pytest.raises(ChildProcessError):  # collected: no zombie left behind
        os.waitpid(pid, os.WNOHANG)


def test_small_programs_compile_here_and_larger_ones_in_a_child(monkeypatch, tmp_path):
    monkeypatch.setenv("DRUG_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(forked.ENV, "1")
    calls: list[int] = []
    call = forked.call
    monkeypatch.setattr(forked, "call", lambda work: calls.append(1) or call(work))
    g = dg.Graph()
    a, b = g.input("a", (None, 8)), g.input("b", (None, 8))
    small = g.compile(outputs=dg.relu(a * b + 1.0))
    assert len(small._executor.schedule.kernels) <= executor.IN_PROCESS_KERNELS and calls == []
    np.testing.assert_allclose(small(a=np.ones((2, 8), np.float32), b=np.ones((2, 8), np.float32)), 2.0)
    _, step = _train(monkeypatch, tmp_path, in_child=True)
    assert len(step._executor.schedule.kernels) > executor.IN_PROCESS_KERNELS and calls == [1]

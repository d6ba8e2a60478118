"""One lock per graph: calls of its compiled functions take turns.

Why per graph and not per function: a train step updates the graph's parameters in place while
a predictor of the same graph reads them, and each function reuses its own arena between calls.
Two threads in one function, or a predictor running during a train step, would read half-updated
weights. Native code releases the GIL, so without the lock that race is real.

A call made from inside a running step of the same graph (a custom op's Python forward calling a
compiled function) raises GraphError instead of deadlocking or corrupting the running step. The
same call handed by the forward to another thread, while the forward waits for it, cannot be told
apart from an ordinary call waiting its turn: a call waiting on a step that runs Python forwards
(custom ops without a kernel, or any step of the reference backend) therefore gives up after
PYTHON_STEP_WAIT seconds with GraphError instead of waiting forever."""

from __future__ import annotations

import threading
import weakref

from ..core.errors import GraphError

PYTHON_STEP_WAIT = 60.0  # seconds a call waits for a step that is running Python forwards
_POLL = 0.05


class GraphLock:
    """Turns of one graph's compiled functions; `turn(runs_python)` is what a call enters."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # re-entrant, so that a nested call can be detected, not deadlock
        self._depth = 0
        self._holder_runs_python = False
        self._turns = 0  # counts acquisitions: a waiter measures each step it waits for on its own

    def turn(self, runs_python: bool) -> Turn:
        """The context a call of a function enters (kept by the function: one per step is cheap)."""
        return Turn(self, runs_python)

    def acquire(self, runs_python: bool) -> None:
        if not self._lock.acquire(False):  # positional: this is on every step's path
            self._wait()
        if self._depth:
            self._lock.release()
            raise GraphError(
                "a compiled function was called while a step of the same graph is running in this thread "
                "(from a custom op's forward?); compiled functions of one graph cannot nest"
            )
        self._depth += 1
        self._turns += 1
        self._holder_runs_python = runs_python

    def _wait(self) -> None:
        """Wait for the running step; give up if it runs Python forwards and does not end, which is
        what a forward waiting for this very call looks like."""
        waited, turn = 0.0, self._turns
        while not self._lock.acquire(timeout=_POLL):
            same_step, turn = self._turns == turn, self._turns
            waited = waited + _POLL if self._holder_runs_python and same_step else 0.0
            if waited >= PYTHON_STEP_WAIT:
                raise GraphError(
                    f"waited {PYTHON_STEP_WAIT:g} s for a step of the same graph that is running a Python "
                    "forward (a custom op without a native kernel); if that forward waits for this call "
                    "(handed to another thread), they would wait for each other forever. Compiled functions "
                    "of one graph cannot be called on behalf of its running step"
                )

    def release(self) -> None:
        self._depth -= 1
        self._holder_runs_python = False
        self._lock.release()


class Turn:
    """`with turn:` around a call (a plain class, not a generator: this is on every step's path)."""

    __slots__ = ("_lock", "_runs_python")

    def __init__(self, lock: GraphLock, runs_python: bool):
        self._lock, self._runs_python = lock, runs_python

    def __enter__(self) -> Turn:
        self._lock.acquire(self._runs_python)
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def graph_lock(graph: object) -> GraphLock:
    """The lock shared by every compiled function of `graph`."""
    with _LOCKS_LOCK:
        lock = _LOCKS.get(graph)
        if lock is None:
            lock = _LOCKS[graph] = GraphLock()
        return lock

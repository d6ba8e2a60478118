"""One lock per graph: calls of its compiled functions take turns.

Why per graph and not per function: a train step updates the graph's parameters in place while
a predictor of the same graph reads them, and each function reuses its own arena between calls.
Two threads in one function, or a predictor running during a train step, would read half-updated
weights. Native code releases the GIL, so without the lock that race is real.

A call made from inside a running step of the same graph (a custom op's Python forward calling a
compiled function) raises GraphError instead of deadlocking or corrupting the running step."""

from __future__ import annotations

import threading
import weakref

from ..core.errors import GraphError


class GraphLock:
    """`with lock:` around a call (a plain class, not a generator: this is on every step's path)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # re-entrant, so that a nested call can be detected, not deadlock
        self._depth = 0

    def __enter__(self) -> GraphLock:
        self._lock.acquire()
        if self._depth:
            self._lock.release()
            raise GraphError(
                "a compiled function was called while a step of the same graph is running in this thread "
                "(from a custom op's forward?); compiled functions of one graph cannot nest"
            )
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
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

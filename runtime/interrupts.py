"""Ctrl-C that waits for a consistent state.

A train step updates parameters, optimizer state and the step count; a load copies every array of
a checkpoint. Python raises KeyboardInterrupt at whatever bytecode runs when SIGINT arrives: after
the native step returned but before the count was incremented (a retry then applied the batch
twice), or between two parameter copies. Inside `deferred_interrupts()` a SIGINT is only recorded;
it is delivered (the previous handler runs, by default raising KeyboardInterrupt) when the block
ends, with the state whole. Signals reach Python's main thread only, so elsewhere this does nothing:
an interrupt raised in the main thread cannot tear a step running on another one."""

from __future__ import annotations

import _signal  # the C module under `signal`: its wrappers convert to enums via exceptions, ~5 us a call
import signal
import threading
from types import FrameType

_MAIN = threading.main_thread().ident
_SIGINT = int(signal.SIGINT)


class deferred_interrupts:  # noqa: N801 - used like a function: `with deferred_interrupts():`
    """`with deferred_interrupts():` holds SIGINT until the block ends (a plain class, not a
    generator: it is on every train step's path)."""

    __slots__ = ("_previous", "_received")

    def __enter__(self) -> deferred_interrupts:
        self._previous = None
        self._received: tuple[int, FrameType | None] | None = None
        if threading.get_ident() != _MAIN:
            return self
        previous = _signal.getsignal(_SIGINT)
        if previous is None:  # a handler installed outside Python: leave it alone
            return self
        _signal.signal(_SIGINT, self._record)  # a pending Ctrl-C is raised here, before anything changed
        self._previous = previous
        return self

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self._received = (signum, frame)

    def __exit__(self, *exc: object) -> None:
        previous = self._previous
        if previous is None:
            return
        self._previous = None
        _signal.signal(_SIGINT, previous)
        if self._received is None:
            return
        received, self._received = self._received, None
        if callable(previous):
            previous(*received)  # default_int_handler raises KeyboardInterrupt
        elif previous == _signal.SIG_DFL:
            signal.raise_signal(_SIGINT)

"""Compiling in a forked child process, so that the training process never holds the compiler.

Building a module's IR and running LLVM's optimizer and code generator on it fill the heap with
memory that the allocator keeps, and touch tens of megabytes of LLVM's own code: a process that
compiled once stays that much larger for its whole life, although it only ever runs the machine
code. A child made by fork() does that work on a copy of the process and sends back the object
code; only loading the objects (a small part of LLVM) happens here. A crash inside LLVM then
also ends the child, not the user's program.

While the child compiles, this process does the work handed to `meanwhile` (storing the
finished program in the compile cache), which would otherwise delay the fork.

`DRUG_COMPILE_PROCESS=0` compiles in this process instead, and so does a platform without fork.
"""

from __future__ import annotations

import gc
import os
import pickle
import struct
import threading
import traceback
import warnings
from collections.abc import Callable

from llvmlite.binding import ffi

ENV = "DRUG_COMPILE_PROCESS"
_OK, _RAISED = b"0", b"1"
_local = threading.local()  # .pending: this thread's `meanwhile` work not yet done (another
# thread compiling at the same time, drug's kernels, must not run it while this one forks)


# llvmlite's lock is held across every fork() of the process (this module's, or a user's
# multiprocessing), so that no other thread is inside LLVM at that moment: drug's kernels load on a
# thread from import on, and the child would inherit the lock held by a thread it does not have.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=ffi.lib._lock.__enter__,
        after_in_parent=lambda: ffi.lib._lock.__exit__(None, None, None),
        after_in_child=lambda: ffi.lib._lock.__exit__(None, None, None),
    )


def enabled() -> bool:
    return hasattr(os, "fork") and os.environ.get(ENV, "1") != "0"


def meanwhile(work: Callable[[], None]) -> None:
    """Do `work` while the next compile runs in its child, or at once when compiles run here.
    `catch_up` does it when no compile follows (the machine code was cached)."""
    _work().append(work)
    if not enabled():
        catch_up()


def catch_up() -> None:
    """Do this thread's pending `meanwhile` work now, in order."""
    pending = _work()
    while pending:
        pending.pop(0)()


def _work() -> list[Callable[[], None]]:
    if not hasattr(_local, "pending"):
        _local.pending = []
    return _local.pending


def call(work: Callable[[], bytes]) -> bytes:
    """`work()` in a forked child (or here, when that is off); its exception is raised here."""
    if not enabled():
        return work()
    _reap_finished()
    read_end, write_end = os.pipe()
    # Python >= 3.12, and JAX when it is loaded, warn about fork() in a process with threads: a
    # lock held at that moment stays held in the child. The child runs only drug's compiler, which
    # takes no lock but llvmlite's, held across every fork (below).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _work().clear()  # the parent's to do
        _child(work, write_end)
    os.close(write_end)
    try:
        catch_up()
    finally:  # the child's result is collected even if that work failed
        with os.fdopen(read_end, "rb") as pipe:
            payload = pipe.read()
    kind, body = payload[:1], payload[1 + _LENGTH.size :]
    if len(payload) >= 1 + _LENGTH.size and _LENGTH.unpack_from(payload, 1)[0] == len(body):
        # a whole result: the child is tearing its copy of this process down, which is not
        # waited for (the next call reaps it)
        _unreaped.add(pid)
        if kind == _OK:
            return body
        raise _unpickle(body)
    _, status = os.waitpid(pid, 0)
    raise RuntimeError(f"the compiler process ended without a result (exit status {os.waitstatus_to_exitcode(status)})")


_LENGTH = struct.Struct("<Q")  # the result's length, after its kind: a child killed while writing is told apart
_unreaped: set[int] = set()  # a set: two threads compiling at once (drug's kernels) may both reap one


def _reap_finished() -> None:
    """Collect the exit status of earlier children that have ended (they are zombies till then)."""
    for pid in list(_unreaped):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else (a user's os.wait())
            done = pid
        if done:
            _unreaped.discard(pid)


def _child(work: Callable[[], bytes], fd: int) -> None:
    # the child exits when its work is done: a garbage collection would only scan the heap it
    # inherited (building a long program's IR allocates enough objects to set several off)
    gc.disable()
    code = 0
    try:
        try:
            kind, body = _OK, work()
        except BaseException as error:  # noqa: BLE001 - sent to the parent, which raises it
            kind, body = _RAISED, _pickle(error)
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(kind + _LENGTH.pack(len(body)) + body)
    except BaseException:  # noqa: BLE001 - the parent reports the missing result
        code = 1
    finally:
        os._exit(code)  # no atexit handlers, no second flush of the parent's buffers


def _pickle(error: BaseException) -> bytes:
    text = "".join(traceback.format_exception(error))
    try:
        data = pickle.dumps(error)
        pickle.loads(data)
        return data
    except Exception:  # noqa: BLE001 - an exception that does not pickle travels as text
        return pickle.dumps(RuntimeError(f"compiling failed in the compiler process:\n{text}"))


def _unpickle(data: bytes) -> BaseException:
    error = pickle.loads(data)
    return error if isinstance(error, BaseException) else RuntimeError(str(error))

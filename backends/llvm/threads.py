"""The thread pool native steps share their work on (csrc/drug_pool.c), loaded once per process.

Generated code calls `drug_pool_run(task, frame, tasks)`: the thread running the step publishes
`tasks` pieces of work and takes them one at a time itself, beside the pool's workers; it only
ever waits for a piece another thread has started. Large loops, large GEMMs (each piece a block
of rows or columns through BLAS on one thread) and groups of independent kernels are split this
way, and OpenBLAS is set to one thread while a step runs (blas.OneThread). On a machine shared
with other processes a worker that is not running takes no work, where a fork-join region (what
libgomp offered) waits at its barrier for every thread of the team.

The library is built when drug is installed (setup.py); a missing or out-of-date build is
compiled with the C compiler into the cache directory instead. Without either, steps run on
one thread."""

from __future__ import annotations

import ctypes
import functools
import math
import os
import subprocess
import warnings
from pathlib import Path

import llvmlite.binding as llvm

from ...core.settings import env_count
from . import bounds, csources

SOURCE = csources.CSRC / "drug_pool.c"
RUN_SYMBOL, THREAD_SYMBOL = "drug_pool_run", "drug_pool_thread"
# An idle worker watches for the next job this long before it sleeps (a futex wake costs the
# caller microseconds); a caller whose last tasks run elsewhere watches this long, then sleeps.
WORKER_SPIN_NS = 200_000
CALLER_SPIN_NS = 50_000
CONTENDED_SPIN_NS = 2_000  # either, once a thread of the pool was preempted often (csrc/drug_pool.c)
SHORT_TASK_NS = 20_000  # ... unless its last tasks took this long at most: then it spins this long
# Threads beside the pool's thread per CPU that take tasks only while every CPU the pool runs on is
# busy with other work too (csrc/drug_pool.c): one covers the thread a time slice takes away
SPARE_THREADS = 1


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def _cgroup_quota() -> float | None:
    """CPUs' worth of time the cgroup may use (cgroup v2 cpu.max, or v1 cfs quota), None if unlimited."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def pin_workers() -> bool:
    """Whether the pool's workers keep to CPUs of their own, away from the calling thread's
    (DRUG_PIN_THREADS, default on; csrc/drug_pool.c pins only a pool with a thread per CPU)."""
    return os.environ.get("DRUG_PIN_THREADS", "1") != "0"


def spare_threads() -> int:
    """DRUG_SPARE_THREADS, else SPARE_THREADS (0: none)."""
    return env_count("DRUG_SPARE_THREADS", SPARE_THREADS, minimum=0)


def requested_threads() -> int:
    """DRUG_THREADS, else the usable CPUs."""
    return env_count("DRUG_THREADS", usable_cpus(), minimum=1)


def _open(path: Path, digest: str) -> ctypes.CDLL | None:
    """The library at `path` if it was built from the current source."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    lib.drug_pool_source.restype = ctypes.c_char_p
    return lib if lib.drug_pool_source().decode() == digest else None


@functools.cache
def pool() -> ctypes.CDLL | None:
    """The started pool (its `drug_pool_run` known to the JIT), or None when steps run on one
    thread: DRUG_THREADS=1, a single usable CPU, or no library."""
    threads = requested_threads()
    if threads < 2:
        return None
    try:
        lib = csources.load(SOURCE, "DRUG_POOL_SOURCE", _open)
    except (OSError, subprocess.CalledProcessError) as error:
        warnings.warn(f"drug: cannot build its thread pool ({error}); native steps run on one thread", stacklevel=2)
        return None
    if lib is None:
        return None
    lib.drug_pool_start.argtypes = [ctypes.c_int, ctypes.c_int] + [ctypes.c_int64] * 4 + [ctypes.c_int]
    spin = (WORKER_SPIN_NS, CALLER_SPIN_NS, CONTENDED_SPIN_NS, SHORT_TASK_NS)
    lib.drug_pool_start(threads, spare_threads(), *spin, pin_workers())
    for symbol in (RUN_SYMBOL, THREAD_SYMBOL):
        llvm.add_symbol(symbol, ctypes.cast(getattr(lib, symbol), ctypes.c_void_p).value)
    return lib


def thread_count() -> int:
    """Threads a native step uses: DRUG_THREADS, else the usable CPUs."""
    lib = pool()
    return 1 if lib is None else int(lib.drug_pool_threads())


def thread_slots() -> int:
    """How many threads may run tasks of one job at once (the spares included): per-thread
    scratch memory has this many parts, one per `drug_pool_thread` index."""
    lib = pool()
    return 1 if lib is None else int(lib.drug_pool_thread_slots())


def stats() -> dict[str, int]:
    """The pool's counters since it started (jobs, tasks, tasks run by the calling threads,
    waits for tasks running elsewhere, nanoseconds waited, workers pulled onto a waiting caller's
    CPU): how a machine's load shows."""
    lib = pool()
    names = ("jobs", "tasks", "caller_tasks", "waits", "wait_ns", "pulls")
    out = (ctypes.c_uint64 * len(names))()
    if lib is not None:
        lib.drug_pool_stats(out)
    return dict(zip(names, out))


def concurrent_kernels() -> bool:
    """Whether independent kernels of a step run at once on the pool (on unless
    DRUG_CONCURRENT_KERNELS=0; DRUG_BOUNDS_CHECK=1, which checks kernel by kernel, turns it off)."""
    if os.environ.get("DRUG_CONCURRENT_KERNELS", "1") == "0" or bounds.enabled():
        return False
    return pool() is not None

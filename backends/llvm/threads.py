"""The OpenMP runtime (libgomp): one thread pool for all the parallel work of a native step.

Loaded once, globally, so that JIT-compiled code resolves its symbols. Large loops and large
GEMMs (each thread calling BLAS on its own block) are shared out over its threads through
GOMP_parallel, and OpenBLAS is set to one thread while a step runs (runtime/blas.OneThread):
with two pools on the same cores, BLAS threads spinning after a GEMM slowed the next loop, and
the other way round. libgomp's default wait policy applies (spin briefly, then sleep): measured
on 2 cores it beat both `passive` (every region wakes a sleeping thread) and `active` (threads
spin forever, taking a core from the Python code between steps)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

from . import bounds


@functools.cache
def openmp() -> ctypes.CDLL | None:
    """libgomp, loaded with RTLD_GLOBAL, or None where there is none (loops then run serially)."""
    if os.environ.get("DRUG_THREADS") == "1":
        return None
    for name in ("libgomp.so.1", ctypes.util.find_library("gomp")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        threads = os.environ.get("DRUG_THREADS")
        if threads:
            lib.omp_set_num_threads(int(threads))
        return lib
    return None


def thread_count() -> int:
    """Threads a native step uses: DRUG_THREADS, else OpenMP's default (the cores)."""
    lib = openmp()
    return 1 if lib is None else int(lib.omp_get_max_threads())


def concurrent_kernels() -> bool:
    """Whether independent kernels of a step run at once on the OpenMP threads (on unless
    DRUG_CONCURRENT_KERNELS=0; DRUG_BOUNDS_CHECK=1, which checks kernel by kernel, turns it off)."""
    if os.environ.get("DRUG_CONCURRENT_KERNELS", "1") == "0" or bounds.enabled():
        return False
    return openmp() is not None

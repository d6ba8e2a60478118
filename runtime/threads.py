"""The OpenMP runtime (libgomp) that parallel loop kernels call through GOMP_parallel.

Loaded once, globally, so that JIT-compiled code resolves its symbols. Its threads sleep
between loops (OMP_WAIT_POLICY=passive unless the user chose otherwise): spinning threads
would take the second core from OpenBLAS's GEMM threads, which run between our loops."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os


@functools.cache
def openmp() -> ctypes.CDLL | None:
    """libgomp, loaded with RTLD_GLOBAL, or None where there is none (loops then run serially)."""
    if os.environ.get("DRUG_THREADS") == "1":
        return None
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
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


def concurrent_kernels() -> bool:
    """Whether independent kernels of a step run at once on the OpenMP threads: opt-in with
    DRUG_CONCURRENT_KERNELS=1 (on 2 cores it measured no faster for the MLP and GRU examples,
    whose GEMMs and large loops already use both cores); DRUG_BOUNDS_CHECK=1 keeps it off."""
    from ..compiler import bounds

    if os.environ.get("DRUG_CONCURRENT_KERNELS", "0") != "1" or bounds.enabled():
        return False
    return openmp() is not None

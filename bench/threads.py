"""`--threads N` for every framework at once. Call `configure` before PyTorch or JAX is imported:
OpenMP and XLA read their settings when they load.

- numpy's BLAS (and any OpenMP pool already loaded): threadpoolctl;
- drug's parallel loops: DRUG_THREADS (its GEMMs use numpy's BLAS);
- PyTorch: OMP_NUM_THREADS, then `torch.set_num_threads` when the torch peer loads;
- JAX/XLA: XLA_FLAGS (single-threaded Eigen for N=1) and, below the machine's core count, the
  process's CPU affinity, which XLA sizes its thread pool from and which binds every other
  library's threads to the same N cores too."""

from __future__ import annotations

import os

REQUESTED: int | None = None
_limits = None


def configure(n: int | None) -> None:
    global REQUESTED, _limits
    REQUESTED = n
    if not n:
        return
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DRUG_THREADS"):
        os.environ[var] = str(n)
    if n == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1".strip()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if 0 < n < len(cpus):
        os.sched_setaffinity(0, cpus[:n])
    from threadpoolctl import threadpool_limits

    _limits = threadpool_limits(n)  # kept alive: the limit lasts for the run


def apply_to_torch(torch) -> None:
    if REQUESTED:
        torch.set_num_threads(REQUESTED)

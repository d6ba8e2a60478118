"""The machine the numbers come from: CPU, versions, thread settings, and its measured peaks.

The peaks are measured, not looked up: sgemm peak is the best float32 `numpy.matmul` rate
(numpy's own BLAS, all its threads), memory bandwidth the best STREAM-like copy or add rate
over all usable CPUs, counting the bytes read and written."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time

import numpy as np


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD extensions that matter for these kernels."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_tile") if f in flags]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("drug", "numpy", "llvmlite", "threadpoolctl", "torch", "jax", "jaxlib", "rich", "matplotlib"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS", "DRUG_THREADS", "XLA_FLAGS")


def thread_info() -> dict:
    """Thread pools as the libraries report them now (call after the peers are loaded)."""
    from threadpoolctl import threadpool_info

    info: dict = {
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "pools": [
            {
                "api": p.get("internal_api"),
                "library": os.path.basename(p.get("filepath", "")),
                "threads": p.get("num_threads"),
            }
            for p in threadpool_info()
        ],
        "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
    }
    import sys

    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch"] = {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()}
    return info


def _best_rate(fn, work: float, repeats: int, min_seconds: float) -> float:
    fn()  # warm-up: page faults, thread start-up
    best, start, done = 0.0, time.perf_counter(), 0
    while done < repeats or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        best = max(best, work / (time.perf_counter() - t))
        done += 1
    return best


def sgemm_peak(n: int = 2048, repeats: int = 5, min_seconds: float = 1.0) -> float:
    """Best float32 GEMM rate of numpy's BLAS, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    out = np.empty((n, n), np.float32)
    return _best_rate(lambda: np.matmul(a, b, out=out), 2.0 * n**3, repeats, min_seconds) / 1e9


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def memory_bandwidth(megabytes: int = 256, repeats: int = 5, min_seconds: float = 1.0) -> dict[str, float]:
    """STREAM-like rates over buffers much larger than the caches, in GB/s of bytes read plus
    written: `copy` (c = a) and `add` (c = a + b, mostly reads, like the fusion workload), each
    split over one thread per usable CPU (NumPy releases the GIL), and the best of them."""
    from concurrent.futures import ThreadPoolExecutor

    n = megabytes * 2**20 // 4
    a, b, c = np.ones(n, np.float32), np.ones(n, np.float32), np.empty(n, np.float32)
    threads = usable_cpus()
    bounds = [(i * n // threads, (i + 1) * n // threads) for i in range(threads)]
    kernels = {"copy": (lambda s: np.copyto(c[s], a[s]), 2), "add": (lambda s: np.add(a[s], b[s], out=c[s]), 3)}
    rates = {}
    with ThreadPoolExecutor(threads) as pool:
        for name, (kernel, arrays) in kernels.items():
            run = lambda kernel=kernel: list(pool.map(kernel, [slice(lo, hi) for lo, hi in bounds]))
            rates[name] = _best_rate(run, arrays * 4.0 * n, repeats, min_seconds) / 1e9
    return {**rates, "best": max(rates.values()), "threads": threads}


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, of this process and its finished children)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    own = os.times()
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), own[0] + own[1] + own[2] + own[3]


class LoadMeter:
    """How busy the other processes kept the CPUs while the benchmark ran: multi-threaded
    frameworks (OpenMP barriers especially) slow down badly when a core is taken."""

    def __init__(self) -> None:
        self.start, self.wall = _cpu_seconds(), time.perf_counter()

    def other_load(self) -> float | None:
        """Average number of CPUs other processes used (0 on an idle machine)."""
        end = _cpu_seconds()
        if self.start is None or end is None:
            return None
        wall = time.perf_counter() - self.wall
        return max((end[0] - self.start[0]) - (end[1] - self.start[1]), 0.0) / max(wall, 1e-9)


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def describe(quick: bool = False) -> dict:
    """Everything but the thread pools (see `thread_info`), peaks included."""
    if quick:
        gemm, bandwidth = sgemm_peak(1024, 3, 0.2), memory_bandwidth(128, 3, 0.2)
    else:
        gemm, bandwidth = sgemm_peak(), memory_bandwidth()
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "platform": platform.platform(),
        "versions": versions(),
        "sgemm_peak_gflops": gemm,
        "memory_bandwidth_gbs": bandwidth["best"],
        "memory_bandwidth_detail": bandwidth,
        "load_average_at_start": load_average(),
    }

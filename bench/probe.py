"""One workload on one peer in a fresh process: peak memory and time to the first step.

The parent runs `python -m drug.bench.probe ...` and reads one JSON line. A fresh process is the
only way to attribute memory to one framework (the main run holds them all) and to time a
cold compile (empty caches, nothing imported lazily yet).

- time_to_first_step_s: building the model, compiling it, and its first train step;
- compile_s: that minus a steady step (the compile work alone, for every framework alike);
- peak_mb: the process's peak resident memory during steady steps above its resident memory
  just before the model was built (shared data and imports excluded; parameters, optimizer
  state, caches and compiled code included). Linux's peak counter is reset after the first
  steps so that compilers' transient memory does not count."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from . import threads


def cache_env(cache_dir: str) -> dict[str, str]:
    """Point every framework's compile cache at `cache_dir` (empty: a cold compile)."""
    return {
        "DRUG_CACHE_DIR": os.path.join(cache_dir, "drug"),
        "XDG_CACHE_HOME": os.path.join(cache_dir, "xdg"),
        "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache_dir, "inductor"),
        "JAX_COMPILATION_CACHE_DIR": os.path.join(cache_dir, "jax"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def probe(workload: str, peer: str, size: str, backend: str, steps: int, seed: int) -> dict:
    import gc

    from .peers import factory, unavailable_reason
    from .workloads import suite

    reason = unavailable_reason(peer)
    if reason:
        return {"error": reason}
    w = suite(size)[workload]
    data = w.make_data(seed)
    notes: list[str] = []
    make = factory(peer, backend=backend, notes=notes)
    gc.collect()
    rss0 = _status_kb("VmRSS")
    start = time.perf_counter()
    p = make(w, data)
    p.step()
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        p.step()
        times.append(time.perf_counter() - t)
    steady = sorted(times)[len(times) // 2]
    reset = _reset_peak()
    for _ in range(2):
        p.step()
    peak = _status_kb("VmHWM") if reset else None
    if peak is None:  # no resettable counter: the whole-process maximum, an upper bound
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "time_to_first_step_s": first,
        "steady_step_s": steady,
        "compile_s": max(first - steady, 0.0),
        "peak_mb": (peak - rss0) / 1024 if rss0 is not None else None,
        "peak_counter_reset": reset,
        "backend": getattr(p, "backend", None),
        "notes": notes,
    }


def run_probe(
    workload: str,
    peer: str,
    size: str,
    backend: str,
    threads_n: int | None,
    steps: int,
    seed: int,
    cache_dir: str | None,
    timeout: float = 1800.0,
) -> dict:
    """Run `probe` in a child process; returns its result, or {"error": ...}."""
    cmd = [sys.executable, "-m", "drug.bench.probe", workload, peer, "--size", size, "--backend", backend]
    cmd += ["--steps", str(steps), "--seed", str(seed)]
    if threads_n:
        cmd += ["--threads", str(threads_n)]
    env = dict(os.environ)
    if cache_dir:
        env.update(cache_env(cache_dir))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"probe timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"probe exited {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one workload on one peer, in this process (internal)")
    parser.add_argument("workload")
    parser.add_argument("peer")
    parser.add_argument("--size", default="full")
    parser.add_argument("--backend", default="llvm")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    threads.configure(args.threads)
    try:
        result = probe(args.workload, args.peer, args.size, args.backend, args.steps, args.seed)
    except Exception as error:  # reported to the parent, which carries on with the other peers
        result = {"error": f"{type(error).__name__}: {error}"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

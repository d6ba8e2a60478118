"""One workload through every peer: build from the shared data, check that all compute the same
thing, time the ones that do (interleaved), and derive throughput, GFLOP/s and ratios."""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np

from . import timing
from .peers import Factory, Unsupported
from .workloads import Workload

CHECK_STEPS = 3  # first loss: the forward pass; the next ones: gradients and the Adam update


def compare(values: list[float], reference: list[float], rtol: float, atol: float) -> dict:
    """Whether `values` match `reference` elementwise within atol + rtol*|reference|."""
    v, r = np.asarray(values, np.float64), np.asarray(reference, np.float64)
    if v.shape != r.shape or not np.all(np.isfinite(v)):
        return {"ok": False, "values": list(values), "reference": list(reference), "max_rel_diff": math.inf}
    rel = np.abs(v - r) / np.maximum(np.abs(r), 1e-30)
    ok = bool(np.all(np.abs(v - r) <= atol + rtol * np.abs(r)))
    return {"ok": ok, "values": list(values), "reference": list(reference), "max_rel_diff": float(rel.max())}


def _error_text(error: BaseException) -> str:
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" ({frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})" if frame else ""
    return f"{type(error).__name__}: {error}{where}"


def build_and_check(
    workload: Workload,
    data,
    factories: dict[str, Factory],
    reference: str,
    log: Callable[[str], None],
    note: Callable[[str], None],
) -> tuple[dict[str, dict], dict[str, object]]:
    """Per-peer results so far, and the peers that passed the check (ready to time)."""
    results: dict[str, dict] = {}
    ready: dict[str, object] = {}
    values: dict[str, list[float]] = {}
    order = [reference] + [n for n in factories if n != reference] if reference in factories else list(factories)
    for name in order:
        log(f"building and checking {name}")
        start = time.perf_counter()
        try:
            peer = factories[name](workload, data)
            setup = time.perf_counter() - start
            values[name] = peer.check_values(CHECK_STEPS)
        except Unsupported:
            results[name] = {"status": "skipped", "note": f"{name} has no {workload.name} implementation"}
            continue
        except Exception as error:  # one broken peer must not stop the others
            results[name] = {"status": "error", "note": _error_text(error)}
            note(f"{workload.name}/{name}: {results[name]['note']}")
            continue
        results[name] = {"status": "ok", "note": None, "setup_s": setup}
        if hasattr(peer, "backend"):
            results[name]["backend"] = peer.backend
        ref = reference if reference in values else next(iter(values))
        check = compare(values[name], values[ref], workload.rtol, workload.atol)
        check.update(rtol=workload.rtol, atol=workload.atol, against=ref)
        results[name]["check"] = check
        if not check["ok"]:
            results[name].update(
                status="refused",
                note=f"computes something else than {ref}: {values[name]} vs {values[ref]}; no ratio reported",
            )
            note(f"{workload.name}/{name}: {results[name]['note']}")
            continue
        ready[name] = peer
    return results, ready


def derive(workload: Workload, result: dict, machine: dict, drug_time: float | None) -> None:
    """Throughput, GFLOP/s (or GB/s), percent of the measured peak, and drug's speedup over it."""
    t = result["time_s"]
    result["throughput"] = workload.items_per_step / t["median"]
    result["throughput_p25_p75"] = [workload.items_per_step / t["p75"], workload.items_per_step / t["p25"]]
    result["gflops"] = workload.flops_per_step / t["median"] / 1e9
    if workload.bytes_per_step:
        result["gbs"] = workload.bytes_per_step / t["median"] / 1e9
        result["percent_of_peak"] = 100 * result["gbs"] / machine["memory_bandwidth_gbs"]
        result["peak_kind"] = "memory bandwidth"
    else:
        result["percent_of_peak"] = 100 * result["gflops"] / machine["sgemm_peak_gflops"]
        result["peak_kind"] = "sgemm"
    result["drug_speedup"] = t["median"] / drug_time if drug_time else None


def run_workload(
    workload: Workload,
    factories: dict[str, Factory],
    settings: timing.Settings,
    machine: dict,
    seed: int = 0,
    reference: str = "drug",
    log: Callable[[str], None] = lambda m: None,
    note: Callable[[str], None] = lambda m: None,
    baseline: Callable[[], AbstractContextManager] | None = None,
) -> dict:
    """Everything about one workload except memory and compile times (see `probe`). With a
    `baseline` (the machine's extra load stopped), each peer also gets its step time inside it
    from the same rounds (`baseline_time_s`) and its `slowdown`: the usual median over that one."""
    log("generating data")
    data = workload.make_data(seed)
    results, ready = build_and_check(workload, data, factories, reference, log, note)
    if ready:
        contenders = {n: p if hasattr(p, "timed") else p.step for n, p in ready.items()}
        try:
            if baseline is None:
                stats, inside = timing.measure(contenders, settings, progress=log), {}
            else:
                stats, inside = timing.measure_with_baseline(contenders, baseline, settings, progress=log)
        finally:
            for p in ready.values():
                if hasattr(p, "close"):
                    p.close()
        for name, s in stats.items():
            results[name]["time_s"] = s.as_dict()
            if name in inside:
                results[name]["baseline_time_s"] = inside[name].as_dict()
                results[name]["slowdown"] = s.median / inside[name].median
        drug_time = stats[reference].median if reference in stats else None
        for name in stats:
            derive(workload, results[name], machine, drug_time)
    return {
        "description": workload.describe(),
        "unit": workload.unit,
        "items_per_step": workload.items_per_step,
        "flops_per_step": workload.flops_per_step,
        "bytes_per_step": workload.bytes_per_step,
        "reference": reference,
        "peers": results,
    }

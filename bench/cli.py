"""drug-bench: drug against NumPy, PyTorch (eager, torch.compile) and JAX on the same workloads.

Every workload is built by every installed framework from the same initial arrays; the first
losses must agree before anything is timed (a peer that computes something else gets no
ratio). Each framework runs in a worker process of its own (--same-process: all in this one),
and the parent times them in interleaved rounds after warm-up, so a slow moment of the machine
hits every framework alike. Peak memory and compile times (cold, then with the cache warm) come
from one more fresh process per framework and workload. Run it on an otherwise idle machine."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import asdict

from . import threads
from .load import BusyLoad

DESCRIPTION = __doc__


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from .peers import PEERS
    from .workloads import ALL_WORKLOADS, ONNX_WORKLOADS, SIZES

    p = argparse.ArgumentParser(
        prog="drug-bench", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--only",
        help=f"comma-separated workloads (default: all of {','.join(ALL_WORKLOADS)}); 'onnx' runs the ONNX "
        f"inference workloads ({','.join(ONNX_WORKLOADS)}: drug against onnxruntime, the onnx extra)",
    )
    p.add_argument("--peers", help=f"comma-separated frameworks (default: all installed of {','.join(PEERS)})")
    p.add_argument("--backend", default="llvm", choices=["llvm", "numpy", "opencl"], help="drug's backend (default "
                   "llvm; falls back to numpy with a note while the native backend is unavailable); opencl runs on "
                   "DRUG_OPENCL_DEVICE (default: the first OpenCL device)")  # fmt: skip
    p.add_argument(
        "--same-process",
        action="store_true",
        help="time every framework in this one process (their thread pools then compete; default: a worker "
        "process per framework, timed in interleaved rounds)",
    )
    p.add_argument("--threads", type=int, help="threads for every framework (default: each library's own default)")
    p.add_argument("--quick", action="store_true", help="a short run: brief warm-up, 5 rounds, short peak measurements")
    p.add_argument("--size", default="full", choices=sorted(SIZES), help="'tiny' shrinks every workload (smoke tests)")
    p.add_argument("--rounds", type=int, help="timing rounds (default 15, or 5 with --quick)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a bar chart (PNG; needs matplotlib)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-framework peak-memory processes")
    p.add_argument("--seed", type=int, default=0, help="seed of the shared initial parameters and batches")
    p.add_argument("--load", type=int, default=0, metavar="N",
                   help="run N busy processes (python -c 'while True: pass') beside it: a shared machine")  # fmt: skip
    p.add_argument("--load-cpus", metavar="LIST", help="pin the --load processes to these CPUs (e.g. 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    args.only = _split(args.only, ALL_WORKLOADS + ONNX_WORKLOADS + ("onnx",), "workload", p, ALL_WORKLOADS)
    if "onnx" in args.only:
        at = args.only.index("onnx")
        args.only[at : at + 1] = [w for w in ONNX_WORKLOADS if w not in args.only]
    args.peers = _split(args.peers, PEERS, "peer", p)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if args.load < 0:
        p.error("--load must be at least 0")
    try:
        args.load_cpus = [int(c) for c in args.load_cpus.split(",")] if args.load_cpus else None
    except ValueError:
        p.error("--load-cpus takes a comma-separated list of CPU numbers")
    return args


def _split(value: str | None, known: tuple[str, ...], what: str, parser, default=None) -> list[str]:
    if not value:
        return list(default or known)
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in known]
    if unknown:
        parser.error(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}")
    return items


def timing_settings(args):
    from dataclasses import replace

    from . import timing

    settings = timing.QUICK if args.quick else timing.FULL
    return replace(settings, rounds=args.rounds) if args.rounds else settings


def run_probes(args, report: dict, available: list[str], progress) -> None:
    """Peak memory of every timed peer, and cold/warm compile times of the compiling ones."""
    from .peers import COMPILING_PEERS
    from .probe import run_probe

    models = [w for w in args.only if w != "compile"]
    compile_for = (models or ["mlp", "cnn", "resnet", "gru", "transformer", "fusion"]) if "compile" in args.only else []
    steps = 2 if args.quick else 3
    probe = lambda w, p, cache: run_probe(w, p, args.size, args.backend, args.threads, steps, args.seed, cache)
    compile_results: dict = {}
    for wname in dict.fromkeys(models + compile_for):
        peers = report["workloads"].get(wname, {}).get("peers", {})
        for pname in available:
            timed = peers.get(pname, {}).get("status") == "ok"
            wants_memory = timed and not args.no_memory
            wants_compile = wname in compile_for and pname in COMPILING_PEERS
            if not (wants_memory or wants_compile):
                continue
            with tempfile.TemporaryDirectory(prefix="drug-bench-cache-") as cache:
                progress.begin(f"{wname}/{pname}")
                progress.update("fresh process: memory" + (", cold compile" if wants_compile else ""))
                cold = probe(wname, pname, cache if wants_compile else None)
                if "error" in cold:
                    progress.note(f"{wname}/{pname} probe: {cold['error']}")
                if wants_memory and pname in peers:
                    peers[pname]["peak_mb"] = cold.get("peak_mb")
                    if "error" in cold:
                        peers[pname]["memory_error"] = cold["error"]
                if wants_compile:
                    progress.update("fresh process: warm compile (cache from the cold one)")
                    warm = probe(wname, pname, cache)
                    compile_results.setdefault(wname, {})[pname] = _compile_entry(cold, warm, args.backend)
    if compile_results:
        report["compile"] = compile_results


def _compile_entry(cold: dict, warm: dict, requested_backend: str) -> dict:
    entry = {
        "cold_s": cold.get("compile_s"),
        "warm_s": warm.get("compile_s"),
        "cold_time_to_first_step_s": cold.get("time_to_first_step_s"),
        "warm_time_to_first_step_s": warm.get("time_to_first_step_s"),
        "backend": cold.get("backend"),
    }
    error = cold.get("error") or warm.get("error")
    if error:
        entry["error"] = error
    elif (entry["cold_s"] or 0) > 0.5 and entry["warm_s"] is not None and entry["warm_s"] > 0.8 * entry["cold_s"]:
        entry["note"] = "warm ~ cold: no effective compile cache"
    if entry["backend"] and entry["backend"] != requested_backend:
        entry["note"] = f"backend {entry['backend']}" + (f"; {entry['note']}" if entry.get("note") else "")
    return entry


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads.configure(args.threads)  # before PyTorch or JAX is imported
    from . import machine, suite
    from . import report as rep
    from .peers import factory, unavailable_reason
    from .progress import Progress
    from .workloads import suite as workloads_of

    notes: list[str] = []
    load = machine.LoadMeter()
    with Progress(enabled=not args.no_progress) as progress:
        progress.begin("machine")
        progress.update("measuring sgemm peak and memory bandwidth")
        machine_info = machine.describe(quick=args.quick or args.size == "tiny")
        available = []
        for name in args.peers:
            progress.update(f"loading {name}")
            reason = unavailable_reason(name)
            if reason:
                notes.append(f"{name} skipped: {reason}")
                progress.note(notes[-1])
            else:
                available.append(name)
        if args.same_process:
            factories = {n: factory(n, backend=args.backend, notes=notes) for n in available}
        else:
            from . import isolated

            factories = {n: isolated.factory(n, args.size, args.seed, args.backend, args.threads) for n in available}
        settings = timing_settings(args)
        report: dict = {"machine": machine_info, "workloads": {}, "notes": notes}
        workloads = workloads_of(args.size)
        busy = BusyLoad(args.load, args.load_cpus)
        if args.load:
            notes.append(busy.describe())
            progress.note(notes[-1])
        with busy:
            for wname in [w for w in args.only if w != "compile"]:
                progress.begin(wname)
                result = suite.run_workload(
                    workloads[wname], factories, settings, machine_info, args.seed, log=progress.update,
                    note=progress.note, baseline=busy.paused if args.load else None,
                )  # fmt: skip
                for name in args.peers:
                    if name not in available:
                        result["peers"][name] = {"status": "skipped", "note": "not installed"}
                report["workloads"][wname] = result
            run_probes(args, report, available, progress)
        machine_info["threads"] = machine.thread_info()
    machine_info["other_load_cpus"] = other = load.other_load()
    if other is not None and other > 0.1 * (os.cpu_count() or 1):  # --load's processes count as our own
        notes.append(
            f"other processes kept {other:.2f} of {os.cpu_count()} CPUs busy during the run: numbers are noisy, "
            "and multi-threaded frameworks (OpenMP) can slow down many times over on a shared machine"
        )
    used = {r["peers"]["drug"].get("backend") for r in report["workloads"].values() if "drug" in r["peers"]}
    used |= {c["drug"].get("backend") for c in report.get("compile", {}).values() if "drug" in c}
    report["settings"] = {
        "backend": args.backend,
        "drug_backend_used": ",".join(sorted(b for b in used if b)),
        "threads": args.threads,
        "same_process": args.same_process,
        "quick": args.quick,
        "size": args.size,
        "seed": args.seed,
        "load": args.load,
        "load_cpus": args.load_cpus,
        "workloads": args.only,
        "peers": args.peers,
        "timing": asdict(settings),
        "command": " ".join(["drug-bench"] + (sys.argv[1:] if argv is None else list(argv))),
    }
    rep.print_report(report)
    if args.json:
        rep.write_json(report, args.json)
    if args.plot:
        from .plot import write_plot

        write_plot(report, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""drug-bench: the implementations agree, the CLI writes its JSON, a disagreeing peer gets no ratio.
Fast tests only (tiny shapes); nothing here asserts on timings."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from drug.bench import report, suite, timing
from drug.bench.load import BusyLoad
from drug.bench.peers import drug_impl, numpy_impl
from drug.bench.workloads import MODEL_WORKLOADS, ONNX_WORKLOADS, tiny_suite

TINY = tiny_suite()
FAST = timing.Settings(warmup_calls=1, warmup_seconds=0.0, rounds=3, block_seconds=0.001, max_seconds=5.0)
MACHINE = {"sgemm_peak_gflops": 100.0, "memory_bandwidth_gbs": 10.0}


def require(module: str) -> None:
    """Skip unless `module` imports (the peers come with the optional 'bench' extra)."""
    try:
        __import__(module)
    except ImportError as error:
        pytest.skip(f"{module} not importable: {error}")


def values(build, name: str) -> list[float]:
    w = TINY[name]
    return build(w, w.make_data(0)).check_values(suite.CHECK_STEPS)


def drug_numpy(w, data):
    return drug_impl.build(w, data, backend="numpy")


# the hand-written NumPy peer covers these; the others are checked against drug's NumPy backend
NUMPY_PEER = [n for n in MODEL_WORKLOADS if type(TINY[n]) in numpy_impl.CLASSES]


def reference_values(name: str) -> list[float]:
    return values(numpy_impl.build if name in NUMPY_PEER else drug_numpy, name)


@pytest.mark.parametrize("name", NUMPY_PEER)
def test_drug_and_numpy_peer_agree(name):
    w = TINY[name]
    got, ref = values(drug_numpy, name), values(numpy_impl.build, name)
    check = suite.compare(got, ref, w.rtol, w.atol)
    assert check["ok"], check
    if w.trains:  # later losses differ from the first: the check covers gradients and Adam too
        assert len(set(np.round(ref, 6))) > 1


def test_loss_of_first_step_is_the_first_check_value():
    w = TINY["mlp"]
    data = w.make_data(0)
    assert numpy_impl.build(w, data).loss_of_first_step() == values(numpy_impl.build, "mlp")[0]


# torch.compile only where it compiles in seconds (its train steps take a minute to compile here)
FRAMEWORK_CASES = [(p, n) for p in ("torch", "jax") for n in MODEL_WORKLOADS] + [("torch.compile", "fusion")]


@pytest.mark.parametrize("peer,name", FRAMEWORK_CASES)
def test_framework_peers_agree_with_numpy(peer, name):
    require(peer.split(".")[0])
    from drug.bench.peers import factory

    w = TINY[name]
    check = suite.compare(values(factory(peer), name), reference_values(name), w.rtol, w.atol)
    assert check["ok"], check


@pytest.mark.parametrize("name", [n for n in MODEL_WORKLOADS if n not in NUMPY_PEER])
def test_native_step_agrees_with_the_reference_backend(name):
    """No hand-written NumPy ResNet or transformer: drug's native step against its NumPy backend
    (the framework peers are checked against the same reference above)."""
    w = TINY[name]
    check = suite.compare(values(drug_impl.build, name), values(drug_numpy, name), w.rtol, w.atol)
    assert check["ok"], check
    assert len(set(np.round(check["reference"], 6))) > 1


class WrongPeer(numpy_impl.MLPPeer):
    """The NumPy MLP with one output bias perturbed: it computes something else."""

    name = "wrong"

    def __init__(self, workload, data):
        super().__init__(workload, data)
        self.p["b3"][0] += 0.5


def test_disagreeing_peer_gets_no_ratio():
    w = TINY["mlp"]
    factories = {"drug": drug_numpy, "numpy": numpy_impl.build, "wrong": WrongPeer}
    result = suite.run_workload(w, factories, FAST, MACHINE)
    peers = result["peers"]
    assert peers["numpy"]["status"] == "ok" and peers["numpy"]["drug_speedup"] > 0
    assert peers["wrong"]["status"] == "refused"
    assert not peers["wrong"]["check"]["ok"]
    assert "drug_speedup" not in peers["wrong"] and "time_s" not in peers["wrong"]
    text = report.render_plain(
        {"machine": fake_machine(), "settings": fake_settings(), "workloads": {"mlp": result}, "notes": []}
    )
    wrong_row = next(line for line in text.splitlines() if line.startswith("mlp") and "wrong" in line)
    assert "REFUSED" in wrong_row and "x" not in wrong_row.split("REFUSED")[1]


def test_broken_peer_is_reported_and_the_others_still_run():
    def broken(w, data):
        raise RuntimeError("boom")

    result = suite.run_workload(TINY["fusion"], {"drug": drug_numpy, "broken": broken}, FAST, MACHINE)
    assert result["peers"]["broken"]["status"] == "error" and "boom" in result["peers"]["broken"]["note"]
    assert result["peers"]["drug"]["status"] == "ok"


def test_drug_falls_back_to_numpy_when_the_native_backend_is_missing(monkeypatch):
    import drug as dg

    real = dg.Graph.compile

    def compile(self, *args, backend=None, **kwargs):
        if backend == "llvm":
            raise NotImplementedError("native backend not here yet")
        return real(self, *args, backend=backend, **kwargs)

    monkeypatch.setattr(dg.Graph, "compile", compile)
    notes: list[str] = []
    w = TINY["mlp"]
    peer = drug_impl.build(w, w.make_data(0), backend="llvm", notes=notes)
    assert peer.backend == "numpy" and "NotImplementedError" in notes[0]


def test_timing_interleaves_and_summarizes():
    calls = []
    stats = timing.measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, FAST)
    assert set(stats) == {"a", "b"} and all(s.n >= 3 and s.median > 0 for s in stats.values())
    assert "a" in calls and "b" in calls


def test_timing_with_a_baseline_times_each_contender_inside_it_in_the_same_rounds():
    inside, seen = [False], {"a": [], "b": []}

    @contextlib.contextmanager
    def baseline():
        inside[0] = True
        yield
        inside[0] = False

    contenders = {name: (lambda name=name: seen[name].append(inside[0])) for name in seen}
    usual, idle = timing.measure_with_baseline(contenders, baseline, FAST)
    assert set(usual) == set(idle) == {"a", "b"}
    assert all(usual[n].n == idle[n].n >= 3 for n in seen)
    assert all(True in calls and False in calls for calls in seen.values())


def test_run_workload_with_a_baseline_reports_the_slowdown_and_prints_it():
    result = suite.run_workload(TINY["fusion"], {"drug": drug_numpy}, FAST, MACHINE, baseline=contextlib.nullcontext)
    drug = result["peers"]["drug"]
    assert drug["slowdown"] == pytest.approx(drug["time_s"]["median"] / drug["baseline_time_s"]["median"])
    loaded = {"machine": fake_machine(), "settings": fake_settings(), "workloads": {"fusion": result}}
    text = report.render_plain(loaded)
    assert report.SLOWDOWN in text and f"÷{drug['slowdown']:.2f}" in text


def fake_machine():
    return {
        "cpu": "test CPU",
        "cpu_flags": [],
        "versions": {"python": "3"},
        "sgemm_peak_gflops": 100.0,
        "memory_bandwidth_gbs": 10.0,
        "threads": {"pools": []},
    }


def fake_settings():
    return {"backend": "numpy", "threads": None, "size": "tiny", "quick": True, "timing": {"rounds": 3}}


def test_cli_quick_fusion_writes_json(tmp_path):
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "drug.bench", "--quick", "--size", "tiny", "--only", "fusion"]
    cmd += ["--peers", "drug,numpy", "--backend", "numpy", "--json", str(out), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "fusion" in done.stdout and "GB/s" in done.stdout
    data = json.loads(out.read_text())
    assert data["schema"] == report.SCHEMA
    assert {"cpu", "versions", "threads", "sgemm_peak_gflops", "memory_bandwidth_gbs"} <= set(data["machine"])
    assert data["settings"]["workloads"] == ["fusion"] and data["settings"]["drug_backend_used"] == "numpy"
    fusion = data["workloads"]["fusion"]
    assert fusion["unit"] == "GB/s" and fusion["bytes_per_step"] > 0
    for name in ("drug", "numpy"):
        peer = fusion["peers"][name]
        assert peer["status"] == "ok" and peer["check"]["ok"]
        assert {"median", "p25", "p75", "n"} <= set(peer["time_s"])
        assert {"throughput", "gbs", "percent_of_peak", "drug_speedup", "peak_mb"} <= set(peer)
    assert fusion["peers"]["drug"]["drug_speedup"] == 1.0


def test_cli_quick_mlp_without_peers_writes_json(tmp_path):
    """The issue's smoke run: `drug-bench --quick --only mlp` with drug alone (native backend)."""
    out = tmp_path / "mlp.json"
    cmd = [sys.executable, "-m", "drug.bench", "--quick", "--only", "mlp", "--peers", "drug", "--size", "tiny"]
    cmd += ["--no-memory", "--json", str(out), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["settings"]["workloads"] == ["mlp"] and data["settings"]["drug_backend_used"] == "llvm"
    mlp = data["workloads"]["mlp"]
    assert set(mlp["peers"]) == {"drug"} and mlp["peers"]["drug"]["status"] == "ok"
    assert mlp["peers"]["drug"]["throughput"] > 0 and mlp["unit"] == "samples/s"


def test_cli_rejects_unknown_workload():
    done = subprocess.run([sys.executable, "-m", "drug.bench", "--only", "nope"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown workload nope" in done.stderr


def test_plot_is_written(tmp_path):
    require("matplotlib")
    from drug.bench.plot import write_plot

    result = suite.run_workload(TINY["fusion"], {"drug": drug_numpy, "numpy": numpy_impl.build}, FAST, MACHINE)
    path = tmp_path / "bench.png"
    write_plot({"machine": fake_machine(), "settings": fake_settings(), "workloads": {"fusion": result}}, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_busy_load_runs_for_the_block_only():
    with BusyLoad(2, cpus=[sorted(os.sched_getaffinity(0))[0]]) as load:
        assert len(load.processes) == 2 and all(p.poll() is None for p in load.processes)
        assert all(os.sched_getaffinity(p.pid) == set(load.cpus) for p in load.processes)
        processes = list(load.processes)
    assert all(p.returncode is not None for p in processes)


def test_busy_load_pauses_for_the_block_only():
    def state(process) -> str:
        return open(f"/proc/{process.pid}/stat").read().rsplit(")", 1)[1].split()[0]

    with BusyLoad(1) as load:
        with load.paused():
            assert state(load.processes[0]) == "T"
        assert state(load.processes[0]) in "RS"


def test_cli_load_says_so(tmp_path):
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "drug.bench", "--quick", "--size", "tiny", "--only", "fusion", "--load", "1"]
    cmd += ["--peers", "drug", "--backend", "numpy", "--no-memory", "--json", str(out), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "--load 1: 1 busy process" in done.stdout and "slowdown" in done.stdout
    data = json.loads(out.read_text())
    assert data["settings"]["load"] == 1 and data["workloads"]["fusion"]["peers"]["drug"]["slowdown"] > 0


@pytest.mark.parametrize("name", ONNX_WORKLOADS)
def test_onnx_workloads_drug_and_onnxruntime_agree(name):
    """The same ONNX file through drug.onnx and the JIT, and through onnxruntime: equal outputs."""
    require("onnx")
    require("onnxruntime")
    from drug.bench.peers import onnxruntime_impl

    w = TINY[name]
    got, ref = values(drug_impl.build, name), values(onnxruntime_impl.build, name)
    check = suite.compare(got, ref, w.rtol, w.atol)
    assert check["ok"], check


def test_cli_onnx_alias_selects_the_onnx_workloads(tmp_path):
    require("onnx")
    require("onnxruntime")
    out = tmp_path / "onnx.json"
    cmd = [sys.executable, "-m", "drug.bench", "--quick", "--only", "onnx", "--peers", "drug,onnxruntime"]
    cmd += ["--size", "tiny", "--rounds", "2", "--no-memory", "--json", str(out), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["settings"]["workloads"] == list(ONNX_WORKLOADS)
    for name in ONNX_WORKLOADS:
        peers = data["workloads"][name]["peers"]
        assert peers["drug"]["status"] == "ok" and peers["onnxruntime"]["status"] == "ok", peers
        assert peers["onnxruntime"]["check"]["ok"] and peers["onnxruntime"]["drug_speedup"] > 0

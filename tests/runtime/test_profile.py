"""The kernel profiler: compiled.profile(), its table and trace, and DRUG_PROFILE=1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import drug as dg


def mlp():
    g = dg.Graph(seed=0)
    x, y = g.input("x", (None, 64)), g.input("y", (None,), dtype="int32")
    h = dg.layers.Dense(32, "relu", name="fc1")(x)
    loss = dg.softmax_cross_entropy(dg.layers.Dense(10, name="fc2")(h), y).named("loss")
    rng = np.random.default_rng(0)
    feeds = dict(x=rng.standard_normal((16, 64)).astype(np.float32), y=rng.integers(0, 10, 16).astype(np.int32))
    return g, loss, feeds


def test_profile_times_every_kernel_and_changes_nothing(tmp_path):
    g, loss, feeds = mlp()
    train = g.compile(loss=loss, optimizer=dg.Adam(1e-3))
    train(**feeds)
    before = {k: v.copy() for k, v in g.params.items()}
    state = {k: v.copy() for k, v in train.state.items()}
    profile = train.profile(5, warmup=1, trace=tmp_path / "trace.json", **feeds)
    for k, v in before.items():
        np.testing.assert_array_equal(g.params[k], v)
    for k, v in state.items():
        np.testing.assert_array_equal(train.state[k], v)
    assert train.step_count == 1
    assert profile.steps == 5 and profile.batch == 16
    assert len(profile.kernels) == train.kernel_count
    assert all(k.seconds > 0 for k in profile.kernels)
    assert sum(k.share for k in profile.kernels) == pytest.approx(1.0)
    assert 0 < profile.kernel_seconds and 0 < profile.step_seconds <= profile.call_seconds
    origins = {o for k in profile.kernels for o in k.origin}
    assert {"fc1", "gradient of fc1", "update of fc1/w", "loss"} <= origins
    gemm = next(k for k in profile.kernels if k.origin == ["fc1"] and k.flops)
    assert gemm.flops == 2 * 16 * 64 * 32 and gemm.rate.endswith("GFLOP/s")
    assert any(k.rate.endswith("GB/s") for k in profile.kernels)
    table = str(profile)
    assert table.startswith("profile of train step: batch 16, medians of 5 steps")
    assert "kernel" in table and "made by" in table and "share" in table
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert len(events) == 5 * train.kernel_count
    assert all(e["ph"] == "X" and e["dur"] >= 0 and isinstance(e["tid"], int) for e in events)
    assert {e["args"]["step"] for e in events} == set(range(5))
    assert np.isfinite(train(**feeds)) and train.step_count == 2  # profiling took no step


def test_profile_of_a_predictor_and_top():
    g, loss, feeds = mlp()
    predict = g.compile(outputs=g["x"] @ g["fc1/w"])
    profile = predict.profile(3, x=feeds["x"])
    assert len(profile.kernels) == predict.kernel_count == 1
    assert profile.kernels[0].flops == 2 * 16 * 64 * 32
    assert len(profile.table(top=1).splitlines()) == 3


def test_the_profiling_build_computes_what_the_plain_build_does():
    g, loss, feeds = mlp()
    train = g.compile(loss=loss, optimizer=dg.SGD(0.1))
    start = {k: v.copy() for k, v in g.params.items()}
    plain = [train(**feeds) for _ in range(3)]
    after_plain = {k: v.copy() for k, v in g.params.items()}
    for k, v in start.items():
        g.params[k][...] = v
    profiler = train._backend.instrumented_executor(train.program, train.state, "profile")
    arrays = {n.id: feeds[n.name] for n in train.inputs}
    profiled = [float(profiler.run(arrays, 16)[0]) for _ in range(3)]
    np.testing.assert_allclose(profiled, plain, rtol=1e-6)
    for k, v in after_plain.items():
        np.testing.assert_allclose(g.params[k], v, rtol=1e-6, atol=1e-7)


def test_profile_needs_the_native_backend():
    g, loss, feeds = mlp()
    train = g.compile(loss=loss, optimizer=dg.SGD(0.1), backend="numpy")
    with pytest.raises(dg.GraphError, match="'numpy' backend cannot profile kernels; compile with backend='llvm'"):
        train.profile(2, **feeds)
    with pytest.raises(dg.GraphError, match="at least one step"):
        g.compile(loss=loss, optimizer=dg.SGD(0.1)).profile(0, **feeds)


def test_drug_profile_reports_at_exit(tmp_path):
    trace = tmp_path / "steps.json"
    code = (
        "import numpy as np, drug as dg\n"
        "g = dg.Graph(); x = g.input('x', (None, 8)); w = g.parameter('w', (8, 4))\n"
        "train = g.compile(loss=dg.mean(dg.relu(x @ w)), optimizer=dg.SGD(0.1))\n"
        "for _ in range(7): train(x=np.ones((5, 8), np.float32))\n"
    )
    env = {**os.environ, "DRUG_PROFILE": str(trace)}
    err = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stderr
    assert "DRUG_PROFILE: train step: batch 5, medians of 7 steps" in err
    assert f"trace written to {trace}" in err
    events = json.loads(trace.read_text())["traceEvents"]
    assert len({e["args"]["step"] for e in events}) == 7

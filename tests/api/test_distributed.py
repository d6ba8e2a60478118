"""Data-parallel training (drug.distributed): the allreduce pass in process with a stand-in
communicator, then real 2-rank jobs under mpirun (tests/api/mpi_worker.py), skipped with a reason
where mpi4py or mpirun is missing. MPI itself never starts in the pytest process: every MPI
run is a subprocess with a timeout, so a hanging job fails its test instead of the suite."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import drug as dg
from drug.compiler.allreduce import AllreduceGradients, buckets
from drug.ops.collective import AllreduceSum
from drug.runtime.step import compile_step

HERE = Path(__file__).resolve().parent
WORKER = HERE / "mpi_worker.py"
EXAMPLES = HERE.parents[1] / "examples"  # (not conftest's: subprocesses import this module)
MPIRUN = shutil.which("mpirun")
HAS_MPI4PY = importlib.util.find_spec("mpi4py") is not None
INSTALL = "apt-get install openmpi-bin libopenmpi-dev; pip install 'drug[mpi]' (or make install-mpi)"
needs_mpirun = pytest.mark.skipif(not (HAS_MPI4PY and MPIRUN), reason=f"needs mpi4py and mpirun on PATH ({INSTALL})")
TIMEOUT = 90  # seconds for one MPI job; the jobs here take 3-15 s on a loaded 2-core machine


class Replicas:
    """A stand-in communicator of `size` ranks that all hold this process's values: the mean
    over ranks is the local value, exactly (x * size / size for a power of two)."""

    def __init__(self, size: int):
        self.size = size
        self.calls: list[int] = []

    def Get_size(self) -> int:
        return self.size

    def Get_rank(self) -> int:
        return 0

    def Get_name(self) -> str:
        return "replicas"

    def Allreduce(self, send: np.ndarray, recv: np.ndarray) -> None:
        self.calls.append(send.size)
        recv[...] = send * self.size


def build(seed: int = 0, penalty: bool = False):
    g = dg.Graph(seed=seed)
    x, y = g.input("x", (None, 6)), g.input("y", (None,), dtype="int32")
    w1, b1 = g.parameter("w1", (6, 5)), g.parameter("b1", (5,), init="zeros")
    w2, b2 = g.parameter("w2", (5, 3)), g.parameter("b2", (3,), init="zeros")
    loss = dg.softmax_cross_entropy(dg.tanh(x @ w1 + b1) @ w2 + b2, y)
    if penalty:  # a parameter whose gradient reads no input: equal on every rank already
        v = g.parameter("v", (4,))
        loss = loss + dg.sum(v * v)
    return g, loss


def batch(n: int = 8):
    rng = np.random.default_rng(3)
    return rng.standard_normal((n, 6)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
@pytest.mark.parametrize("bucket_mb", [0.0, 25.0])
def test_allreduce_pass_keeps_the_trajectory_of_identical_replicas(backend, bucket_mb):
    comm = Replicas(2)
    plain_graph, plain_loss = build()
    plain = plain_graph.compile(loss=plain_loss, optimizer=dg.Adam(1e-2), backend=backend)
    graph, loss = build()
    passes = [("allreduce", AllreduceGradients(comm, int(bucket_mb * 2**20)))]
    train = compile_step(graph, loss, None, dg.Adam(1e-2), None, backend, False, passes)
    x, y = batch()
    for _ in range(3):
        assert train(x=x, y=y) == plain(x=x, y=y)
    for name in plain_graph.params:
        np.testing.assert_array_equal(graph.params[name], plain_graph.params[name], err_msg=name)
    expected = [3 + 5 + 15 + 30] * 3 if bucket_mb else [3, 15, 5, 30] * 3  # one packed bucket, or each gradient
    assert comm.calls == expected
    reduced = [n for n in train.program.nodes if isinstance(n.op, AllreduceSum)]
    assert len(reduced) == len(expected) // 3


def test_gradients_that_read_no_data_are_not_reduced():
    comm = Replicas(2)
    graph, loss = build(penalty=True)
    passes = [("allreduce", AllreduceGradients(comm))]
    train = compile_step(graph, loss, None, dg.SGD(0.1), None, "numpy", False, passes)
    train(**dict(zip("xy", batch())))
    assert comm.calls == [3 + 5 + 15 + 30], "the penalty parameter's gradient 2v is the same on every rank"


def test_buckets_are_capped_grouped_by_dtype_and_last_parameter_first():
    g = dg.Graph()
    small = [g.parameter(f"p{i}", (10,)) for i in range(4)]  # 40 bytes each
    big = g.parameter("big", (100,))
    wide = g.parameter("wide", (10,), dtype="float64")
    got = buckets(small + [big, wide], bucket_bytes=100)
    assert [[n.name for n in b] for b in got] == [["big"], ["p3", "p2"], ["wide"], ["p1", "p0"]]
    assert [[n.name for n in b] for b in buckets(small, 0)] == [["p3"], ["p2"], ["p1"], ["p0"]]


def test_shard_split_and_minibatches_give_disjoint_equal_parts():
    assert [dg.distributed.shard(10, r, 3) for r in range(3)] == [range(0, 3), range(3, 6), range(6, 9)]
    with pytest.raises(ValueError, match="rank 3"):
        dg.distributed.shard(10, 3, 3)
    worlds = [dg.distributed.World(_Rank(r, 2)) for r in range(2)]
    per_rank = [list(w.minibatches(101, 20, seed=7, epoch=1)) for w in worlds]
    assert [len(b) for b in per_rank[0]] == [len(b) for b in per_rank[1]] == [10] * 5
    seen = np.concatenate([np.concatenate(p) for p in per_rank])
    assert len(set(seen)) == len(seen) == 100, "disjoint, and only the last odd sample is left out"
    again = list(worlds[0].minibatches(101, 20, seed=7, epoch=1))
    assert all(np.array_equal(a, b) for a, b in zip(again, per_rank[0])), "the same seed and epoch, the same order"
    other = list(worlds[0].minibatches(101, 20, seed=7, epoch=2))
    assert not np.array_equal(other[0], per_rank[0][0]), "a new epoch reshuffles"
    with pytest.raises(ValueError, match="not a multiple of the 2 ranks"):
        next(worlds[0].minibatches(100, 21, seed=0))


class _Rank:
    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.size


def _mpi_env() -> dict[str, str]:
    """This environment without a parent MPI job's variables and with one thread per rank (2
    ranks share the 2 cores of the CI machine). Open MPI: waiting ranks yield the core instead
    of spinning (the machine is shared), and shared-memory transfers copy through a buffer
    instead of using cross-memory attach, which containers often forbid (ptrace)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_", "OPAL_"))}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", DRUG_THREADS="1")
    env.update(OMPI_MCA_mpi_yield_when_idle="1", OMPI_MCA_btl_vader_single_copy_mechanism="none")
    return env


def _mpirun(ranks: int, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    flags = ["--oversubscribe", "--bind-to", "none"]
    if os.geteuid() == 0:
        flags.append("--allow-run-as-root")
    command = [MPIRUN, *flags, "-np", str(ranks), sys.executable, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_mpi_env())


@needs_mpirun
def test_one_rank_without_mpirun_is_plain_compile(tmp_path):
    """dg.distributed with a single process (not started by mpirun, but Open MPI's singleton start
    still needs its runtime installed): size 1, no allreduce, the same numbers as g.compile, and
    save/load work (in a subprocess: MPI does not start inside pytest)."""
    script = f"""
import numpy as np, drug as dg, sys
sys.path.insert(0, {str(HERE)!r})
from test_distributed import build, batch
dist = dg.distributed.init()
assert (dist.rank, dist.size, dist.is_root) == (0, 1, True)
g1, l1 = build(); g2, l2 = build()
plain = g1.compile(loss=l1, optimizer=dg.Adam(1e-2))
train = dg.distributed.compile(g2, l2, dg.Adam(1e-2))
x, y = batch()
for _ in range(3):
    assert plain(x=x, y=y) == train(x=x, y=y)
assert all(np.array_equal(g1.params[k], g2.params[k]) for k in g1.params)
assert train.kernel_count == plain.kernel_count and dist.average(2.5) == 2.5
train.save({str(tmp_path / "one.npz")!r}); train.load({str(tmp_path / "one.npz")!r})
assert train.step_count == 3
print("ok")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT, env=_mpi_env()
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """One 2-rank job running the worker's trajectory, checkpoint and mismatch scenarios."""
    out = tmp_path_factory.mktemp("mpi")
    proc = _mpirun(2, str(WORKER), str(out), "trajectory", "checkpoint", "mismatch")
    assert proc.returncode == 0, f"mpirun exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return out


@needs_mpirun
@pytest.mark.parametrize("config", ["sgd-llvm", "adam-llvm", "adam-llvm-unbucketed", "sgd-numpy"])
def test_two_ranks_follow_one_process_with_the_combined_batch(two_ranks, config):
    """2 ranks x batch 16 for 10 steps = 1 process x batch 32 on the same samples. Not bit for
    bit: the weight gradients sum the batch in a different order (two GEMMs over 16 rows whose
    results the allreduce adds, against one GEMM over 32), so gradients differ by a few ulps
    (~1e-7 relative), and 10 steps of SGD/Adam keep that at ~1e-7 absolute. A missing or wrong
    average (the sum, a rank's own gradient) moves parameters by ~1e-2, as far as training does."""
    result = json.loads((two_ranks / "result.json").read_text())[config]
    assert result["ranks_equal"], "every rank must hold the same parameters after each step"
    assert result["max_step"] > 5e-2, "the parameters must have moved for the comparison to mean anything"
    assert result["max_abs_diff"] < 1e-6, result
    assert result["allreduces"] == (4 if config.endswith("unbucketed") else 1)


@needs_mpirun
def test_checkpoint_is_written_once_by_rank_0_and_broadcast_on_load(two_ranks):
    reports = json.loads((two_ranks / "checkpoint.json").read_text())
    assert [r["writes"] for r in reports] == [1, 0]
    assert all(r["exists_after_save"] for r in reports), "save returns only once rank 0's file is complete"
    assert all(r["restored"] for r in reports) and [r["step_count"] for r in reports] == [1, 1]


@needs_mpirun
def test_ranks_with_different_graphs_all_raise_the_same_error(two_ranks):
    messages = [(two_ranks / f"mismatch-{r}.txt").read_text() for r in range(2)]
    assert messages[0] == messages[1]
    assert "rank 1 and rank 0 differ in their graphs" in messages[0]
    assert "parameter 'b1' is ((11,), 'float32') on rank 1, ((10,), 'float32') on rank 0" in messages[0]


@needs_mpirun
@pytest.mark.parametrize(
    "scenario, message",
    [
        # the first kernel to read the labels names them: the loss's rows, or the one_hot of its gradient
        (
            "fail-step",
            r"rank 1 of 2 failed in a train step: ShapeError: node '[^\n]*softmax_cross_entropy[^\n]*out of range",
        ),
        ("fail-outside", r"rank 1 of 2 failed with an uncaught exception: RuntimeError: rank 1 could not read"),
    ],
)
def test_a_failing_rank_ends_the_job_instead_of_hanging(tmp_path, scenario, message):
    proc = _mpirun(2, str(WORKER), str(tmp_path), scenario, timeout=60)
    assert proc.returncode != 0
    assert re.search(message, proc.stderr), proc.stderr[-3000:]
    assert "aborting all 2 ranks" in proc.stderr
    assert "unreachable" not in proc.stdout


@needs_mpirun
def test_mnist_example_runs_data_parallel(tmp_path):
    example = EXAMPLES / "mnist_dense.py"
    ckpt = tmp_path / "mlp.npz"
    args = [str(example), "--distributed", "--smoke", "--epochs", "1", "--save", str(ckpt)]
    proc = _mpirun(2, *args, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("summary: test accuracy") == 1, "only rank 0 prints"
    assert "per rank x 2 rank(s)" in proc.stdout
    assert ckpt.exists()

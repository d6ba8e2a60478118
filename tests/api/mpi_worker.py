"""Run under mpirun by tests/test_distributed.py: `python mpi_worker.py OUT_DIR SCENARIO...`.

trajectory  every rank trains 10 steps with batch B; rank 0 also trains one plain process with
            batch 2B on the same samples and writes the parameter differences to OUT_DIR/result.json
checkpoint  a collective save (rank 0 writes once) and load (rank 0 reads, broadcasts)
mismatch    rank 1 builds a different graph: every rank must raise the same GraphError
fail-step   rank 1 feeds a label out of range: the job must end with an error naming rank 1
fail-outside rank 1 raises outside a step, while rank 0 waits in a barrier"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

import drug as dg
from drug.runtime import checkpoint

STEPS, BATCH, FEATURES, CLASSES = 10, 16, 12, 4


def build(hidden: int = 10, seed: int = 0):
    g = dg.Graph(seed=seed)
    x = g.input("x", (None, FEATURES))
    y = g.input("y", (None,), dtype="int32")
    h = dg.tanh(x @ g.parameter("w1", (FEATURES, hidden)) + g.parameter("b1", (hidden,), init="zeros"))
    logits = h @ g.parameter("w2", (hidden, CLASSES)) + g.parameter("b2", (CLASSES,), init="zeros")
    return g, dg.softmax_cross_entropy(logits, y)


def data(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The same samples on every rank: STEPS global batches of size * BATCH."""
    rng = np.random.default_rng(1)
    n = STEPS * BATCH * size
    return rng.standard_normal((n, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, n).astype(np.int32)


def trajectory(dist: dg.distributed.World, out_dir: str) -> None:
    x, y = data(dist.size)
    configs = {
        "sgd-llvm": (lambda: dg.SGD(0.1, momentum=0.9), "llvm", 25.0),
        "adam-llvm": (lambda: dg.Adam(1e-2), "llvm", 25.0),
        "adam-llvm-unbucketed": (lambda: dg.Adam(1e-2), "llvm", 0.0),
        "sgd-numpy": (lambda: dg.SGD(0.1, momentum=0.9), "numpy", 25.0),
    }
    result = {}
    for name, (optimizer, backend, bucket_mb) in configs.items():
        g, loss = build(seed=dist.rank)  # different seeds: the broadcast must make them equal
        train = dg.distributed.compile(g, loss, optimizer(), backend=backend, bucket_mb=bucket_mb)
        global_batch = BATCH * dist.size
        for step in range(STEPS):
            idx = dist.split(np.arange(step * global_batch, (step + 1) * global_batch))
            train(x=x[idx], y=y[idx])
        params = {k: np.array(v) for k, v in g.params.items()}
        gathered = dist.comm.gather(params, root=0)
        if not dist.is_root:
            continue
        single, single_loss = build(seed=0)
        plain = single.compile(loss=single_loss, optimizer=optimizer(), backend=backend)
        for step in range(STEPS):
            rows = slice(step * global_batch, (step + 1) * global_batch)
            plain(x=x[rows], y=y[rows])
        result[name] = {
            "ranks_equal": all(np.array_equal(p[k], params[k]) for p in gathered for k in params),
            "max_abs_diff": max(float(np.abs(params[k] - single.params[k]).max()) for k in params),
            "max_rel_diff": max(
                float((np.abs(params[k] - single.params[k]) / (np.abs(single.params[k]) + 1e-3)).max()) for k in params
            ),
            "max_step": max(float(np.abs(params[k] - build(seed=0)[0].params[k]).max()) for k in params),
            "allreduces": len(train.program.leaves(dg.ops.collective.AllreduceSum)),
        }
    if dist.is_root:
        with open(os.path.join(out_dir, "result.json"), "w") as f:
            json.dump(result, f)


def checkpoint_roundtrip(dist: dg.distributed.World, out_dir: str) -> None:
    writes = []
    save = checkpoint.save
    checkpoint.save = lambda *args, **kwargs: (writes.append(args[0]), save(*args, **kwargs))
    g, loss = build()
    train = dg.distributed.compile(g, loss, dg.Adam(1e-2))
    x, y = data(dist.size)
    train(x=dist.split(x[: BATCH * dist.size]), y=dist.split(y[: BATCH * dist.size]))
    path = os.path.join(out_dir, "ckpt.npz")
    train.save(path)
    exists_after_save = os.path.exists(path)  # on every rank: save returns once rank 0 has written
    saved = {k: np.array(v) for k, v in g.params.items()}
    if dist.rank == 1:  # diverge, then load must bring rank 0's file back on every rank
        for value in g.params.values():
            value += 1.0
        train.step_count = 99
    train.load(path)
    report = {
        "writes": len(writes),
        "exists_after_save": exists_after_save,
        "restored": all(np.array_equal(saved[k], g.params[k]) for k in saved),
        "step_count": train.step_count,
    }
    reports = dist.comm.gather(report, root=0)
    if dist.is_root:
        with open(os.path.join(out_dir, "checkpoint.json"), "w") as f:
            json.dump(reports, f)


def mismatch(dist: dg.distributed.World, out_dir: str) -> None:
    g, loss = build(hidden=10 + dist.rank)
    try:
        dg.distributed.compile(g, loss, dg.SGD(0.1))
        message = None
    except dg.GraphError as error:
        message = str(error)
    with open(os.path.join(out_dir, f"mismatch-{dist.rank}.txt"), "w") as f:
        f.write(message or "no error")


def fail_step(dist: dg.distributed.World, out_dir: str) -> None:
    g, loss = build()
    train = dg.distributed.compile(g, loss, dg.SGD(0.1))
    x, y = data(dist.size)
    for step in range(3):
        labels = y[:BATCH].copy()
        if dist.rank == 1 and step == 2:
            labels[3] = CLASSES + 5  # out of range on one rank only
        train(x=x[:BATCH], y=labels)
    print("unreachable: the job should have been aborted", flush=True)


def fail_outside(dist: dg.distributed.World, out_dir: str) -> None:
    if dist.rank == 1:
        raise RuntimeError("rank 1 could not read its data shard")
    dist.barrier()  # rank 0 would wait here forever without the excepthook's MPI_Abort


SCENARIOS = {
    "trajectory": trajectory,
    "checkpoint": checkpoint_roundtrip,
    "mismatch": mismatch,
    "fail-step": fail_step,
    "fail-outside": fail_outside,
}

if __name__ == "__main__":
    out_dir, *scenarios = sys.argv[1:]
    for scenario in scenarios:
        SCENARIOS[scenario](dg.distributed.init(), out_dir)

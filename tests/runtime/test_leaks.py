"""No leaks: 10,000 native train steps (and a predictor call every tenth step) over changing
batch sizes keep the process's resident memory flat once warm.

The batch sizes cycle through five values, one more than the arenas the runtime keeps
(MAX_BINDINGS), so arenas and pooled output arrays are freed and allocated again all along:
what leaks in that churn (an arena, a pooled output, a ctypes pointer table, the caller's
arrays kept alive) shows up here."""

from __future__ import annotations

import gc
import os

import numpy as np

import drug as dg
from drug.backends.llvm.executor import MAX_BINDINGS

STEPS = 10_000
# Measured growth on this machine: 0 to 28 KiB (one malloc arena page set). The bound, 256 KiB,
# is ~26 bytes per step: a leak of even one small Python object per step (an int is 28 bytes, a
# tuple or float 40+) or of any array exceeds it, while allocator noise stays far below it.
BOUND = 256 * 1024


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_resident_memory_stays_flat_over_10000_steps():
    g = dg.Graph(seed=0)
    x, y = g.input("x", (None, 32)), g.input("y", (None,), dtype="int32")
    h = dg.relu(x @ g.parameter("w1", (32, 64)) + g.parameter("b1", (64,), init="zeros"))
    train = g.compile(loss=dg.softmax_cross_entropy(h @ g.parameter("w2", (64, 10)), y), optimizer=dg.Adam(1e-3))
    predict = g.compile(outputs=h)
    rng = np.random.default_rng(0)
    sizes = [16, 16, 16, 7, 16, 16, 3, 16, 16, 9, 16, 16, 5]
    assert len(set(sizes)) > MAX_BINDINGS, "the sizes must outnumber the arenas kept"
    batches = [(rng.standard_normal((n, 32)).astype(np.float32), rng.integers(0, 10, n).astype(np.int32))
               for n in sizes]  # fmt: skip

    def steps(count: int) -> None:
        for i in range(count):
            xb, yb = batches[i % len(batches)]
            train(x=xb, y=yb)
            if i % 10 == 0:
                predict(x=xb)

    steps(1000)  # warm-up: every arena size, output pool and lazily allocated buffer exists
    gc.collect()
    before = rss()
    steps(STEPS)
    gc.collect()
    growth = rss() - before
    assert train.step_count == STEPS + 1000
    assert growth < BOUND, f"resident memory grew by {growth / 1024:.0f} KiB over {STEPS} steps"

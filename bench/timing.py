"""Interleaved timing: every contender warms up, then the rounds take turns, so that slow drifts of
the machine (other load, clock changes, thermal limits) hit every contender alike.

Each round times a block of back-to-back calls per contender (enough calls to last about
`block_seconds`, so the timer's resolution and the switch between frameworks are amortized),
starting with a different contender every round. Statistics are over the per-call time of the
blocks: the median, and the spread as the interquartile range. With a baseline (the machine's
load stopped), every round times each contender once more inside it, next to its usual block."""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Settings:
    warmup_calls: int = 3
    warmup_seconds: float = 1.0
    rounds: int = 15
    block_seconds: float = 0.2
    max_seconds: float = 120.0  # per workload: fewer rounds rather than a run that never ends
    # a pause before each block: the previous framework's idle threads (OpenBLAS yields for ~0.1 s,
    # OpenMP spins) would otherwise steal the cores from the next one's first steps
    settle_seconds: float = 0.3


QUICK = Settings(warmup_calls=1, warmup_seconds=0.1, rounds=5, block_seconds=0.05, max_seconds=20.0, settle_seconds=0.2)
FULL = Settings()


@dataclass(frozen=True)
class Stats:
    median: float
    p25: float
    p75: float
    min: float
    max: float
    n: int  # blocks timed
    calls: int  # calls per block

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return (self.p75 - self.p25) / self.median if self.median > 0 else math.nan

    def as_dict(self) -> dict:
        return {**asdict(self), "spread": self.spread}


def stats(samples: list[float], calls: int) -> Stats:
    a = np.asarray(samples, dtype=np.float64)
    p25, median, p75 = np.percentile(a, [25, 50, 75])
    return Stats(float(median), float(p25), float(p75), float(a.min()), float(a.max()), len(a), calls)


def _timed(fn: Callable[[], object], calls: int) -> float:
    if hasattr(fn, "timed"):  # a peer in a worker process times itself there
        return fn.timed(calls)
    gc.collect(1)  # the young generations: a full collection takes ~0.5 s with PyTorch and JAX loaded
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls
    finally:
        if enabled:
            gc.enable()


def warm_up(fn: Callable[[], object], settings: Settings) -> float:
    """Run until both the call and time minimums are met; returns the last call's time."""
    start, calls, last = time.perf_counter(), 0, math.inf
    while calls < settings.warmup_calls or time.perf_counter() - start < settings.warmup_seconds:
        last = _timed(fn, 1)
        calls += 1
        if time.perf_counter() - start > settings.max_seconds / 4:
            break
    return last


def measure(
    contenders: dict[str, Callable[[], object]],
    settings: Settings = FULL,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Stats]:
    """Time each contender (a no-argument callable doing one step), interleaved; see module doc."""
    return _measure(contenders, settings, progress, [contextlib.nullcontext])[0]


def measure_with_baseline(
    contenders: dict[str, Callable[[], object]],
    baseline: Callable[[], contextlib.AbstractContextManager],
    settings: Settings = FULL,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Stats], dict[str, Stats]]:
    """`measure`, and each contender's blocks inside `baseline()` in the same rounds:
    (stats as the machine is, stats inside the baseline)."""
    usual, inside = _measure(contenders, settings, progress, [contextlib.nullcontext, baseline])
    return usual, inside


def _measure(
    contenders: dict[str, Callable[[], object]],
    settings: Settings,
    progress: Callable[[str], None] | None,
    conditions: list[Callable[[], contextlib.AbstractContextManager]],
) -> list[dict[str, Stats]]:
    """Per condition, each contender's stats: every round times a block of each contender under
    every condition (the order of both rotating from round to round)."""
    names = list(contenders)
    per_call = {}
    for name in names:
        if progress:
            progress(f"warm-up {name}")
        per_call[name] = max(warm_up(contenders[name], settings), 1e-9)
    calls = {n: max(1, round(settings.block_seconds / per_call[n])) for n in names}
    round_seconds = len(conditions) * sum(calls[n] * per_call[n] for n in names)
    rounds = max(3, min(settings.rounds, int(settings.max_seconds / max(round_seconds, 1e-9))))
    samples: list[dict[str, list[float]]] = [{n: [] for n in names} for _ in conditions]
    gc.collect()
    for r in range(rounds):
        if progress:
            progress(f"round {r + 1}/{rounds}")
        for i in range(len(names)):
            name = names[(r + i) % len(names)]  # rotate who goes first
            for j in range(len(conditions)):
                c = (r + j) % len(conditions)
                with conditions[c]():
                    time.sleep(settings.settle_seconds)
                    samples[c][name].append(_timed(contenders[name], calls[name]))
    return [{n: stats(s[n], calls[n]) for n in names} for s in samples]

"""Compiled steps run with subnormal floats flushed to zero (fpmode.py), on the caller's thread
and on the pool's workers, and leave the caller's floating-point mode as they found it."""

from __future__ import annotations

import numpy as np
import pytest

import drug as dg
from drug.backends.llvm import fpmode, threads

SUBNORMAL = np.float32(1e-40)

pytestmark = pytest.mark.skipif(fpmode.flushing() is None, reason="no flush-to-zero mode known for this machine")


def _doubled(n: int) -> np.ndarray:
    g = dg.Graph()
    x = g.input("x", (None,))
    fn = g.compile(outputs=x * 2.0, backend="llvm")
    return fn(x=np.full(n, SUBNORMAL, np.float32))


@pytest.mark.parametrize("n", [7, 1 << 20], ids=["caller", "pool"])
def test_subnormal_operands_and_results_are_zero_in_a_step(n):
    if n > 7 and threads.pool() is None:
        pytest.skip("one thread (DRUG_THREADS=1 or one usable CPU): no workers to check")
    assert np.all(np.float32(2.0) * np.full(n, SUBNORMAL, np.float32) != 0)  # NumPy keeps them
    out = _doubled(n)
    assert out.shape == (n,) and not np.any(out)


def test_the_callers_mode_is_restored_after_a_step():
    _doubled(7)
    assert np.float32(1e-30) * np.float32(1e-10) != 0  # a subnormal product, outside any step


def test_adam_moments_of_a_dead_unit_reach_zero(tmp_path):
    """The case that made this matter: a weight whose gradient has become zero keeps a first
    moment that decays by beta1 every step, subnormal after ~800 steps (an update several times
    slower on many x86 cores); flushed, it reaches zero instead."""
    g = dg.Graph(seed=0)
    x = g.input("x", (None, 4))
    w = g.parameter("w", (4, 1), init=np.full((4, 1), 0.5, np.float32))
    fn = g.compile(loss=dg.sum(dg.relu(x @ w)), optimizer=dg.Adam(0.1), backend="llvm")
    ones = np.ones((2, 4), np.float32)
    fn(x=ones)  # the one step with a gradient: 2 for every weight
    steps = 900
    for _ in range(steps):
        fn(x=-ones)  # x @ w < 0 from now on: the unit is dead, w's gradient 0
    fn.save(tmp_path / "dead.npz")
    momentum = np.load(tmp_path / "dead.npz")["state/w/momentum"]
    unflushed = np.float32(0.2)
    for _ in range(steps):
        unflushed = np.float32(unflushed * np.float32(0.9))
    assert 0 < unflushed < np.finfo(np.float32).tiny  # what IEEE arithmetic would have left
    assert not np.any(momentum)

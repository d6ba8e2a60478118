"""Thread safety: calls of the compiled functions of one graph take turns (runtime/locks.py). Two
threads training one step give exactly the sequential result; a predictor or a checkpoint save
running during training never sees half-updated parameters. Native code releases the GIL, so
without the lock these races are real."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import drug as dg
from drug.backends.llvm import bounds
from drug.backends.llvm.threads import pool, stats

BACKENDS = ["numpy", "llvm"]


def run_threads(target, count: int = 2) -> None:
    errors = []

    def guarded(i):
        try:
            target(i)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors


def classifier(backend):
    g = dg.Graph(seed=0, dtype="float64")
    x, y = g.input("x", (None, 16)), g.input("y", (None,), dtype="int32")
    h = dg.tanh(x @ g.parameter("w1", (16, 32)) + g.parameter("b1", (32,), init="normal"))
    loss = dg.softmax_cross_entropy(h @ g.parameter("w2", (32, 4)), y)
    return g, g.compile(loss=loss, optimizer=dg.Adam(0.01), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_threads_training_one_step_equal_the_sequential_run(backend):
    """Every step sees the same batch, so any order of 2 x 150 serialized steps ends in the same
    state as 300 sequential ones, bit for bit; a lost or torn update would not."""
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((32, 16)), "y": rng.integers(0, 4, 32).astype(np.int32)}
    g_seq, sequential = classifier(backend)
    for _ in range(300):
        sequential(**batch)
    g, step = classifier(backend)
    run_threads(lambda i: [step(**batch) for _ in range(150)])
    assert step.step_count == 300
    for name in g.params:
        np.testing.assert_array_equal(g.params[name], g_seq.params[name], err_msg=name)
    for key in step.state:
        np.testing.assert_array_equal(step.state[key], sequential.state[key], err_msg=key)


def flip_flop(backend, n: int = 1 << 18):
    """loss = sum(w * x) with SGD(lr=1) and x = +1 or -1 everywhere: each step moves every element
    of w (n of them, enough for the native loop to take a while and use threads) between 0 and -1."""
    g = dg.Graph(seed=0, dtype="float64")
    x = g.input("x", ())
    w = g.parameter("w", (n,), init="zeros")
    train = g.compile(loss=dg.sum(w * x), optimizer=dg.SGD(1.0), backend=backend)
    predict = g.compile(outputs=w * 1.0, backend=backend)
    return g, train, predict


@pytest.mark.parametrize("backend", BACKENDS)
def test_predictor_never_sees_a_half_updated_parameter(backend):
    g, train, predict = flip_flop(backend)
    torn = []

    def work(i):
        for k in range(60):
            if i == 0:
                train(x=np.array(1.0 if k % 2 == 0 else -1.0))
            else:
                out = predict()
                if out.min() != out.max():
                    torn.append((out.min(), out.max()))

    run_threads(work)
    assert not torn, f"{len(torn)} predictions mixed two parameter versions"


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_saved_during_training_is_consistent(backend, tmp_path):
    g, train, _ = flip_flop(backend, n=1 << 16)
    path = tmp_path / "c.npz"

    def work(i):
        for _ in range(40):
            if i == 0:
                train(x=np.array(1.0 if train.step_count % 2 == 0 else -1.0))
            else:
                train.save(path)
                g2, loaded, _ = flip_flop(backend, n=1 << 16)
                loaded.load(path)
                w = g2.params["w"]
                expected = -1.0 if loaded.step_count % 2 else 0.0  # odd steps end at -1
                assert w.min() == w.max() == expected, (loaded.step_count, w.min(), w.max())

    run_threads(work)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m,n,k", [(300, 40, 50), (40, 300, 50), (133, 131, 17), (784, 100, 129), (520, 33, 300)])
def test_gemms_shared_out_over_threads_match_numpy(dtype, trans_a, trans_b, m, n, k):
    """Large GEMMs are split by rows or by columns (whichever C has more) into tasks
    on the thread pool, each calling BLAS on its block; odd sizes leave the last task a short block.
    Split into more than two blocks of rows, a float32 GEMM packs B once for all of them (the
    last two shapes: a partial last panel)."""
    g = dg.Graph(dtype=dtype)
    a = g.input("a", (k, m) if trans_a else (m, k))
    b = g.input("b", (n, k) if trans_b else (k, n))
    fn = g.compile(outputs=(dg.transpose(a) if trans_a else a) @ (dg.transpose(b) if trans_b else b), backend="llvm")
    if not bounds.enabled():  # checked builds call BLAS directly, where the checks can see the operands
        assert "drug_gemm_task" in fn.ir()
    rng = np.random.default_rng(0)
    a_val, b_val = (rng.standard_normal(n.shape).astype(dtype) for n in (a, b))
    want = (a_val.T if trans_a else a_val) @ (b_val.T if trans_b else b_val)
    np.testing.assert_allclose(fn(a=a_val, b=b_val), want, rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-4)


@pytest.mark.skipif(pool() is None, reason="one thread: no pool")
@pytest.mark.parametrize("trans_b", [False, True])
def test_a_single_row_times_a_large_matrix_is_shared_out(trans_b):
    """A product of one row streams all of B (memory bound): B's 512 KB is worth two threads,
    although its 2^17 multiply-adds are below the split of a compute-bound GEMM."""
    g = dg.Graph()
    x, w = g.input("x", (None, 512)), g.input("w", (256, 512) if trans_b else (512, 256))
    fn = g.compile(outputs=x @ (dg.transpose(w) if trans_b else w), backend="llvm")
    rng = np.random.default_rng(1)
    x_val, w_val = rng.standard_normal((1, 512)).astype(np.float32), rng.standard_normal(w.shape).astype(np.float32)
    fn(x=x_val, w=w_val)
    before = stats()
    got = fn(x=x_val, w=w_val)
    assert stats()["jobs"] == before["jobs"] + 1
    np.testing.assert_allclose(got, x_val @ (w_val.T if trans_b else w_val), rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(pool() is None or bounds.enabled(), reason="one thread, or checked builds: BLAS called directly")
@pytest.mark.parametrize("trans_b", [False, True])
def test_blocks_of_rows_read_one_packing_of_b(trans_b):
    """A weight gradient's shape (many rows, a batch deep) with a bias and a relu finishing each
    block of rows: B is packed once, before the tasks, and every block reads those panels."""
    g = dg.Graph()
    a, w, bias = g.input("a", (600, 96)), g.input("w", (70, 96) if trans_b else (96, 70)), g.input("bias", (70,))
    fn = g.compile(outputs=dg.relu(a @ (dg.transpose(w) if trans_b else w) + bias), backend="llvm")
    assert "packed_once" in fn.ir()
    rng = np.random.default_rng(2)
    values = {n.name: rng.standard_normal(n.shape).astype(np.float32) for n in (a, w, bias)}
    want = np.maximum(values["a"] @ (values["w"].T if trans_b else values["w"]) + values["bias"], 0)
    np.testing.assert_allclose(fn(**values), want, rtol=1e-5, atol=1e-4)

"""DRUG_BOUNDS_CHECK=1 (compiler/bounds.py): kernels that read or write outside their buffers are
stopped with an error naming the kernel, the node and the buffer; correct graphs run unchanged.

The faulty kernels are test ops whose registered native kernel gets a size wrong on purpose, the way a bug in
an op's kernel would."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import OPS_WITH_EXAMPLE, build_from_example
from llvmlite import ir

import drug as dg
from drug.backends.llvm import bounds
from drug.backends.llvm.codegen import ModuleBuilder
from drug.backends.llvm.irutil import I64, PTR, for_range, i64
from drug.backends.llvm.lowering import kernel


@pytest.fixture
def checked(monkeypatch, tmp_path):
    monkeypatch.setenv(bounds.ENV, "1")
    monkeypatch.setenv("DRUG_CACHE_DIR", str(tmp_path))


class _Faulty(dg.Op):
    arity = 1

    def infer(self, x):
        return x

    def ref(self, x):
        return x * 2.0


class StoresOnePastTheEnd(_Faulty):
    name = "test_bounds_store"


class LoadsBeforeTheStart(_Faulty):
    name = "test_bounds_load"


class ZeroesTooMuch(_Faulty):
    name = "test_bounds_memset"


class SquareGemmOneRowTooMany(dg.Op):
    """x @ x.T for x (n, n) as a GEMM told that x has n + 1 rows."""

    name = "test_bounds_gemm"
    arity = 1

    def infer(self, x):
        return x

    def ref(self, x):
        return x @ x.T


@kernel(StoresOnePastTheEnd)
def _stores_one_past_the_end(k, node):
    (x,) = node.inputs
    with for_range(k.b, k.count(node), "i") as i:  # out[i + 1] = 2 x[i]: the last store overruns
        k.store(node, k.b.add(i, i64(1)), k.b.fmul(k.load(x, i), k.scalar(node).const(2.0)))


@kernel(LoadsBeforeTheStart)
def _loads_before_the_start(k, node):
    (x,) = node.inputs
    with for_range(k.b, k.count(node), "i") as i:  # reads x[i - 1]: the first load underruns
        k.store(node, i, k.load(x, k.b.sub(i, i64(1))))


@kernel(ZeroesTooMuch)
def _zeroes_too_much(k, node):
    b = k.b  # memset(out, 0, (count + 1) * itemsize)
    memset = b.module.declare_intrinsic("llvm.memset", [PTR, I64])
    nbytes = b.mul(b.add(k.count(node), i64(1)), i64(node.dtype.itemsize))
    b.call(memset, [k.ptr(node), ir.Constant(ir.IntType(8), 0), nbytes, ir.Constant(ir.IntType(1), 0)])


@kernel(SquareGemmOneRowTooMany)
def _square_gemm_one_row_too_many(k, node):
    (x,) = node.inputs
    n = i64(x.shape[0])
    k.gemm(node.dtype, False, True, k.b.add(n, i64(1)), n, n, k.ptr(x), n, k.ptr(x), n, k.ptr(node), n)


def _run(op, shape=(None, 3), batch=2):
    g = dg.Graph(dtype="float64")
    x = g.input("x", shape)
    fn = g.compile(outputs=op(x) + 1.0, backend="llvm")
    xv = np.arange(float(np.prod([batch if d is None else d for d in shape]))).reshape(
        [batch if d is None else d for d in shape]
    )
    return fn, xv


@pytest.mark.parametrize(
    "op,access",
    [(StoresOnePastTheEnd(), "store"), (LoadsBeforeTheStart(), "load"), (ZeroesTooMuch(), "memset")],
)
def test_out_of_bounds_access_is_stopped_and_named(checked, op, access):
    fn, xv = _run(op)
    kept = xv.copy()
    with pytest.raises(dg.GraphError) as info:
        fn(x=xv)
    message = str(info.value)
    for part in (bounds.ENV, "kernel 0", f"'{op.name}'", f"{access} through argument", "batch size 2"):
        assert part in message, f"{part!r} missing from: {message}"
    np.testing.assert_array_equal(xv, kept)
    with pytest.raises(dg.GraphError, match=access):  # the fault is reported per call, not left behind
        fn(x=xv)


def test_gemm_overrun_is_stopped(checked):
    fn, xv = _run(SquareGemmOneRowTooMany(), shape=(3, 3))
    with pytest.raises(dg.GraphError, match=r"gemm A through argument 0 .*buffer \d+, input \(3, 3\) float64"):
        fn(x=xv)


def test_without_the_mode_kernels_are_not_instrumented(monkeypatch, tmp_path):
    monkeypatch.setenv("DRUG_CACHE_DIR", str(tmp_path))
    g = dg.Graph()
    x = g.input("x", (None, 4))
    out = dg.softmax(x) * 2.0
    monkeypatch.delenv(bounds.ENV, raising=False)
    plain = g.compile(outputs=out, backend="llvm")
    monkeypatch.setenv(bounds.ENV, "1")
    checked = g.compile(outputs=out, backend="llvm")
    assert bounds.FAULT not in plain.ir() and bounds.FAULT in checked.ir()
    assert not checked._executor.compiled.from_cache, "the mode is part of the compile-cache key"
    xv = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(checked(x=xv), plain(x=xv), rtol=1e-6)


REGISTRY = dg.ops.REGISTRY


@pytest.mark.parametrize("name", OPS_WITH_EXAMPLE)
def test_every_op_runs_checked_and_every_access_is_checked(checked, name):
    """Forward and gradient of each registry op's example pass the checks and agree with the
    reference (float64: see RTOL in test_native_ops.py), and the pass traced every load, store
    and call to a buffer argument."""
    op, example = REGISTRY[name].example(np.random.default_rng(7), [3, 2, 2])
    g, nodes, out, feeds = build_from_example(op, example)
    wrt = [n for n, d in zip(nodes, example.differentiable) if d]
    targets = [out] + (list(dg.grad(dg.sum(out * out), wrt)) if wrt else [])
    native = g.compile(outputs=targets, backend="llvm")
    builder = ModuleBuilder(native.program.schedule, 64, parallel=True, bounds_check=True)
    builder.build()
    assert bounds.sites(builder.module), "no access was instrumented"
    assert bounds.unchecked(builder.module) == []
    got, want = native(**feeds), g.compile(outputs=targets, backend="numpy")(**feeds)
    got, want = (v if isinstance(v, tuple) else (v,) for v in (got, want))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * max(1.0, float(np.max(np.abs(b), initial=0))))

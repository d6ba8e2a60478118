"""drug.backends.llvm.mathlib: accuracy against NumPy, special values, and proof that a loop calling it vectorizes.

Every (function, dtype) pair becomes one kernel `void f(T* noalias out, T* noalias in, i64 n)` in a
single module (so intrinsic declarations are shared), optimized at O3 for the host CPU and JIT-compiled;
pow's kernels take a second input. The exhaustive check of erf, sin and cos over every float32 runs
with DRUG_EXHAUSTIVE=1 (a few minutes), or as `python tests/backends/llvm/test_mathlib.py`, which
prints the maximum ulp error of each.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import sys

import llvmlite.binding as llvm
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from llvmlite import ir

from drug.backends.llvm import mathlib

DTYPES = ("float32", "float64")
IR_TYPES = {"float32": ir.FloatType(), "float64": ir.DoubleType()}
NAMES = sorted(mathlib.SUPPORTED - {"pow"})  # the one-argument functions


# ---------------------------------------------------------------- building and running kernels


def _add_kernel(module: ir.Module, func: str, dtype: str) -> None:
    ftype, i64 = IR_TYPES[dtype], ir.IntType(64)
    arity = 2 if func == "pow" else 1
    fn = ir.Function(
        module, ir.FunctionType(ir.VoidType(), [ir.PointerType()] * (1 + arity) + [i64]), f"{func}_{dtype}"
    )
    out, *inputs, n = fn.args
    for pointer in (out, *inputs):
        pointer.add_attribute("noalias")
    entry, body, done = fn.append_basic_block("entry"), fn.append_basic_block("body"), fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    b.cbranch(b.icmp_signed(">", n, ir.Constant(i64, 0)), body, done)
    b.position_at_end(body)
    i = b.phi(i64, name="i")
    i.add_incoming(ir.Constant(i64, 0), entry)
    xs = [b.load(b.gep(inp, [i], source_etype=ftype), typ=ftype, name="x") for inp in inputs]
    b.store(mathlib.emit(b, func, *xs), b.gep(out, [i], source_etype=ftype))
    i_next = b.add(i, ir.Constant(i64, 1), name="i.next", flags=("nuw", "nsw"))
    i.add_incoming(i_next, body)
    b.cbranch(b.icmp_signed("<", i_next, n), body, done)
    b.position_at_end(done)
    b.ret_void()


class Kernels:
    """All kernels of one JIT-compiled module; keeps the engine alive as long as the callables."""

    def __init__(self) -> None:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        module = ir.Module(name="mathlib_test")
        module.triple = llvm.get_process_triple()
        for func in sorted(mathlib.SUPPORTED):
            for dtype in DTYPES:
                _add_kernel(module, func, dtype)
        self.ir = str(module)
        module_ref = llvm.parse_assembly(self.ir)
        module_ref.verify()
        tm = self._target_machine()
        pto = llvm.create_pipeline_tuning_options(speed_level=3)
        pto.loop_vectorization = True
        pto.slp_vectorization = True
        pb = llvm.create_pass_builder(tm, pto)
        pb.getModulePassManager().run(module_ref, pb)
        self.asm = tm.emit_assembly(module_ref)
        self.engine = llvm.create_mcjit_compiler(module_ref, self._target_machine())
        self.engine.finalize_object()
        unary = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
        binary = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
        self.fns = {
            (func, dtype): (binary if func == "pow" else unary)(self.engine.get_function_address(f"{func}_{dtype}"))
            for func in sorted(mathlib.SUPPORTED)
            for dtype in DTYPES
        }

    @staticmethod
    def _target_machine():
        target = llvm.Target.from_default_triple()
        features = llvm.get_host_cpu_features().flatten()
        return target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=features, opt=3)

    def __call__(self, func: str, x: np.ndarray, *more: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x)
        more = [np.ascontiguousarray(np.broadcast_to(m, x.shape), dtype=x.dtype) for m in more]
        out = np.empty_like(x)
        self.fns[func, x.dtype.name](out.ctypes.data, x.ctypes.data, *(m.ctypes.data for m in more), x.size)
        return out

    def function_asm(self, symbol: str) -> str:
        start = self.asm.index(f"\n{symbol}:")
        return self.asm[start : self.asm.index(".Lfunc_end", start)]


@pytest.fixture(scope="module")
def kernels() -> Kernels:
    return Kernels()


# ---------------------------------------------------------------- references and error measures


_ERF = np.frompyfunc(math.erf, 1, 1)


def reference(func: str, x: np.ndarray) -> np.ndarray:
    """The exact-ish value in float64 (not yet rounded to x's dtype)."""
    x = x.astype(np.float64)
    with np.errstate(all="ignore"):
        if func == "erf":
            return _ERF(x).astype(np.float64)
        if func in ("exp", "expm1", "log", "tanh", "sin", "cos"):
            return getattr(np, func)(x)
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def ulp_error(out: np.ndarray, ref: np.ndarray) -> float:
    """Max |out - ref| in units of the spacing of out's dtype at ref (finite refs only)."""
    rounded = ref.astype(out.dtype)
    ok = np.isfinite(rounded) & (rounded != 0)
    spacing = np.spacing(np.abs(rounded[ok])).astype(np.float64)
    return float(np.max(np.abs(out[ok].astype(np.float64) - ref[ok]) / spacing, initial=0.0))


def rel_error(out: np.ndarray, ref: np.ndarray, floor: float = 1e-30) -> float:
    ok = np.isfinite(ref) & (np.abs(ref) > floor)
    return float(np.max(np.abs(out[ok].astype(np.float64) - ref[ok]) / np.abs(ref[ok]), initial=0.0))


def abs_error(out: np.ndarray, ref: np.ndarray) -> float:
    ok = np.isfinite(ref)
    return float(np.max(np.abs(out[ok].astype(np.float64) - ref[ok]), initial=0.0))


def check_accuracy(kernels: Kernels, func: str, x: np.ndarray) -> dict[str, float]:
    """Assert the tolerances for `func` on `x`; returns the measured errors."""
    out, ref = kernels(func, x), reference(func, x)
    assert np.array_equal(np.isnan(out), np.isnan(ref.astype(x.dtype))), f"{func}: NaN pattern differs"
    errors = {"rel": rel_error(out, ref), "abs": abs_error(out, ref), "ulp": ulp_error(out, ref)}
    if x.dtype == np.float32:
        if func in ("exp", "log"):
            assert errors["ulp"] <= 4, (func, errors)
        elif func in ULP_FLOAT32:
            assert errors["ulp"] <= ULP_FLOAT32[func], (func, errors)
        else:
            assert errors["abs"] <= 2e-7 and errors["rel"] <= 1e-5, (func, errors)
    elif func in ("exp", "log"):
        assert errors["rel"] <= 1e-14, (func, errors)
    elif func in ULP_FLOAT32:  # against NumPy's float64 (itself within an ulp)
        assert errors["ulp"] <= 4, (func, errors)
    else:
        assert errors["abs"] <= 1e-15, (func, errors)
    return errors


# float32 functions computed in double precision (sin, cos) are correctly rounded but for inputs a
# hair from a rounding boundary; erf works in float32 and rounds its last step once (measured over
# every float32: see `exhaustive` below); expm1 works in float32
ULP_FLOAT32 = {"erf": 0.994, "sin": 0.501, "cos": 0.501, "expm1": 4}  # expm1: like exp


# ---------------------------------------------------------------- accuracy


def domain(func: str, dtype: str, rng: np.random.Generator, n: int = 400_000) -> np.ndarray:
    """Dense and random points over the range each tolerance applies to."""
    if func == "exp":
        lo, hi = (-87.0, 88.0) if dtype == "float32" else (-708.0, 709.0)
        x = np.concatenate([np.linspace(lo, hi, n), rng.uniform(-1, 1, n), rng.uniform(lo, hi, n)])
    elif func == "log":
        min_exp, max_exp = (-126, 127) if dtype == "float32" else (-1022, 1023)
        mant = rng.uniform(1.0, 2.0, n)
        x = np.concatenate([np.ldexp(mant, rng.integers(min_exp, max_exp + 1, n)), rng.uniform(0.5, 2.0, n)])
    elif func in ("sin", "cos"):  # small, moderate and huge arguments (the reduction works for all)
        huge = np.ldexp(rng.uniform(1.0, 2.0, n), rng.integers(0, 127 if dtype == "float32" else 190, n))
        x = np.concatenate([np.linspace(-30, 30, n), rng.uniform(-1e5, 1e5, n), huge * rng.choice([-1, 1], n)])
    elif func == "expm1":
        x = np.concatenate([np.linspace(-30, 80, n), rng.uniform(-1e-3, 1e-3, n), rng.uniform(-1, 1, n)])
    else:
        x = np.concatenate([np.linspace(-30, 30, n), rng.standard_normal(n) * 3, rng.uniform(-1e-3, 1e-3, n)])
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("func", NAMES)
def test_accuracy_dense(kernels, func, dtype):
    check_accuracy(kernels, func, domain(func, dtype, np.random.default_rng(0)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("func", NAMES)
def test_accuracy_near_reduction_boundaries(kernels, func, dtype):
    """Points around k*ln2/2 (exp's reduction switches n) and sqrt(2)*2^k (log's switches k)."""
    k = np.arange(-60, 61, dtype=np.float64)
    centers = k * np.log(2) / 2 if func != "log" else np.sqrt(2) * 2.0**k
    eps = np.linspace(-1e-5, 1e-5, 41)
    x = (centers[:, None] * (1 + eps[None, :]) + eps[None, :] * (func != "log")).ravel()
    check_accuracy(kernels, func, x.astype(dtype))


def _hypothesis_arrays(dtype: str, lo: float, hi: float, **kw):
    elements = st.floats(lo, hi, width=32 if dtype == "float32" else 64, allow_nan=False, **kw)
    return hnp.arrays(dtype, st.integers(1, 64), elements=elements)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_accuracy_hypothesis(kernels, dtype, data):
    exp_lo, exp_hi = (-87.0, 88.0) if dtype == "float32" else (-708.0, 709.0)
    big, tiny = float(np.finfo(dtype).max), float(np.finfo(dtype).smallest_normal)
    check_accuracy(kernels, "exp", data.draw(_hypothesis_arrays(dtype, exp_lo, exp_hi)))
    check_accuracy(kernels, "log", data.draw(_hypothesis_arrays(dtype, tiny, big)))
    check_accuracy(kernels, "tanh", data.draw(_hypothesis_arrays(dtype, -big, big)))
    check_accuracy(kernels, "sigmoid", data.draw(_hypothesis_arrays(dtype, -1e4, 1e4)))
    check_accuracy(kernels, "erf", data.draw(_hypothesis_arrays(dtype, -big, big)))
    trig = big if dtype == "float32" else 1e50  # float64 reduces exactly up to 2^200
    check_accuracy(kernels, "sin", data.draw(_hypothesis_arrays(dtype, -trig, trig)))
    check_accuracy(kernels, "cos", data.draw(_hypothesis_arrays(dtype, -trig, trig)))
    check_accuracy(kernels, "expm1", data.draw(_hypothesis_arrays(dtype, -100.0, exp_hi - 1)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("func", ["cos", "sin"])
def test_trigonometry_near_multiples_of_half_pi(kernels, func, dtype):
    """Where the result nearly cancels (the zeros of cos and sin) the reduction must keep the
    digits of r = x - n*pi/2: compared relatively, with n up to 1e4."""
    centers = np.arange(-10_000, 10_001, 37) * (np.pi / 2)
    x = (centers[:, None] + np.linspace(-1e-3, 1e-3, 11)[None, :]).ravel().astype(dtype)
    out, ref = kernels(func, x), reference(func, x)
    assert rel_error(out, ref) <= (2e-6 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_subnormal_ranges(kernels, dtype):
    """exp underflows gradually (no flush to zero); log accepts subnormal inputs."""
    info = np.finfo(dtype)
    lo = np.log(float(info.smallest_subnormal))
    x = np.linspace(lo + 0.5, np.log(float(info.smallest_normal)), 10_001).astype(dtype)
    out, ref = kernels("exp", x), reference("exp", x)
    assert np.all(out > 0)
    assert np.max(np.abs(out - ref.astype(dtype)) / float(info.smallest_subnormal)) <= 1
    sub = (np.arange(1, 10_001) * info.smallest_subnormal * 97).astype(dtype)
    assert rel_error(kernels("log", sub), reference("log", sub)) <= (1e-6 if dtype == "float32" else 1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiny_arguments_are_relatively_accurate(kernels, dtype):
    x = np.array([1e-10, -1e-10, 1e-20, -3e-30, 1e-5, -2e-4], dtype=dtype)
    assert rel_error(kernels("tanh", x), reference("tanh", x)) <= 4 * np.finfo(dtype).eps
    np.testing.assert_array_equal(np.signbit(kernels("tanh", np.array([0.0, -0.0], dtype))), [False, True])
    assert rel_error(kernels("exp", x), reference("exp", x)) <= np.finfo(dtype).eps
    near_one = (1 + x).astype(dtype)
    assert rel_error(kernels("log", near_one), reference("log", near_one), floor=0) <= 4 * np.finfo(dtype).eps


# ---------------------------------------------------------------- special values


SPECIAL = {  # (input, expected) pairs; -0.0 and 0.0 both appear, so not a dict
    "exp": [(np.inf, np.inf), (-np.inf, 0.0), (1e4, np.inf), (-1e4, 0.0), (0.0, 1.0), (np.nan, np.nan)],
    "log": [(0.0, -np.inf), (-0.0, -np.inf), (-1.0, np.nan), (-np.inf, np.nan), (np.inf, np.inf), (1.0, 0.0)]
    + [(np.nan, np.nan)],
    "tanh": [(np.inf, 1.0), (-np.inf, -1.0), (1e4, 1.0), (-1e4, -1.0), (0.0, 0.0), (-0.0, -0.0), (np.nan, np.nan)],
    "sigmoid": [(-np.inf, 0.0), (np.inf, 1.0), (0.0, 0.5), (-0.0, 0.5), (1e4, 1.0), (-1e4, 0.0), (np.nan, np.nan)],
    "erf": [(np.inf, 1.0), (-np.inf, -1.0), (10.0, 1.0), (-10.0, -1.0), (0.0, 0.0), (-0.0, -0.0), (np.nan, np.nan)],
    "sin": [(np.inf, np.nan), (-np.inf, np.nan), (0.0, 0.0), (-0.0, -0.0), (np.nan, np.nan)],
    "cos": [(np.inf, np.nan), (-np.inf, np.nan), (0.0, 1.0), (-0.0, 1.0), (np.nan, np.nan)],
    "expm1": [
        (np.inf, np.inf),
        (-np.inf, -1.0),
        (1e4, np.inf),
        (-1e4, -1.0),
        (0.0, 0.0),
        (-0.0, -0.0),
        (np.nan, np.nan),
    ],
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("func", NAMES)
def test_special_values(kernels, func, dtype):
    x, expected = np.array(SPECIAL[func], dtype=dtype).T
    out = kernels(func, x)
    np.testing.assert_array_equal(out, expected)
    numbers = ~np.isnan(expected)
    np.testing.assert_array_equal(np.signbit(out[numbers]), np.signbit(expected[numbers]))  # -0.0 stays -0.0
    with np.errstate(all="ignore"):
        numpy_says = reference(func, x).astype(dtype)
    np.testing.assert_array_equal(expected, numpy_says)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_inputs_stay_finite_and_bounded(kernels, dtype):
    x = np.linspace(-1e4, 1e4, 20_001).astype(dtype)
    for func in ("tanh", "sigmoid"):
        out = kernels(func, x)
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out, reference(func, x).astype(dtype), rtol=1e-6, atol=1e-30)
    assert np.all(np.diff(kernels("sigmoid", x)) >= 0)


# ---------------------------------------------------------------- generated code


@pytest.mark.parametrize("func", sorted(mathlib.SUPPORTED))
def test_float32_loop_vectorizes(kernels, func):
    if not llvm.get_host_cpu_features().flatten().count("+avx2"):
        pytest.skip("host CPU has no AVX2")
    asm = kernels.function_asm(f"{func}_float32")
    # float32 erf, sin, cos and pow compute in double: packed double fmas
    assert re.search(r"\bvfn?m(add|sub)\w*p[sd]\s+.*%[yz]mm", asm), f"{func}: no packed fma on ymm/zmm"
    assert not re.search(r"\bcall", asm), f"{func}: the loop still calls a function"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("func", sorted(mathlib.SUPPORTED))
def test_emits_straight_line_code_with_intrinsics_only(func, dtype):
    module = ir.Module()
    ftype = IR_TYPES[dtype]
    arity = 2 if func == "pow" else 1
    fn = ir.Function(module, ir.FunctionType(ftype, [ftype] * arity), "g")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    result = mathlib.emit(b, func, *fn.args)
    assert result.type == ftype
    b.ret(result)
    again = ir.IRBuilder(fn.append_basic_block("again"))  # a second call into the same module
    again.ret(mathlib.emit(again, func, *fn.args))
    assert len(fn.blocks[0].instructions) > 5
    assert "br " not in str(fn.blocks[0])
    callees = {f.name for f in module.functions if f is not fn}
    assert all(name.startswith("llvm.") for name in callees), callees
    text = str(module)
    assert sum(line.startswith("declare") for line in text.splitlines()) == len(callees)
    assert not re.search(r"\b(fast|nnan|ninf|afn|reassoc)\b", text)
    llvm.parse_assembly(text).verify()


def test_rejects_unknown_names_and_types():
    b = ir.IRBuilder(
        ir.Function(ir.Module(), ir.FunctionType(ir.VoidType(), [ir.IntType(32)]), "h").append_basic_block()
    )
    with pytest.raises(ValueError, match="unsupported"):
        mathlib.emit(b, "gamma", ir.Constant(ir.FloatType(), 1.0))
    with pytest.raises(TypeError, match="float or double"):
        mathlib.emit(b, "exp", b.function.args[0])


# ---------------------------------------------------------------- pow


def test_pow_accuracy_and_special_values(kernels):
    """np.power's meaning: every pair of special values, random positive bases, negative bases
    with integer exponents. float32 is computed in double (within half an ulp); float64's error
    grows with |y log x| (y log x up to ~25 here: a few dozen ulps)."""
    rng = np.random.default_rng(0)
    special = [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, np.inf, -np.inf, np.nan, 3.0, -3.0, 1e-40]
    x, y = (a.ravel() for a in np.meshgrid(special, special))
    x = np.concatenate([x, rng.uniform(0, 10, 50_000), -rng.integers(0, 6, 2000) * 1.5])
    y = np.concatenate([y, rng.uniform(-10, 10, 50_000), rng.integers(-6, 6, 2000) * 1.0])
    for dtype, max_ulp in (("float32", 0.5001), ("float64", 128)):
        xs, ys = x.astype(dtype), y.astype(dtype)
        out = kernels("pow", xs, ys)
        with np.errstate(all="ignore"):
            ref = np.power(xs.astype(np.float64), ys.astype(np.float64))
        with np.errstate(over="ignore"):
            rounded = ref.astype(dtype)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(rounded))
        exact = ~np.isfinite(rounded) | (rounded == 0)
        np.testing.assert_array_equal(out[exact & ~np.isnan(rounded)], rounded[exact & ~np.isnan(rounded)])
        np.testing.assert_array_equal(np.signbit(out[rounded == 0]), np.signbit(rounded[rounded == 0]))
        assert ulp_error(out, ref) <= max_ulp, dtype


# ---------------------------------------------------------------- every float32


def every_float32(chunk: int = 1 << 24):
    """All 2^32 float32 bit patterns, `chunk` at a time."""
    for start in range(0, 1 << 32, chunk):
        yield np.arange(start, start + chunk, dtype=np.uint64).astype(np.uint32).view(np.float32)


def exhaustive(kernels: Kernels, func: str) -> float:
    """The maximum ulp error of float32 `func` over every float32 input (finite results against
    the float64 reference; the NaN pattern and signed zeros must match exactly)."""
    worst = 0.0
    scipy_erf = _scipy_erf()
    for x in every_float32():
        out = kernels(func, x)
        with np.errstate(all="ignore"):
            ref = scipy_erf(x.astype(np.float64)) if func == "erf" and scipy_erf else reference(func, x)
        rounded = ref.astype(np.float32)
        assert np.array_equal(np.isnan(out), np.isnan(rounded)), func
        zero = rounded == 0
        assert np.array_equal(out[zero], rounded[zero]) and np.array_equal(np.signbit(out[zero]), np.signbit(x[zero]))
        worst = max(worst, ulp_error(out, ref))
    return worst


def _scipy_erf():
    """scipy.special.erf when SciPy is installed (math.erf one value at a time takes an hour)."""
    try:
        from scipy.special import erf
    except ImportError:
        return None
    return erf


@pytest.mark.skipif(os.environ.get("DRUG_EXHAUSTIVE") != "1", reason="minutes per function: set DRUG_EXHAUSTIVE=1")
@pytest.mark.parametrize("func", ["erf", "sin", "cos"])
def test_every_float32(kernels, func):
    assert exhaustive(kernels, func) <= ULP_FLOAT32[func]


if __name__ == "__main__":  # the figures the docs quote
    every = Kernels()
    for name in sys.argv[1:] or ["erf", "sin", "cos"]:
        print(f"{name}: max {exhaustive(every, name):.6f} ulp over every float32", flush=True)

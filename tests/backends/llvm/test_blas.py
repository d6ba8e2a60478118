"""numpy's own BLAS GEMM: found in the library numpy loaded, no second BLAS, and correct
against numpy matmul for drawn shapes, transposes and beta accumulation."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest
import threadpoolctl
from hypothesis import given, settings
from hypothesis import strategies as st

from drug.backends.llvm.blas import (
    Gemm,
    _openblas_config,
    _pick_numpy_blas,
    blas_info,
    build_options,
    call_gemm,
    find_gemm,
)

DTYPES = ("float32", "float64")
DIM = st.one_of(st.sampled_from([1, 2, 3, 7, 16, 33, 64, 129]), st.integers(1, 200))
SEED = st.integers(0, 2**32 - 1)


def _reference(trans_a, trans_b, a, b, out, alpha, beta):
    """alpha * op(a) @ op(b) + beta * out, in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    a64, b64 = (a64.T if trans_a else a64), (b64.T if trans_b else b64)
    return alpha * (a64 @ b64) + beta * out.astype(np.float64)


def _check(dtype, m, n, k, trans_a, trans_b, alpha, beta, seed):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.uniform(-1, 1, (n, k) if trans_b else (k, n)).astype(dtype)
    out = rng.uniform(-1, 1, (m, n)).astype(dtype)
    expected = _reference(trans_a, trans_b, a, b, out, alpha, beta)
    result = call_gemm(find_gemm(dtype), trans_a, trans_b, a, b, out, alpha=alpha, beta=beta)
    assert result is out
    # |sum of k products| <= k; a rounding error of a few ulps per term bounds the difference.
    tol = 4 * np.finfo(dtype).eps * (k + 2)
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
    if alpha == 1.0 and beta == 0.0:  # numpy's own matmul: same library, same answer up to ulps
        np_result = (a.T if trans_a else a) @ (b.T if trans_b else b)
        np.testing.assert_allclose(out, np_result, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(m=DIM, n=DIM, k=DIM, trans_a=st.booleans(), trans_b=st.booleans(), seed=SEED)
def test_gemm_matches_matmul(dtype, m, n, k, trans_a, trans_b, seed):
    _check(dtype, m, n, k, trans_a, trans_b, 1.0, 0.0, seed)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40, deadline=None)
@given(
    m=DIM,
    n=DIM,
    k=DIM,
    trans_a=st.booleans(),
    trans_b=st.booleans(),
    alpha=st.sampled_from([1.0, -0.5, 2.0]),
    seed=SEED,
)
def test_gemm_accumulates_with_beta_one(dtype, m, n, k, trans_a, trans_b, alpha, seed):
    _check(dtype, m, n, k, trans_a, trans_b, alpha, 1.0, seed)


SKINNY = [(1, 1, 1), (1, 512, 1), (512, 1, 1), (1, 1, 512), (1, 700, 300), (700, 1, 300), (300, 2, 700), (2, 3, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", SKINNY)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_gemm_skinny_shapes(dtype, m, n, k, trans_a, trans_b, beta):
    _check(dtype, m, n, k, trans_a, trans_b, 1.0, beta, seed=m * 1000 + n * 10 + k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_beta_zero_ignores_old_out(dtype):
    a = np.ones((3, 4), dtype)
    b = np.ones((4, 5), dtype)
    out = np.full((3, 5), np.nan, dtype)
    call_gemm(find_gemm(dtype), False, False, a, b, out)
    np.testing.assert_array_equal(out, np.full((3, 5), 4, dtype))


def test_call_gemm_rejects_bad_operands():
    g = find_gemm("float32")
    a, b, out = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32), np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="float64"):
        call_gemm(g, False, False, a.astype(np.float64), b, out)
    with pytest.raises(ValueError, match="C-contiguous"):
        call_gemm(g, False, False, np.ones((3, 2), np.float32).T, b, out)
    with pytest.raises(ValueError, match="shapes"):
        call_gemm(g, True, False, a, b, out)
    with pytest.raises(ValueError, match="shapes"):
        call_gemm(g, False, False, a, b, np.zeros((4, 2), np.float32))


def test_find_gemm_describes_the_symbol():
    for dtype in DTYPES:
        g = find_gemm(dtype)
        assert isinstance(g, Gemm) and g.dtype == dtype
        assert f"cblas_{'s' if dtype == 'float32' else 'd'}gemm" in g.symbol
        assert g.int_bits in (32, 64) and g.address != 0
        assert find_gemm(dtype) is g  # cached
    assert find_gemm("float32").library == find_gemm("float64").library
    with pytest.raises(ValueError):
        find_gemm("int32")


def test_int_bits_agrees_with_openblas_config():
    g = find_gemm()
    if blas_info().get("internal_api") != "openblas":
        pytest.skip("not OpenBLAS")
    config = _openblas_config(g.library, "scipy_", "64_") or _openblas_config(g.library)
    assert config, "OpenBLAS exports openblas_get_config"
    assert ("USE64BITINT" in config) == (g.int_bits == 64)
    numpy_config = np.show_config(mode="dicts")["Build Dependencies"]["blas"].get("openblas configuration")
    if numpy_config:  # the library loaded is the one numpy was built against (the core it picked may differ)
        assert build_options(config) == build_options(numpy_config)


def test_library_is_the_blas_numpy_loaded():
    g = find_gemm()
    blas = [e for e in threadpoolctl.threadpool_info() if e["user_api"] == "blas"]
    assert len(blas) == 1, f"exactly one BLAS is loaded in this process: {blas}"
    assert os.path.samefile(g.library, blas[0]["filepath"])
    info = blas_info()
    assert os.path.samefile(info["filepath"], g.library)
    for key in ("filepath", "prefix", "version", "num_threads", "architecture"):
        assert key in info
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        assert blas_info()["num_threads"] == 1


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "dladdr"), reason="no dladdr")
def test_address_lies_in_numpys_library():
    """dladdr maps the function pointer back to the loaded file and symbol: no second copy."""

    class DlInfo(ctypes.Structure):
        _fields_ = [
            ("dli_fname", ctypes.c_char_p),
            ("dli_fbase", ctypes.c_void_p),
            ("dli_sname", ctypes.c_char_p),
            ("dli_saddr", ctypes.c_void_p),
        ]

    dladdr = ctypes.CDLL(None).dladdr
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
    for dtype in DTYPES:
        g = find_gemm(dtype)
        info = DlInfo()
        assert dladdr(g.address, ctypes.byref(info))
        assert os.path.samefile(info.dli_fname.decode(), g.library)
        assert info.dli_sname.decode() == g.symbol and info.dli_saddr == g.address


def test_import_does_not_load_scipy_or_a_second_blas():
    code = (
        "import drug.backends.llvm.blas as b, sys, numpy as np, threadpoolctl\n"
        "assert 'scipy' not in sys.modules\n"
        "g = b.find_gemm()\n"
        "b.call_gemm(g, False, False, np.ones((2, 2), np.float32), np.ones((2, 2), np.float32),"
        " np.zeros((2, 2), np.float32))\n"
        "assert 'scipy' not in sys.modules\n"
        "blas = [e for e in threadpoolctl.threadpool_info() if e['user_api'] == 'blas']\n"
        "assert len(blas) == 1, blas\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "", "the module prints nothing"


# Choosing numpy's BLAS when several are loaded (synthetic threadpoolctl entries).
SITE = "/venv/lib/python3.11/site-packages"
NUMPY_LIB = {"filepath": f"{SITE}/numpy.libs/libscipy_openblas64_-abc.so", "internal_api": "openblas"}
SCIPY_LIB = {"filepath": f"{SITE}/scipy.libs/libscipy_openblas-def.so", "internal_api": "openblas"}
SYSTEM_LIB = {"filepath": "/usr/lib/x86_64-linux-gnu/libopenblas.so.0", "internal_api": "openblas"}


def _configs(mapping):
    return lambda path: mapping.get(path, "")


def test_pick_prefers_numpys_wheel_library():
    for entries in ([SCIPY_LIB, NUMPY_LIB], [NUMPY_LIB, SCIPY_LIB]):
        assert _pick_numpy_blas(entries, f"{SITE}/numpy", {}, _configs({})) is NUMPY_LIB


def test_pick_by_build_configuration():
    config = {"openblas configuration": "OpenBLAS 0.3.26 DYNAMIC_ARCH Haswell"}
    configs = _configs({SYSTEM_LIB["filepath"]: "OpenBLAS 0.3.26 DYNAMIC_ARCH Haswell", SCIPY_LIB["filepath"]: "x"})
    assert _pick_numpy_blas([SCIPY_LIB, SYSTEM_LIB], "/usr/lib/python3/numpy", config, configs) is SYSTEM_LIB


def test_pick_avoids_scipys_library():
    assert _pick_numpy_blas([SCIPY_LIB, SYSTEM_LIB], "/usr/lib/python3/numpy", {}, _configs({})) is SYSTEM_LIB


def test_pick_single_and_errors():
    assert _pick_numpy_blas([SYSTEM_LIB], "/elsewhere/numpy", {}, _configs({})) is SYSTEM_LIB
    with pytest.raises(RuntimeError, match="no BLAS"):
        _pick_numpy_blas([], "/elsewhere/numpy", {}, _configs({}))
    other = {"filepath": "/opt/lib/libopenblas.so", "internal_api": "openblas"}
    with pytest.raises(RuntimeError, match="several BLAS"):
        _pick_numpy_blas([SYSTEM_LIB, other], "/elsewhere/numpy", {}, _configs({}))


def test_build_options_leave_out_the_core_picked_at_run_time():
    built = "OpenBLAS 0.3.29  USE64BITINT DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64"
    running = "OpenBLAS 0.3.29  USE64BITINT DYNAMIC_ARCH NO_AFFINITY SkylakeX MAX_THREADS=64"
    assert (
        build_options(built)
        == build_options(running)
        == "OpenBLAS 0.3.29 USE64BITINT DYNAMIC_ARCH NO_AFFINITY MAX_THREADS=64"
    )
    assert build_options(built) != build_options(running.replace("USE64BITINT ", ""))

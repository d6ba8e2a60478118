"""drug's own sgemm (backends/llvm/gemm.py) against a float64 reference: drawn shapes around its
tile and block edges, both transposes, alpha and beta, leading dimensions wider than the matrices
(padding never written), NaN in C with beta 0, the shapes it hands to the BLAS, every tiling the
host can run, and whole graphs with and without it."""

from __future__ import annotations

import ctypes
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import drug as dg
from drug.backends.llvm import blas, gemm, jit, prepack
from drug.backends.llvm.blas import CBLAS_NO_TRANS, CBLAS_ROW_MAJOR, CBLAS_TRANS, Gemm
from drug.backends.llvm.codegen import GEMM_ALIGN, RUNTIME_SCONV, RUNTIME_SCONV_FILTER

HOST = gemm.host_tiling(jit.host_cpu()[1])
# every tiling this CPU can run: the host's, and the narrower ones (AVX's on an AVX-512 host, ...)
TILINGS = {t.lanes: t for t in (gemm.host_tiling(f) for f in ("+avx512f,+avx", "+avx", "")) if t.lanes <= HOST.lanes}
# edges of tiles (1, 2, 4, 8, 16, 32 wide), of packed blocks (256 deep, 512 wide) and of B read in place (64 rows)
DIM = st.one_of(st.sampled_from([1, 2, 3, 4, 5, 8, 9, 15, 16, 17, 31, 33, 47, 64, 65, 100]), st.integers(1, 140))
DEPTH = st.one_of(st.sampled_from([1, 2, 7, 255, 256, 257, 300, 513]), st.integers(1, 80))


@pytest.fixture(scope="module", params=sorted(TILINGS), ids=lambda lanes: f"lanes{lanes}")
def sgemm(request):
    """A callable sgemm of one tiling, sending its leftovers to numpy's BLAS."""
    fallback = blas.find_gemm("float32")
    address = gemm.compile_kernels(
        TILINGS[request.param], fallback.int_bits, fallback.address, convolutions=False
    ).sgemm
    return blas._ctypes_gemm(Gemm("drug", gemm.ENTRY_SYMBOL, address, fallback.int_bits, "float32"))


def _run(sgemm, m, n, k, trans_a, trans_b, alpha, beta, pad, seed):
    """C = alpha op(A) op(B) + beta C with each leading dimension `pad` wider than its matrix;
    checks the result and that the padding columns keep their values."""
    rng = np.random.default_rng(seed)
    a_rows, a_cols = (k, m) if trans_a else (m, k)
    b_rows, b_cols = (n, k) if trans_b else (k, n)
    a_store = rng.uniform(-1, 1, (a_rows, a_cols + pad)).astype(np.float32)
    b_store = rng.uniform(-1, 1, (b_rows, b_cols + pad)).astype(np.float32)
    c_store = rng.uniform(-1, 1, (m, n + pad)).astype(np.float32)
    if beta == 0.0:
        c_store[:, :n] = np.nan  # never read when beta is 0
    a, b, c_before = a_store[:, :a_cols], b_store[:, :b_cols], c_store.copy()
    op_a = (a.T if trans_a else a).astype(np.float64)
    op_b = (b.T if trans_b else b).astype(np.float64)
    expected = alpha * (op_a @ op_b) + (beta * c_before[:, :n].astype(np.float64) if beta else 0.0)
    sgemm(
        CBLAS_ROW_MAJOR,
        CBLAS_TRANS if trans_a else CBLAS_NO_TRANS,
        CBLAS_TRANS if trans_b else CBLAS_NO_TRANS,
        m, n, k, alpha,
        a_store.ctypes.data, a_cols + pad,
        b_store.ctypes.data, b_cols + pad,
        beta,
        c_store.ctypes.data, n + pad,
    )  # fmt: skip
    tol = 4 * np.finfo(np.float32).eps * (k + 2)
    np.testing.assert_allclose(c_store[:, :n], expected, rtol=tol, atol=tol * max(1.0, abs(alpha)))
    np.testing.assert_array_equal(c_store[:, n:], c_before[:, n:])


@settings(max_examples=120, deadline=None)
@given(
    m=DIM, n=DIM, k=DEPTH, trans_a=st.booleans(), trans_b=st.booleans(),
    alpha=st.sampled_from([1.0, -0.5, 2.0]), beta=st.sampled_from([0.0, 1.0, 0.25]),
    pad=st.sampled_from([0, 3]), seed=st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_sgemm_matches_float64_reference(sgemm, m, n, k, trans_a, trans_b, alpha, beta, pad, seed):
    _run(sgemm, m, n, k, trans_a, trans_b, alpha, beta, pad, seed)


@pytest.mark.parametrize(
    "m, n, k",
    [(600, 1100, 40), (20, 1030, 520), (130, 700, 300)],  # several column blocks, depth blocks, both
)
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, True)])
def test_sgemm_across_packed_blocks(sgemm, m, n, k, trans_a, trans_b):
    _run(sgemm, m, n, k, trans_a, trans_b, 1.0, 1.0, 5, seed=m * n + k)


@pytest.fixture(scope="module", params=sorted(TILINGS), ids=lambda lanes: f"lanes{lanes}")
def packed_sgemm(request):
    """The sgemm of B packed ahead of time (`gemm.PACKED_SYMBOL`) of one tiling, and that tiling."""
    fallback = blas.find_gemm("float32")
    tiling = TILINGS[request.param]
    address = gemm.compile_kernels(tiling, fallback.int_bits, fallback.address, convolutions=False).sgemm_packed
    return blas._ctypes_gemm(Gemm("drug", gemm.PACKED_SYMBOL, address, fallback.int_bits, "float32")), tiling


@settings(max_examples=120, deadline=None)
@given(
    m=DIM, n=DIM, k=DEPTH, trans_a=st.booleans(), trans_b=st.booleans(),
    alpha=st.sampled_from([1.0, -0.5]), beta=st.sampled_from([0.0, 1.0, 0.25]),
    pad=st.sampled_from([0, 3]), first_panel=st.integers(0, 3), seed=st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_sgemm_of_prepacked_b_matches_float64_reference(
    packed_sgemm, m, n, k, trans_a, trans_b, alpha, beta, pad, first_panel, seed
):
    _run_prepacked(packed_sgemm, m, n, k, trans_a, trans_b, alpha, beta, pad, first_panel, seed)


@settings(max_examples=60, deadline=None)
@given(n=DIM, k=DEPTH, trans_b=st.booleans(), pad=st.sampled_from([0, 3]), seed=st.integers(0, 2**32 - 1))
def test_packing_at_run_time_lays_b_out_as_prepacking_does(packed_sgemm, n, k, trans_b, pad, seed):
    """`gemm.PACK_SYMBOL` (a GEMM shared out by blocks of rows packs its B once with it) writes
    the panels `prepack.pack` makes of a constant, zeros past the last column included."""
    _, tiling = packed_sgemm
    fallback = blas.find_gemm("float32")
    address = gemm.compile_kernels(tiling, fallback.int_bits, fallback.address, convolutions=False).sgemm_pack
    pack = ctypes.CFUNCTYPE(None, *[ctypes.c_int64] * 3, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p)(address)
    rows, cols = (n, k) if trans_b else (k, n)
    store = np.random.default_rng(seed).uniform(-1, 1, (rows, cols + pad)).astype(np.float32)
    expected = prepack.pack(store[:, :cols], trans_b, tiling.panel)
    panels = np.full(expected.size + 16, np.nan, np.float32)  # the packing must write every float
    start = -(panels.ctypes.data // 4) % 16  # 64-byte aligned, as the caller's memory is
    pack(int(trans_b), n, k, store.ctypes.data, cols + pad, panels.ctypes.data + 4 * start)
    np.testing.assert_array_equal(panels[start : start + expected.size], expected.ravel())


@pytest.mark.parametrize("n", [1, 5, 10, 16, 17])
@pytest.mark.parametrize("trans_a", [False, True])
def test_one_row_by_a_prepacked_b_of_a_vectors_columns(packed_sgemm, n, trans_a):
    """A classifier's last layer at batch 1 (drug_sgemm.narrow_row on the first panel's rows)."""
    for k, beta in ((1, 0.0), (7, 1.0), (256, 0.0), (257, 0.5)):
        _run_prepacked(packed_sgemm, 1, n, k, trans_a, False, 1.0, beta, 2, 0, seed=n * k)


def _run_prepacked(packed_sgemm, m, n, k, trans_a, trans_b, alpha, beta, pad, first_panel, seed):
    """C[:, j0:] = alpha op(A) op(B)[:, j0:] + beta C from B packed by prepack.pack, its columns
    from j0 (a multiple of the panel, where a shared-out GEMM's blocks start) at b + j0*k."""
    sgemm, tiling = packed_sgemm
    rng = np.random.default_rng(seed)
    j0 = min(first_panel * tiling.panel, (n - 1) // tiling.panel * tiling.panel)
    a_store = rng.uniform(-1, 1, (k, m + pad) if trans_a else (m, k + pad)).astype(np.float32)
    weights = rng.uniform(-1, 1, (n, k) if trans_b else (k, n)).astype(np.float32)
    c_store = rng.uniform(-1, 1, (m, n + pad)).astype(np.float32)
    if beta == 0.0:
        c_store[:, j0:n] = np.nan  # never read when beta is 0
    packed, c_before = prepack.pack(weights, trans_b, tiling.panel), c_store.copy()
    a = a_store[:, :m] if trans_a else a_store[:, :k]
    op_a = (a.T if trans_a else a).astype(np.float64)
    op_b = (weights.T if trans_b else weights).astype(np.float64)
    expected = alpha * (op_a @ op_b[:, j0:]) + (beta * c_before[:, j0:n].astype(np.float64) if beta else 0.0)
    sgemm(
        CBLAS_ROW_MAJOR, CBLAS_TRANS if trans_a else CBLAS_NO_TRANS, CBLAS_TRANS,
        m, n - j0, k, alpha,
        a_store.ctypes.data, a_store.shape[1],
        packed.ctypes.data + 4 * j0 * k, k,
        beta,
        c_store.ctypes.data + 4 * j0, n + pad,
    )  # fmt: skip
    tol = 4 * np.finfo(np.float32).eps * (k + 2)
    np.testing.assert_allclose(c_store[:, j0:n], expected, rtol=tol, atol=tol)
    np.testing.assert_array_equal(c_store[:, :j0], c_before[:, :j0])
    np.testing.assert_array_equal(c_store[:, n:], c_before[:, n:])


def test_prepacked_panels_start_where_shared_out_blocks_do():
    """A shared-out GEMM's blocks of columns start at multiples of GEMM_ALIGN: each must be the
    start of a panel, or its block of a prepacked B would begin mid-panel."""
    for tiling in (gemm.host_tiling(f) for f in ("+avx512f,+avx", "+avx", "")):
        assert GEMM_ALIGN % tiling.panel == 0
        assert all(tile.vectors * tiling.lanes % tiling.panel == 0 or tiling.panel % (tile.vectors * tiling.lanes) == 0
                   for tile in (tiling.wide, tiling.narrow, *tiling.few))  # fmt: skip


VECTOR_LIKE = [(1, 300, 50), (40, 1, 50), (1, 1, 70), (7, 9, 0), (33, 1, 600), (1, 129, 17)]
VECTOR_LIKE += [(1, 10, 257), (1, 16, 3), (1, 5, 1)]  # one row of at most a vector's columns


@pytest.mark.parametrize("m, n, k", VECTOR_LIKE)
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (False, True), (True, False), (True, True)])
def test_vectors_and_empty_depth(sgemm, m, n, k, trans_a, trans_b):
    for pad in (0, 2):
        _run(sgemm, m, n, k, trans_a, trans_b, 1.5, 0.5, pad, seed=k)
        _run(sgemm, m, n, k, trans_a, trans_b, 1.0, 0.0, pad, seed=k)


@pytest.mark.parametrize("lanes", sorted(TILINGS))
@pytest.mark.parametrize("o", [3, 8, 21, 40])
def test_filter_gradient_kernel_matches_reference(lanes, o):
    """FILTER_SYMBOL with every tiling the host can run: the output gradient (channel-major)
    transposed in blocks of lanes x lanes (whole and partial ones each way: 40 pixels a block of
    8 rows 5 wide, then the image's last 2 rows), the narrow tile and the wide one, partial row
    tiles of taps; nothing written past the sum's `o` columns."""
    tiling = dataclasses.replace(TILINGS[lanes], depth=40)  # blocks of 40 pixels: 8 rows of 5
    fallback = blas.find_gemm("float32")
    kernels = gemm.compile_kernels(tiling, fallback.int_bits, fallback.address, gemms=False)
    signature = ctypes.CFUNCTYPE(None, *[ctypes.c_int64] * 5, *[ctypes.c_void_p] * 3, ctypes.c_int64,
                                 ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p)  # fmt: skip
    kernel = signature(kernels.sconv_filter)
    rng = np.random.default_rng(o)
    channels, kh, kw, rows, wo = 3, 3, 2, 10, 5
    height, width = rows + kh - 1, wo + kw - 1  # a valid convolution: the image is its own padding
    image = rng.standard_normal((channels, height, width)).astype(np.float32)
    taps = [(c, i, j) for c in range(channels) for i in range(kh) for j in range(kw)]
    offsets = np.array([c * height * width + i * width + j for c, i, j in taps], np.int64)
    g = rng.standard_normal((o, rows * wo)).astype(np.float32)
    ldc = o + 3
    c = np.full((len(taps), ldc), 0.5, np.float32)  # the kernel adds to what is there
    scratch = np.empty(gemm.filter_scratch(o, wo, tiling), np.float32)
    kernel(len(taps), o, rows, wo, width, image.ctypes.data, offsets.ctypes.data, g.ctypes.data, rows * wo,
           c.ctypes.data, ldc, scratch.ctypes.data)  # fmt: skip
    patches = np.stack([image[ch, i : i + rows, j : j + wo].ravel() for ch, i, j in taps]).astype(np.float64)
    np.testing.assert_allclose(c[:, :o], 0.5 + patches @ g.T.astype(np.float64), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(c[:, o:], 0.5)


def test_row_major_products_never_call_the_blas():
    """Dot products (one row or column) and empty depths are drug's own too: a float32 step never
    runs the BLAS, so nothing has to keep the BLAS's threads from running beside the pool's."""
    fallback = blas.find_gemm("float32")
    calls = []
    recorder = blas._ctypes_gemm(fallback).__class__(lambda *args: calls.append(args))
    address = gemm.compile_kernels(
        HOST, fallback.int_bits, ctypes.cast(recorder, ctypes.c_void_p).value, convolutions=False
    ).sgemm
    sgemm = blas._ctypes_gemm(Gemm("drug", gemm.ENTRY_SYMBOL, address, fallback.int_bits, "float32"))
    for m, n, k in VECTOR_LIKE + [(5, 6, 7)]:
        for trans_a in (False, True):
            for trans_b in (False, True):
                _run(sgemm, m, n, k, trans_a, trans_b, 1.0, 1.0, 1, seed=m + n)
    assert calls == []


def test_empty_products_write_nothing(sgemm):
    c = np.full((3, 4), 7.0, np.float32)
    for m, n in ((0, 4), (3, 0)):
        sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_NO_TRANS, m, n, 5, 1.0, None, 5, None, 4, 0.0, c.ctypes.data, 4)
    assert (c == 7.0).all()


def test_transpose_network_is_a_transpose():
    """The register transpose of `lanes` x `lanes` blocks, through the packing of B^T: a B whose
    entries name their own position comes out of A = I as exactly its transpose."""
    fallback = blas.find_gemm("float32")
    address = gemm.compile_kernels(HOST, fallback.int_bits, fallback.address, convolutions=False).sgemm
    call = blas._ctypes_gemm(Gemm("drug", gemm.ENTRY_SYMBOL, address, fallback.int_bits, "float32"))
    k = n = 2 * HOST.lanes * HOST.wide.vectors
    b = np.arange(n * k, dtype=np.float32).reshape(n, k)  # exact in float32
    eye, c = np.eye(k, dtype=np.float32), np.zeros((k, n), np.float32)
    call(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS, k, n, k, 1.0, eye.ctypes.data, k, b.ctypes.data, k, 0.0,
         c.ctypes.data, n)  # fmt: skip
    np.testing.assert_array_equal(c, b.T)


def _mlp():
    g = dg.Graph(seed=3)
    x = g.input("x", (None, 70))
    w1, w2 = g.parameter("w1", (70, 90)), g.parameter("w2", (90, 10))
    return g, dg.tanh(x @ w1) @ w2


def test_graphs_use_it_unless_told_otherwise(monkeypatch):
    """A compiled step calls drug's sgemm, DRUG_GEMM=blas puts numpy's BLAS back; both agree."""
    x = np.random.default_rng(0).standard_normal((33, 70)).astype(np.float32)
    results, slots = {}, {}
    for mode in ("drug", "blas"):
        monkeypatch.setenv(gemm.ENV, mode)
        g, out = _mlp()
        f = g.compile(outputs=out, backend="llvm")
        results[mode] = f(x=x)
        slots[mode] = f._executor._runtime[0]
    assert slots["blas"] == blas.find_gemm("float32").address != slots["drug"]
    np.testing.assert_allclose(results["drug"], results["blas"], rtol=1e-5, atol=1e-5)


def test_every_program_shares_one_module_of_drugs_kernels(monkeypatch):
    """The MLP and the CNN call the same sgemm of one module of drug's kernels (loaded from import
    on, whichever program comes first); DRUG_GEMM=blas gives the BLAS's sgemm and keeps drug's
    convolutions."""
    g, out = _mlp()
    mlp_table = g.compile(outputs=out, backend="llvm")._executor._runtime
    for mode in ("drug", "blas"):
        monkeypatch.setenv(gemm.ENV, mode)
        g = dg.Graph(seed=1)
        x = g.input("x", (None, 8, 12, 12))
        loss = dg.mean(dg.conv2d(x, g.parameter("w", (8, 8, 3, 3))) ** 2)
        table = g.compile(loss=loss, optimizer=dg.SGD(0.1), backend="llvm")._executor._runtime
        assert table[RUNTIME_SCONV] and table[RUNTIME_SCONV_FILTER]  # forward, input and filter gradients
        assert (table[0] == blas.find_gemm("float32").address) == (mode == "blas")
        assert (table[0] == mlp_table[0]) == (mode == "drug")


def test_sgemm_is_a_c_function_of_the_blas_int_width():
    """The entry keeps cblas_sgemm's signature for both integer widths a BLAS may have."""
    for bits in (32, 64):
        module = gemm.build_sgemm(HOST, bits)
        entry = module.get_global(gemm.ENTRY_SYMBOL)
        assert [str(t) for t in entry.function_type.args[3:6]] == [f"i{bits}"] * 3
    assert ctypes.sizeof(ctypes.c_void_p) == 8


def test_prebuilt_kernels_spare_a_first_compile(tmp_path, monkeypatch):
    """`python -m drug.backends.llvm.prebuild` (make install) compiles the kernels into the
    installation; with an empty cache, a first compile then loads them and compiles nothing."""
    monkeypatch.setattr(jit, "PREBUILT_DIR", tmp_path / "prebuilt")
    monkeypatch.setenv("DRUG_CACHE_DIR", str(tmp_path / "cache"))
    fallback = blas.find_gemm("float32")
    paths = gemm.prebuild_kernels(fallback.int_bits)
    assert len(paths) == 2 and all(p.exists() and p.stat().st_mode & 0o444 == 0o444 for p in paths)

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled although the kernels were prebuilt")

    monkeypatch.setattr(jit, "objects_of", no_compile)
    monkeypatch.setattr(jit.forked, "call", no_compile)
    kernels = gemm.compile_kernels(HOST, fallback.int_bits, fallback.address, convolutions=True)
    assert kernels.sconv and kernels.sconv_filter
    sgemm = blas._ctypes_gemm(Gemm("drug", gemm.ENTRY_SYMBOL, kernels.sgemm, fallback.int_bits, "float32"))
    _run(sgemm, 9, 40, 33, False, False, 1.0, 0.0, 2, seed=1)
    assert not list((tmp_path / "cache").glob("*.o"))  # nothing compiled, so nothing cached

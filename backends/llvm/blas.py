"""The GEMM of the one BLAS that numpy itself loaded, for generated code and fallbacks.

Native code must not bring a second BLAS (SciPy bundles its own OpenBLAS): two thread
pools fight over the cores and each GEMM gets several times slower. So we ask
threadpoolctl which BLAS numpy loaded, re-open that very file (RTLD_NOLOAD where the OS
has it, so a library that is not already loaded is never loaded) and take the address of
its `cblas_?gemm`. Generated code calls that address; `call_gemm` calls it via ctypes.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
from dataclasses import dataclass

import numpy as np
import threadpoolctl

__all__ = ["Gemm", "find_gemm", "blas_info", "call_gemm", "CBLAS_ROW_MAJOR", "CBLAS_NO_TRANS", "CBLAS_TRANS"]

# CBLAS enums (C `int` even in ILP64 builds).
CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS = 101, 111, 112

_LETTER = {"float32": "s", "float64": "d"}
# Symbol affixes seen in the wild: scipy-openblas wheels (`scipy_` prefix, `64_` suffix for
# ILP64), Debian/Fedora ILP64 builds (`64_` or `_64`), and plain `cblas_sgemm`.
_PREFIXES = ("", "scipy_")
_SUFFIXES = ("", "64_", "_64")
_ILP64_SUFFIXES = ("64_", "_64")


@dataclass(frozen=True)
class Gemm:
    """A `cblas_?gemm` entry point of numpy's BLAS.

    Signature (row-major use): gemm(order, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb,
    beta, C, ldc), where M..ldc are `int_bits`-wide signed integers and the three enums are
    C ints."""

    library: str
    symbol: str
    address: int
    int_bits: int
    dtype: str


def _blas_entries() -> list[dict]:
    return [info for info in threadpoolctl.threadpool_info() if info.get("user_api") == "blas"]


def _numpy_blas_config() -> dict:
    try:
        config = np.show_config(mode="dicts")
    except (TypeError, ValueError):  # numpy < 1.26 has no mode="dicts"
        return {}
    return ((config or {}).get("Build Dependencies") or {}).get("blas") or {}


def _openblas_config(filepath: str, prefix: str = "", suffix: str = "") -> str:
    """`openblas_get_config()` of an already loaded library, or '' if it has none."""
    lib = _open_loaded(filepath)
    if lib is None:
        return ""
    for name in (f"{p}openblas_get_config{s}" for p, s in _affix_pairs((prefix, suffix))):
        func = getattr(lib, name, None)
        if func is not None:
            func.restype = ctypes.c_char_p
            return (func() or b"").decode(errors="replace")
    return ""


def build_options(config: str) -> str:
    """The build part of an `openblas_get_config()` string: name, version and the upper-case build
    flags (USE64BITINT, DYNAMIC_ARCH, MAX_THREADS=64, ...). A DYNAMIC_ARCH library also names the
    CPU core it picked at run time (Haswell, SkylakeX), which differs between machines running the
    same file, so that word is left out."""
    words = config.split()
    return " ".join(words[:2] + [w for w in words[2:] if w == w.upper()])


def _open_loaded(filepath: str) -> ctypes.CDLL | None:
    """The handle of a library that is already loaded; never loads a new copy."""
    mode = ctypes.RTLD_LOCAL | getattr(os, "RTLD_NOLOAD", 0) | getattr(os, "RTLD_LAZY", 0)
    try:
        return ctypes.CDLL(filepath, mode=mode)
    except OSError:
        return None


def _under(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    try:
        return os.path.commonpath([path, directory]) == directory
    except ValueError:  # different drives on Windows
        return False


def _pick_numpy_blas(entries: list[dict], numpy_dir: str, numpy_config: dict, config_of=_openblas_config) -> dict:
    """Which of the loaded BLAS libraries (threadpoolctl entries) is numpy's.

    With one loaded, it is numpy's. With several (say SciPy's OpenBLAS too), keep, in turn:
    the ones shipped inside numpy's wheel (`numpy.libs`, `numpy/.dylibs`), the ones whose
    `openblas_get_config()` equals the configuration numpy was built with, and the ones not
    shipped by SciPy. Raises RuntimeError if none or still several remain."""
    if not entries:
        raise RuntimeError(
            "numpy has no BLAS loaded that threadpoolctl can see; drug needs the BLAS numpy "
            "uses (e.g. the OpenBLAS bundled with the numpy wheel) for its GEMMs"
        )
    site = os.path.dirname(os.path.realpath(numpy_dir))
    wheel_dirs = [os.path.join(site, "numpy.libs"), numpy_dir]
    wanted_config = build_options(numpy_config.get("openblas configuration") or "")
    filters = [
        lambda e: any(_under(e["filepath"], d) for d in wheel_dirs),
        lambda e: bool(wanted_config) and build_options(config_of(e["filepath"])) == wanted_config,
        lambda e: "scipy" not in os.path.realpath(e["filepath"]).replace("scipy_openblas", ""),
    ]
    candidates = list(entries)
    for keep in filters:
        if len(candidates) == 1:
            break
        kept = [e for e in candidates if keep(e)]
        candidates = kept or candidates
    if len(candidates) != 1:
        paths = ", ".join(e["filepath"] for e in candidates)
        raise RuntimeError(f"several BLAS libraries are loaded and none is clearly numpy's: {paths}")
    return candidates[0]


@functools.cache
def _numpy_blas_path() -> str:
    entries = _blas_entries()
    if not entries:  # numpy builds that load their BLAS lazily: make it load
        np.dot(np.ones((2, 2)), np.ones((2, 2)))
        entries = _blas_entries()
    entry = _pick_numpy_blas(entries, os.path.dirname(np.__file__), _numpy_blas_config())
    return entry["filepath"]


def blas_info() -> dict:
    """What threadpoolctl reports for numpy's BLAS (filepath, prefix, version, num_threads,
    architecture, ...), read now: num_threads follows threadpoolctl limits."""
    path = _numpy_blas_path()
    for entry in _blas_entries():
        if entry["filepath"] == path:
            return dict(entry)
    raise RuntimeError(f"numpy's BLAS {path} is no longer reported by threadpoolctl")


def _controller_affixes(path: str) -> tuple[str, str] | None:
    """The symbol prefix/suffix threadpoolctl found for the library (private attributes,
    so only a first guess)."""
    for lib in threadpoolctl.ThreadpoolController().lib_controllers:
        if lib.filepath == path:
            prefix, suffix = getattr(lib, "_symbol_prefix", None), getattr(lib, "_symbol_suffix", None)
            if isinstance(prefix, str) and isinstance(suffix, str):
                return prefix, suffix
    return None


def _affix_pairs(first: tuple[str, str] | None) -> list[tuple[str, str]]:
    """Symbol (prefix, suffix) pairs to try: `first` (e.g. what threadpoolctl found), then the known ones."""
    return list(dict.fromkeys(([first] if first else []) + list(itertools.product(_PREFIXES, _SUFFIXES))))


def _symbol_candidates(letter: str, affixes: tuple[str, str] | None) -> list[str]:
    return [f"{p}cblas_{letter}gemm{s}" for p, s in _affix_pairs(affixes)]


@functools.cache
def find_gemm(dtype: str = "float32") -> Gemm:
    """The `cblas_sgemm` (float32) or `cblas_dgemm` (float64) of the BLAS numpy loaded."""
    dtype = np.dtype(dtype).name
    if dtype not in _LETTER:
        raise ValueError(f"find_gemm supports float32 and float64, not {dtype}")
    path = _numpy_blas_path()
    lib = _open_loaded(path)
    if lib is None:
        raise RuntimeError(f"cannot open numpy's BLAS {path} (it should already be loaded)")
    affixes = _controller_affixes(path)
    candidates = _symbol_candidates(_LETTER[dtype], affixes)
    for symbol in candidates:
        func = getattr(lib, symbol, None)
        if func is None:
            continue
        address = ctypes.cast(func, ctypes.c_void_p).value
        ilp64 = symbol.endswith(_ILP64_SUFFIXES)
        if not ilp64:
            prefix, suffix = affixes or ("", "")
            ilp64 = "USE64BITINT" in _openblas_config(path, prefix, suffix)
        return Gemm(library=path, symbol=symbol, address=address, int_bits=64 if ilp64 else 32, dtype=dtype)
    raise RuntimeError(f"numpy's BLAS {path} exports none of {', '.join(candidates)}")


class OneThread:
    """A context manager setting numpy's OpenBLAS to one thread while native code runs whose
    pool's threads share out the GEMMs themselves (BLAS threads would sit spinning beside them);
    a no-op for another BLAS."""

    def __init__(self):
        self._get = self._set = None
        path = _numpy_blas_path()
        lib = _open_loaded(path)
        for prefix, suffix in _affix_pairs(_controller_affixes(path)) if lib is not None else ():
            get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
                self._get, self._set = get, set_
                break
        self._saved: list[int] = []

    def __enter__(self) -> None:
        if self._set is not None:
            self._saved.append(self._get())
            self._set(1)

    def __exit__(self, *exc) -> None:
        if self._set is not None:
            self._set(self._saved.pop())

    def addresses(self) -> tuple[int, int]:
        """Where openblas_get_num_threads and openblas_set_num_threads are (0, 0: another BLAS),
        for native code that does what this context does."""
        if self._set is None:
            return 0, 0
        return tuple(ctypes.cast(f, ctypes.c_void_p).value for f in (self._get, self._set))


@functools.cache
def one_thread() -> OneThread:
    return OneThread()


@functools.cache
def _ctypes_gemm(gemm: Gemm):
    index = ctypes.c_int64 if gemm.int_bits == 64 else ctypes.c_int32
    scalar = ctypes.c_float if gemm.dtype == "float32" else ctypes.c_double
    enum, ptr = ctypes.c_int, ctypes.c_void_p
    proto = ctypes.CFUNCTYPE(
        None, enum, enum, enum, index, index, index, scalar, ptr, index, ptr, index, scalar, ptr, index
    )
    return proto(gemm.address)


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]  # cheaper than array.ctypes.data


def _check_operand(name: str, array: np.ndarray, dtype: str) -> None:
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        raise ValueError(f"call_gemm: {name} must be a 2-D numpy array")
    if array.dtype != np.dtype(dtype):
        raise ValueError(f"call_gemm: {name} is {array.dtype}, the GEMM takes {dtype}")
    if not array.flags.c_contiguous:
        raise ValueError(f"call_gemm: {name} must be C-contiguous")


def call_gemm(
    gemm: Gemm,
    trans_a: bool,
    trans_b: bool,
    a: np.ndarray,
    b: np.ndarray,
    out: np.ndarray,
    alpha: float = 1.0,
    beta: float = 0.0,
) -> np.ndarray:
    """out = alpha * op(a) @ op(b) + beta * out, in place, with op(x) = x.T if trans_x.

    All three arrays are C-contiguous 2-D arrays of `gemm.dtype`: a is (M, K), or (K, M) if
    trans_a; b is (K, N), or (N, K) if trans_b; out is (M, N). With beta=0 out's old contents
    are not read (CBLAS rule: NaNs in it do not propagate). Returns out."""
    for name, array in (("a", a), ("b", b), ("out", out)):
        _check_operand(name, array, gemm.dtype)
    if not out.flags.writeable:
        raise ValueError("call_gemm: out is read-only")
    m, k = a.shape[::-1] if trans_a else a.shape
    k_b, n = b.shape[::-1] if trans_b else b.shape
    if k != k_b or out.shape != (m, n):
        raise ValueError(
            f"call_gemm: shapes do not match: op(a) {(m, k)} @ op(b) {(k_b, n)} -> out {out.shape}, "
            f"expected out {(m, n)}"
        )
    if gemm.int_bits == 32 and max(a.shape + b.shape + out.shape) >= 2**31:
        raise ValueError("call_gemm: a dimension does not fit the 32-bit integers of this BLAS")
    _ctypes_gemm(gemm)(
        CBLAS_ROW_MAJOR,
        CBLAS_TRANS if trans_a else CBLAS_NO_TRANS,
        CBLAS_TRANS if trans_b else CBLAS_NO_TRANS,
        m,
        n,
        k,
        alpha,
        _address(a),
        max(1, a.shape[1]),
        _address(b),
        max(1, b.shape[1]),
        beta,
        _address(out),
        max(1, n),
    )
    return out

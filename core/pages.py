"""Memory for the large arrays drug owns: starting on a cache line, and on transparent huge pages
(Linux, where they are on for madvise'd memory) from a size the caller picks.

Why huge pages: a kernel that walks a matrix row by row with rows kilobytes apart (a GEMM reading
a weight matrix in place, a batch of 64 or fewer rows) touches a new 4 KiB page every row or two
and misses the TLB as often; a 2 MiB page covers the whole of a typical weight matrix. Why
alignment: a vector load of a row that starts mid cache line reads two lines."""

from __future__ import annotations

import mmap

import numpy as np

HUGE_PAGE = 2 << 20
ALIGN = 64


def aligned_zeros(nbytes: int, huge: bool = False) -> np.ndarray:
    """`nbytes` zeroed bytes starting on a cache line (`huge`: on a huge-page boundary, with the
    kernel asked for huge pages; ordinary pages where it has none to give)."""
    if huge and hasattr(mmap, "MADV_HUGEPAGE"):
        # whole huge pages from the aligned start on: the kernel backs a huge page only if the
        # mapping covers all of it (a 1.6 MB array in a 1.6 + 2 MB mapping got one or not by
        # where the mapping happened to start)
        whole = -(-max(nbytes, 1) // HUGE_PAGE) * HUGE_PAGE
        region = mmap.mmap(-1, whole + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # zero-filled
        region.madvise(mmap.MADV_HUGEPAGE)
        raw = np.frombuffer(region, np.uint8)  # keeps the mapping alive
        start = (-raw.ctypes.data) % HUGE_PAGE
        return raw[start : start + nbytes]
    raw = np.zeros(nbytes + ALIGN, np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start : start + nbytes]


def aligned_copy(value: np.ndarray, huge_from: int) -> np.ndarray:
    """A C-contiguous copy of `value` in `aligned_zeros` memory (huge pages from `huge_from` bytes)."""
    storage = aligned_zeros(value.nbytes, huge=value.nbytes >= huge_from).view(value.dtype).reshape(value.shape)
    storage[...] = value
    return storage

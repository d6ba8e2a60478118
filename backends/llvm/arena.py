"""The activation arena: one allocation per batch size, temps packed by liveness (first fit)."""

from __future__ import annotations

import mmap

import numpy as np

from ...compiler.schedule import Buffer, pack_temps

ALIGN = 64


def pack(buffers: list[Buffer], batch: int) -> tuple[dict[int, int], int]:
    """Byte offset of every temp buffer, and the arena size; buffers alive at once never overlap."""
    return pack_temps(buffers, batch, ALIGN)


HUGE_PAGE = 2 << 20
HUGE_MIN = 8 * HUGE_PAGE  # smaller arenas take ordinary pages


def allocate(nbytes: int) -> np.ndarray:
    """A zeroed, 64-byte aligned byte array (touched once, so later steps take no page faults).
    A large arena asks for transparent huge pages (Linux, where they are on for madvise'd memory):
    its first use takes one page fault per 2 MiB instead of per 4 KiB, and the kernels' accesses
    miss the TLB far less often."""
    if nbytes >= HUGE_MIN and hasattr(mmap, "MADV_HUGEPAGE"):
        region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # zero-filled
        region.madvise(mmap.MADV_HUGEPAGE)
        raw = np.frombuffer(region, np.uint8)  # keeps the mapping alive
        start = (-raw.ctypes.data) % HUGE_PAGE
        return raw[start : start + nbytes]
    raw = np.zeros(nbytes + ALIGN, np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start : start + nbytes]

"""The activation arena: one allocation per batch size, temps packed by liveness (first fit)."""

from __future__ import annotations

import numpy as np

from ...compiler.schedule import Buffer, pack_temps

ALIGN = 64


def pack(buffers: list[Buffer], batch: int) -> tuple[dict[int, int], int]:
    """Byte offset of every temp buffer, and the arena size; buffers alive at once never overlap."""
    return pack_temps(buffers, batch, ALIGN)


def allocate(nbytes: int) -> np.ndarray:
    """A zeroed, 64-byte aligned byte array (touched once, so later steps take no page faults)."""
    raw = np.zeros(nbytes + ALIGN, np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start : start + nbytes]

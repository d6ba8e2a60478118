"""The activation arena: one allocation per batch size, temps packed by liveness (first fit)."""

from __future__ import annotations

import numpy as np

from ...compiler.schedule import Buffer, pack_temps
from ...core.pages import ALIGN, HUGE_PAGE, aligned_zeros
from . import jit

SUFFIX = ".arena"


def pack(buffers: list[Buffer], batch: int) -> tuple[dict[int, int], int]:
    """Byte offset of every temp buffer, and the arena size; buffers alive at once never overlap."""
    return pack_temps(buffers, batch, ALIGN)


def layout(buffers: list[Buffer], batch: int) -> tuple[dict[int, int], int]:
    """`pack`, kept in the compile cache under exactly what packing reads (each temp's slot, size
    and lifetime, the alignment): packing thousands of temps is a large part of a cached
    compile's first step. Not under the program's fingerprint: two programs with the same kernels
    but different outputs keep different temps alive to the end. An entry that does not fit the
    buffers is packed again."""
    if not jit.cache_enabled():
        return pack(buffers, batch)
    temps = [b for b in buffers if b.kind == "temp"]
    packing = repr([(b.slot, b.nbytes(batch), b.live) for b in temps])
    path = jit.cache_dir() / f"{jit.cache_key(f'arena|{ALIGN}|{packing}')}{SUFFIX}"
    stored = _read_layout(path, temps, batch)
    if stored is not None:
        return stored
    offsets, size = pack(buffers, batch)
    values = [offsets[b.slot] for b in temps] + [size]
    jit.write_verified(path, np.array(values, "<i8").tobytes())
    return offsets, size


def _read_layout(path, temps: list[Buffer], batch: int) -> tuple[dict[int, int], int] | None:
    data = jit.read_verified(path)
    if data is None or len(data) != 8 * (len(temps) + 1):
        return None
    values = np.frombuffer(data, "<i8").tolist()
    size = values.pop()
    fits = all(o >= 0 and o % ALIGN == 0 and o + b.nbytes(batch) <= size for o, b in zip(values, temps))
    return ({b.slot: o for b, o in zip(temps, values)}, size) if fits else None


HUGE_MIN = 8 * HUGE_PAGE  # smaller arenas take ordinary pages


def allocate(nbytes: int) -> np.ndarray:
    """A zeroed, 64-byte aligned byte array (touched once, so later steps take no page faults).
    A large arena asks for transparent huge pages: its first use takes one page fault per 2 MiB
    instead of per 4 KiB, and the kernels' accesses miss the TLB far less often."""
    return aligned_zeros(nbytes, huge=nbytes >= HUGE_MIN)

"""`DRUG_PERF_MAP=1`: name JIT-compiled functions for `perf` in /tmp/perf-<pid>.map.

perf reads that file (lines `start size name`, hex) to name samples in anonymous executable
memory. The engine only tells the address of global functions; every kernel is internal. So
each object file's ELF symbol table is read here: a section's load address is a global
function's address minus its offset, and every function of that section follows from it."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

ENV = "DRUG_PERF_MAP"
_STT_FUNC, _STB_LOCAL = 2, 0


def enabled() -> bool:
    return os.environ.get(ENV, "0") == "1"


def elf_functions(code: bytes) -> list[tuple[str, int, int, int, bool]]:
    """(name, section index, offset, size, global) of each function symbol of a 64-bit
    little-endian ELF relocatable object; [] for anything else."""
    if code[:4] != b"\x7fELF" or code[4] != 2 or code[5] != 1:
        return []
    shoff = struct.unpack_from("<Q", code, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", code, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", code, shoff + i * shentsize) for i in range(shnum)]
    out = []
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind != 2 or not entsize:  # SHT_SYMTAB
            continue
        strings = sections[link][4]
        for at in range(offset, offset + size, entsize):
            name_at, info, _, shndx, value, length = struct.unpack_from("<IBBHQQ", code, at)
            if info & 0xF != _STT_FUNC or not 0 < shndx < len(sections):
                continue
            end = code.index(b"\0", strings + name_at)
            name = code[strings + name_at : end].decode(errors="replace")
            out.append((name, shndx, value, length, info >> 4 != _STB_LOCAL))
    return out


def map_lines(objects: list[bytes], address_of: Callable[[str], int]) -> list[str]:
    """perf map lines for the functions of `objects` as loaded (address_of: a global's address)."""
    lines = []
    for code in objects:
        functions = elf_functions(code)
        base = {}
        for name, section, offset, _, is_global in functions:
            if is_global and section not in base:
                address = address_of(name)
                if address:
                    base[section] = address - offset
        for name, section, offset, size, _ in functions:
            if section in base and size:
                lines.append(f"{base[section] + offset:x} {size:x} drug:{name}\n")
    return lines


def record(objects: list[bytes], engine) -> None:
    """Append the loaded functions to this process's perf map (when DRUG_PERF_MAP=1)."""
    if not enabled():
        return
    lines = map_lines(objects, engine.get_function_address)
    with open(f"/tmp/perf-{os.getpid()}.map", "a") as f:
        f.writelines(lines)

"""Memory the runtime is about to ask for, checked against what the machine has.

Why: Linux overcommits, so a 300 GB `np.zeros` for a huge batch may "succeed" and the process is
killed later by the OOM killer while native code touches the pages, or NumPy raises a ValueError
("array is too big") for sizes beyond 2**63 bytes. Checking first turns both into a MemoryError
that says which batch size and what needs the memory, before anything runs."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


@functools.cache
def machine_bytes() -> int:
    """Physical memory plus swap: more than this cannot be backed, whatever the overcommit policy."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/proc/meminfo") as f:
            swap = next((int(line.split()[1]) * 1024 for line in f if line.startswith("SwapTotal:")), 0)
    except OSError:
        swap = 0
    return total + swap


def human(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.3g} {unit}" if unit != "B" else f"{nbytes} B"
        nbytes /= 1024
    raise AssertionError("unreachable")


def check(nbytes: int, what: str) -> None:
    """Raise MemoryError if `nbytes` for `what` cannot possibly fit on this machine."""
    if nbytes > machine_bytes():
        raise MemoryError(
            f"{what} would need {human(nbytes)}, more than this machine's memory ({human(machine_bytes())}); "
            "use a smaller batch. Nothing was run."
        )


def allocating(what: str, nbytes: int, make: Callable[[], T]) -> T:
    """`make()` after `check`, with NumPy's allocation failures reworded to say what and how much."""
    check(nbytes, what)
    try:
        return make()
    except (MemoryError, ValueError) as error:  # ValueError: "array is too big"
        raise MemoryError(f"{what} would need {human(nbytes)}, which could not be allocated: {error}") from None

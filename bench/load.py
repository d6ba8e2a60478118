"""`drug-bench --load N`: N busy processes beside the benchmark, to see how each framework holds
up on a shared machine (multi-threaded code whose threads wait for each other can slow down far
more than its fair share of the CPUs when another process holds a core).

Each round also times every framework with the busy processes stopped (`paused`), so that the
slowdown under load compares two figures of one run: this machine's speed drifts by tens of
percent within minutes, and a loaded run set against an idle run of another moment mixes that
drift into the ratio."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

BUSY = "while True: pass"


class BusyLoad:
    """A context manager running `count` Python processes that spin (`while True: pass`),
    pinned to `cpus` if given; stopped (and waited for) on exit."""

    def __init__(self, count: int, cpus: list[int] | None = None):
        self.count, self.cpus = count, cpus
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> BusyLoad:
        for _ in range(self.count):
            process = subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.DEVNULL)
            self.processes.append(process)
            if self.cpus:
                os.sched_setaffinity(process.pid, self.cpus)
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait()
        self.processes = []

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The busy processes stopped (SIGSTOP) for the block, then running again."""
        for process in self.processes:
            os.kill(process.pid, signal.SIGSTOP)
        for process in self.processes:
            os.waitpid(process.pid, os.WUNTRACED)  # a signal is delivered when it is: wait for the stop
        try:
            yield
        finally:
            for process in self.processes:
                os.kill(process.pid, signal.SIGCONT)

    def describe(self) -> str:
        where = f", pinned to CPU {','.join(map(str, self.cpus))}" if self.cpus else ", unpinned"
        return (
            f"--load {self.count}: {self.count} busy process{'es' if self.count != 1 else ''} "
            f"(`python -c '{BUSY}'`{where}) ran beside the benchmark, started after the machine's peaks were "
            "measured; every round also timed each framework with them stopped (the idle figures of 'slowdown')"
        )

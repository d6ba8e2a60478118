"""Progress on stderr while the benchmark runs: a rich status line on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.start = time.perf_counter()
        self._status = None
        if enabled and sys.stderr.isatty():
            try:
                from rich.console import Console

                self._status = Console(stderr=True).status("starting")
                self._status.start()
            except ImportError:
                self._status = None
        self.section = ""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def begin(self, section: str) -> None:
        self.section = section
        self.update("")

    def update(self, message: str) -> None:
        if not self.enabled:
            return
        text = f"[{time.perf_counter() - self.start:6.1f}s] {self.section}: {message}".rstrip(": ")
        if self._status is not None:
            self._status.update(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        """A line that stays (skips, fallbacks, refused checks)."""
        if not self.enabled:
            return
        if self._status is not None:
            self._status.console.print(f"note: {message}", markup=False, highlight=False)
        else:
            print(f"note: {message}", file=sys.stderr, flush=True)

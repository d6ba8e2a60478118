"""What every implementation of a workload offers the harness."""

from __future__ import annotations

from typing import Any

from ..workloads import Data, Fusion, Workload


class Unsupported(Exception):
    """This peer has no implementation of this workload."""


class Peer:
    """One framework's implementation of one workload, built from the shared initial arrays.

    `run(batch)` does one train step (forward, backward, Adam update) and returns the loss as
    a Python float, which also waits for asynchronous frameworks; for the fusion workload it
    evaluates the expression and returns its output. `step()` runs the next batch in turn."""

    name = "?"
    compiles = False  # has a compile step worth timing in the `compile` workload

    def __init__(self, workload: Workload, data: Data):
        self.workload = workload
        self.batches = [self.convert(b) for b in data.batches]
        self._next = 0
        self._first_loss: float | None = None

    def convert(self, batch: dict) -> Any:
        """The batch in this framework's own arrays, converted once, outside the timed steps."""
        return batch

    def run(self, batch: Any) -> Any:
        raise NotImplementedError

    def sync(self, out: Any) -> None:
        """Wait for `out` to be computed (fusion only: train steps return a float already)."""

    def step(self) -> Any:
        batch = self.batches[self._next % len(self.batches)]
        self._next += 1
        out = self.run(batch)
        if not self.workload.trains:
            self.sync(out)
        return out

    def to_numpy(self, out: Any):
        import numpy as np

        return np.asarray(out)

    def check_values(self, n: int = 3) -> list[float]:
        """The first `n` losses of a fresh model (the first checks the forward pass, later ones
        the gradients and the optimizer); for fusion, checksums of the output."""
        if not self.workload.trains:
            return Fusion.checksum(self.to_numpy(self.step()))
        values = [float(self.step()) for _ in range(n)]
        self._first_loss = values[0]
        return values

    def loss_of_first_step(self) -> float:
        if self._first_loss is None:
            if self._next:
                raise RuntimeError("loss_of_first_step() must come before any other step")
            self.check_values(1)
        return self._first_loss

"""The seam between the compiler and the machines: a Backend names the passes that finish a program
for it and builds the executor that runs it. Backends register by name; `g.compile(backend=...)`
looks them up here, so a new backend is one more package that calls `register`."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..compiler.passes import Pass
from ..core.errors import GraphError
from ..core.program import Program


class Executor(ABC):
    """Runs one compiled program, step after step; owns whatever memory the backend needs."""

    # Whether `run` writes outputs straight into the `out` arrays it is given (so the caller
    # passes recycled arrays instead of copying results afterwards).
    fills_outputs = False

    @abstractmethod
    def run(
        self, feeds: dict[int, np.ndarray], batch: int | None, out: list[np.ndarray | None] | None = None
    ) -> list[np.ndarray]:
        """One step: the program's outputs (the loss first, if any), after applying its updates to
        the graph's parameters and the optimizer state. `feeds` are checked arrays by input node
        id; `out` (aligned with the outputs) are arrays the outputs may be written to."""

    def bytes_needed(self, batch: int) -> int:
        """Memory a step of this batch size needs besides its outputs, checked before it runs."""
        return 0

    def ir(self) -> str:
        raise GraphError(f"the {type(self).__name__} has no LLVM IR; compile with backend='llvm'")

    def asm(self) -> str:
        raise GraphError(f"the {type(self).__name__} has no machine code; compile with backend='llvm'")


class Backend(ABC):
    """A way to run programs, registered under `name`."""

    name: str = ""

    @abstractmethod
    def passes(self) -> list[tuple[str, Pass]]:
        """The passes after the common pipeline (compiler/passes.PIPELINE) that finish a program
        for this backend (kernel formation, memory planning, ...)."""

    @abstractmethod
    def executor(self, program: Program, state: dict[str, np.ndarray]) -> Executor:
        """An executor for a program finished by `passes`, with the optimizer `state` buffers it updates."""

    def instrumented_executor(self, program: Program, state: dict[str, np.ndarray], instrument: str) -> Executor:
        """An executor that also times each kernel (`instrument="profile"`, for
        `CompiledFunction.profile`) or stops at the first node producing NaN or Inf and changes
        nothing (`"numerics"`, for `debug_numerics=True`). Backends without it refuse."""
        what = {"profile": "profile kernels", "numerics": "check numerics node by node"}.get(instrument, instrument)
        raise GraphError(f"the {self.name!r} backend cannot {what}; compile with backend='llvm'")


_BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Make `backend` available as `g.compile(backend=backend.name)`."""
    if not backend.name:
        raise ValueError("a backend needs a name")
    _BACKENDS[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise GraphError(f"unknown backend {name!r}; choose one of {available()}") from None


def available() -> list[str]:
    return sorted(_BACKENDS)

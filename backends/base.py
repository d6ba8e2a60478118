"""The seam between the compiler and the machines: a Backend names the passes that finish a program
for it and builds the executor that runs it. Backends register by name; `g.compile(backend=...)`
looks them up here, so a new backend is one more package that calls `register`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from ..compiler.build import ProgramCache
from ..compiler.passes import Pass
from ..core.arrays import HostArrays
from ..core.errors import GraphError
from ..core.program import Program

NamedArrays = Sequence[tuple[HostArrays, Sequence[str]]]  # stores of host arrays, each with names in it


class Executor(ABC):
    """Runs one compiled program, step after step; owns whatever memory the backend needs."""

    # Whether `run` writes outputs straight into the `out` arrays it is given (so the caller
    # passes recycled arrays instead of copying results afterwards).
    fills_outputs = False
    # Whether a step runs Python code: forwards of ops without a native kernel (the runtime lets a
    # call waiting for such a step give up, since the forward may be waiting for that call).
    runs_python = False

    @abstractmethod
    def run(
        self, feeds: dict[int, np.ndarray], batch: int | None, out: list[np.ndarray | None] | None = None
    ) -> list[np.ndarray]:
        """One step: the program's outputs (the loss first, if any), after applying its updates to
        the graph's parameters and the optimizer state. `feeds` are checked arrays by input node
        id; `out` (aligned with the outputs) are arrays the outputs may be written to."""

    # Whether `run_plain` may run a call (else it always returns None).
    runs_plain = False

    def run_plain(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray] | None:
        """A fast path for calls whose feeds (arrays by input name) are exactly what the inputs
        declare: the step's outputs as `run` returns them, or None for any other call, which the
        runtime then checks and binds for `run`."""
        return None

    def bytes_needed(self, batch: int) -> int:
        """Memory a step of this batch size needs besides its outputs, checked before it runs."""
        return 0

    def before_step(self, reads: NamedArrays) -> None:
        """Make the arrays a step reads (parameters, state buffers, optimizer state: each store with
        the names read in it) current where it reads them. Host executors read the host arrays,
        which a device backend's steps may have left behind the device's copies."""
        for arrays, names in reads:
            arrays.refresh(names)

    def after_step(self, written: NamedArrays) -> None:
        """Record where the newest values of the arrays a step updated are: for host executors the
        host arrays (a device's copies of them are then outdated)."""
        for arrays, names in written:
            arrays.written_on_host(names)

    def ir(self) -> str:
        raise GraphError(f"the {type(self).__name__} has no LLVM IR; compile with backend='llvm'")

    def asm(self) -> str:
        raise GraphError(f"the {type(self).__name__} has no machine code; compile with backend='llvm'")


class Backend(ABC):
    """A way to run programs, registered under `name`."""

    name: str = ""

    def with_option(self, option: str) -> Backend:
        """This backend configured by the text after the colon of `backend="name:option"` (the
        OpenCL backend takes a device)."""
        raise GraphError(f"backend {self.name!r} takes no option, got {self.name}:{option}")

    @property
    def label(self) -> str:
        """What the backend runs on, for reports (a device backend names its device)."""
        return self.name

    @abstractmethod
    def passes(self) -> list[tuple[str, Pass]]:
        """The passes after the common pipeline (compiler/passes.PIPELINE) that finish a program
        for this backend (kernel formation, memory planning, ...)."""

    def program_cache(self) -> ProgramCache | None:
        """Where a compile finds the program `passes()` made of the same request before (None:
        every compile runs the passes)."""
        return None

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
    """The backend registered as `name`, or as the part before a colon, configured by the rest
    ("opencl:1": the OpenCL backend on device 1)."""
    base, colon, option = name.partition(":")
    try:
        backend = _BACKENDS[base]
    except KeyError:
        raise GraphError(f"unknown backend {name!r}; choose one of {available()}") from None
    return backend.with_option(option) if colon else backend


def available() -> list[str]:
    return sorted(_BACKENDS)

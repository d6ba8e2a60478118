"""The OpenCL backend ("opencl"): fused loops and op kernels written as OpenCL C 1.2 (loops.py,
kernels/), one program per compiled function; GEMMs through CLBlast (blas.py); parameters and
optimizer state kept on the device (executor.py). Runs on any OpenCL device: a GPU's driver,
or pocl on the CPU (a stand-in for correctness, not speed). See docs/gpu.md.

`g.compile(..., backend="opencl")` runs on DRUG_OPENCL_DEVICE, else the first device;
`backend="opencl:<device>"` picks one by index or name (`python -m drug.backends.opencl`
lists them)."""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

from ...compiler.fusion import Fuse
from ...compiler.passes import Pass
from ...compiler.schedule import Plan
from ...compiler.simplify import simplify
from ...core.arrays import HostArrays
from ...core.errors import GraphError
from ...core.program import Program
from ..base import Backend, Executor, register
from . import kernels  # noqa: F401 (registers every op's kernel)
from .lowering import TARGET, check


def runtime(module: str) -> ModuleType:
    """A module that needs pyopencl or pyclblast (the `gpu` extra), imported on first use: those
    take about half a second to import, which `import drug` should not cost everyone."""
    try:
        return importlib.import_module(f".{module}", __name__)
    except ImportError as error:
        raise GraphError(
            f"the opencl backend needs pyopencl and pyclblast ({error}); install them with "
            "pip install 'drug[gpu]' (and an OpenCL driver: apt-get install pocl-opencl-icd libclblast-dev)"
        ) from None


class OpenCLBackend(Backend):
    name = "opencl"

    def __init__(self, device: str | None = None):
        self.device_spec = device  # None: DRUG_OPENCL_DEVICE, else the first device

    def with_option(self, option: str) -> OpenCLBackend:
        return OpenCLBackend(option)

    def device(self):
        return runtime("device").choose(self.device_spec)

    @property
    def label(self) -> str:
        return f"opencl ({self.device().title})"

    def passes(self) -> list[tuple[str, Pass]]:
        device = self.device()  # no device: say so before compiling anything

        def supported(program: Program) -> Program:
            return check(program, device.fp64, device.title)

        return [("simplify", simplify), ("fuse", Fuse(TARGET)), ("schedule", Plan(TARGET)), ("check", supported)]

    def executor(self, program: Program, state: dict[str, np.ndarray] | HostArrays) -> Executor:
        return runtime("executor").OpenCLExecutor(program, state, self.device())


register(OpenCLBackend())

__all__ = ["OpenCLBackend"]

"""The LLVM backend: fused loops and op kernels emitted as LLVM IR (codegen.py, kernels/), compiled
for the host CPU by llvmlite (jit.py), run by one native entry per step (executor.py) with the
GEMMs of NumPy's own BLAS (blas.py) and one thread pool (threads.py)."""

from __future__ import annotations

import numpy as np

from ...compiler.passes import Pass
from ...core.program import Program
from ..base import Backend, register
from . import (
    kernels,  # noqa: F401 (registers every op's lowering)
    pipeline,
    threads,
)
from .executor import NativeExecutor, warm_up
from .programs import ProgramCache


class LLVMBackend(Backend):
    name = "llvm"

    def passes(self) -> list[tuple[str, Pass]]:
        return pipeline.passes(concurrent=threads.concurrent_kernels())

    def program_cache(self) -> ProgramCache:
        return ProgramCache(concurrent=threads.concurrent_kernels())

    def executor(self, program: Program, state: dict[str, np.ndarray]) -> NativeExecutor:
        return NativeExecutor(program, state)

    def instrumented_executor(self, program: Program, state: dict[str, np.ndarray], instrument: str) -> NativeExecutor:
        return NativeExecutor(program, state, instrument)


register(LLVMBackend())

__all__ = ["LLVMBackend", "warm_up"]

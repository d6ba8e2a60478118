"""The reference backend ("numpy"): every op's NumPy forward, node by node; the oracle the tests
compare every other backend with."""

from __future__ import annotations

import numpy as np

from ...compiler.passes import Pass
from ...core.program import Program
from ..base import Backend, register
from .executor import ReferenceExecutor


class ReferenceBackend(Backend):
    name = "numpy"

    def passes(self) -> list[tuple[str, Pass]]:
        return []

    def executor(self, program: Program, state: dict[str, np.ndarray]) -> ReferenceExecutor:
        return ReferenceExecutor(program, state)

    def instrumented_executor(self, program: Program, state: dict[str, np.ndarray], instrument: str):
        if instrument == "numerics":
            return ReferenceExecutor(program, state, check_numerics=True)
        return super().instrumented_executor(program, state, instrument)


register(ReferenceBackend())

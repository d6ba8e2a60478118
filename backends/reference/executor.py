"""The reference executor: runs each node's NumPy `ref` (compiler/interpret.py), the oracle the
other backends are tested against."""

from __future__ import annotations

import math

import numpy as np

from ...compiler.interpret import evaluate, live_array
from ...core.program import Program
from ...core.types import concrete_shape
from .. import numerics
from ..base import Executor


class ReferenceExecutor(Executor):
    def __init__(self, program: Program, state: dict[str, np.ndarray], check_numerics: bool = False):
        self.program = program
        self.state = state
        self.check_numerics = check_numerics  # debug_numerics: raise at the first NaN/Inf, before any update

    def run(self, feeds: dict[int, np.ndarray], batch: int | None, out=None) -> list[np.ndarray]:
        program = self.program
        values = evaluate(program, feeds, self.state, batch)
        if self.check_numerics:
            value_of = lambda node: values[node.id]  # noqa: E731
            node = numerics.first_non_finite(program.nodes, value_of)
            if node is not None:
                raise numerics.non_finite_error(node, value_of, program)
        outputs = [values[o.id] for o in program.outputs]
        for leaf, new in program.updates:
            np.copyto(live_array(program, self.state, leaf), values[new.id])
        return outputs

    def bytes_needed(self, batch: int) -> int:
        """Every value of the step is alive until it ends."""
        values = [n for n in self.program.nodes if n.inputs and not n.op.multi_output]
        return sum(math.prod(concrete_shape(n.shape, batch)) * n.dtype.itemsize for n in values)

"""The reference executor: runs each node's NumPy `ref` (compiler/interpret.py), the oracle the
other backends are tested against."""

from __future__ import annotations

import math

import numpy as np

from ...compiler.interpret import evaluate
from ...core.errors import GraphError
from ...core.leaves import ParameterOp
from ...core.program import Program
from ...core.types import concrete_shape
from ..base import Executor


class ReferenceExecutor(Executor):
    runs_python = True  # every op's NumPy forward

    def __init__(self, program: Program, state: dict[str, np.ndarray]):
        self.program = program
        self.state = state

    def run(self, feeds: dict[int, np.ndarray], batch: int | None, out=None) -> list[np.ndarray]:
        program = self.program
        values = evaluate(program, feeds, self.state, batch)
        outputs = [values[o.id] for o in program.outputs]
        targets = [
            (program.graph.params[leaf.name] if isinstance(leaf.op, ParameterOp) else self.state[leaf.op.key_name], new)
            for leaf, new in program.updates
        ]
        for (target, _), (leaf, _) in zip(targets, program.updates):  # all checked before any is written
            if not target.flags.writeable:
                raise GraphError(f"{leaf.name} was made read-only, so the step cannot update it; nothing was updated")
        for target, new in targets:
            np.copyto(target, values[new.id])
        return outputs

    def bytes_needed(self, batch: int) -> int:
        """Every value of the step is alive until it ends."""
        values = [n for n in self.program.nodes if n.inputs and not n.op.multi_output]
        return sum(math.prod(concrete_shape(n.shape, batch)) * n.dtype.itemsize for n in values)

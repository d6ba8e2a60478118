"""The NumPy reference executor: runs each node's `ref`, the oracle for the native backend."""

from __future__ import annotations

import numpy as np

from ..compiler.errors import GraphError, ShapeError
from ..compiler.program import Program
from ..compiler.types import concrete_shape
from ..ops.leaves import ConstantOp, InputOp, ParameterOp, StateOp


class ReferenceExecutor:
    def __init__(self, program: Program, state: dict[str, np.ndarray]):
        self.program = program
        self.state = state

    def run(self, feeds: dict[int, np.ndarray], batch: int | None) -> list[np.ndarray]:
        program = self.program
        values: dict[int, np.ndarray] = {}
        for node in program.nodes:
            op = node.op
            if isinstance(op, InputOp):
                value = feeds[node.id]
            elif isinstance(op, ParameterOp):
                value = program.graph.params[node.name]
            elif isinstance(op, StateOp):
                value = self.state[op.key_name]
            elif isinstance(op, ConstantOp):
                value = op.value
            else:
                try:
                    value = op.ref(*(values[i.id] for i in node.inputs))
                except ShapeError as error:
                    raise ShapeError(f"node {node.label}: {error}") from None
                if getattr(op, "multi_output", False):  # a tuple; its ScanOutput-like readers check shapes
                    values[node.id] = value
                    continue
                value = np.asarray(value).astype(node.dtype, copy=False)
            expected = concrete_shape(node.shape, batch)
            if value.shape != expected:
                raise GraphError(
                    f"node {node.label} (op '{op.name}') produced shape {value.shape}, expected {expected}"
                )
            values[node.id] = value
        outputs = [values[o.id] for o in program.outputs]
        for leaf, new in program.updates:
            target = (
                program.graph.params[leaf.name] if isinstance(leaf.op, ParameterOp) else self.state[leaf.op.key_name]
            )
            np.copyto(target, values[new.id])
        return outputs

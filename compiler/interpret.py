"""The meaning of a program: every node's NumPy reference forward, in order. The reference backend
runs programs this way, and loop bodies (scan) are evaluated with it on that backend."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..core.errors import GraphError, ResultShapeError, with_context
from ..core.leaves import BufferOp, ConstantOp, InputOp, ParameterOp, StateOp
from ..core.node import Node
from ..core.program import Program
from ..core.types import concrete_shape


def live_array(program: Program, state: Mapping[str, np.ndarray], leaf: Node) -> np.ndarray:
    """The array a parameter, state-buffer or optimizer-state leaf reads (and its update writes)."""
    if isinstance(leaf.op, ParameterOp):
        return program.graph.params[leaf.name]
    if isinstance(leaf.op, BufferOp):
        return program.graph.state[leaf.name]
    if isinstance(leaf.op, StateOp):
        return state[leaf.op.key_name]
    raise GraphError(f"node {leaf.label} (op '{leaf.op.name}') holds no live array")


def evaluate(
    program: Program, feeds: Mapping[int, np.ndarray], state: Mapping[str, np.ndarray], batch: int | None
) -> dict[int, np.ndarray]:
    """The value of every node of `program` (by node id), from the fed inputs (by node id), the
    graph's parameters and state buffers, and the optimizer `state` (by key). Each value is checked against its
    node's type, so an op whose `ref` breaks its own shape rule is named."""
    values: dict[int, np.ndarray] = {}
    for node in program.nodes:
        op = node.op
        if isinstance(op, InputOp):
            value = feeds[node.id]
        elif isinstance(op, (ParameterOp, BufferOp, StateOp)):
            value = live_array(program, state, node)
        elif isinstance(op, ConstantOp):
            value = op.value
        else:
            try:  # read-only views: a forward writing into its inputs would change feeds, parameters or values
                value = op.ref(*(read_only(values[i.id]) for i in node.inputs))
            except GraphError as error:  # a bad id or value: name the node, keep the error type
                raise with_context(error, f"node {node.where}: ") from None
            if op.multi_output:  # a tuple; the nodes picking its results check their shapes
                values[node.id] = value
                continue
            value = np.asarray(value).astype(node.dtype, copy=False)
        expected = concrete_shape(node.shape, batch)
        if value.shape != expected:
            raise ResultShapeError(value.shape, expected).at(node.where)
        values[node.id] = value
    return values


def read_only(array: np.ndarray) -> np.ndarray:
    """A view of `array` that cannot be written through (what Python forwards of ops receive);
    anything else (the tuple of a multi-output op) as it is."""
    if not isinstance(array, np.ndarray):
        return array
    view = array.view()
    view.flags.writeable = False
    return view

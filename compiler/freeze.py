"""Frozen predictors: what a predictor computes, copied into a graph of its own in which the
parameters and state buffers it reads are constants holding their current values.

Why: a compiled function reads parameters where they live, since the user may write them at
any time (`g.params`); constants it may lay out as its kernels like (the native backend packs
constant weight matrices for its GEMM once). A frozen predictor is a snapshot: later writes to
the graph's parameters, and train steps, do not reach it."""

from __future__ import annotations

from collections.abc import Sequence

from ..core.errors import GraphError
from ..core.graph import Graph
from ..core.leaves import BufferOp, ConstantOp, InputOp, ParameterOp
from ..core.node import Node, recording
from ..core.program import ancestors


def frozen(graph: Graph, outputs: Sequence[Node]) -> tuple[Graph, list[Node]]:
    """A new graph computing `outputs` from the same inputs (by name), with `graph`'s parameters
    and state buffers as constants of their values now; the copies of `outputs`."""
    copy = Graph(seed=graph.seed, dtype=str(graph.dtype))
    made: dict[int, Node] = {}
    with recording(None):  # the copy's nodes are not the user's calls
        for node in ancestors(list(outputs)):
            made[node.id] = _copied(copy, graph, node, [made[i.id] for i in node.inputs])
    return copy, [made[o.id] for o in outputs]


def _copied(copy: Graph, graph: Graph, node: Node, inputs: list[Node]) -> Node:
    op, dtype = node.op, str(node.dtype)
    if isinstance(op, InputOp):
        return copy.input(node.name, node.shape, dtype=dtype)
    if isinstance(op, ParameterOp):
        return copy.constant(graph.params.current(node.name), name=node.name, dtype=dtype)
    if isinstance(op, BufferOp):
        return copy.constant(graph.state.current(node.name), name=node.name, dtype=dtype)
    if isinstance(op, ConstantOp):
        return copy.constant(op.value, name=node.name, dtype=dtype)
    if not node.inputs:
        raise GraphError(f"a frozen predictor cannot hold {node.describe()}")
    made = Node(copy, op, inputs, node.type)
    made.name, made.call = node.name, node.call  # error messages name the user's nodes and calls
    return made

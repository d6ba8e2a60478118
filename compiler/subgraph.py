"""Subgraphs: a loop body as a standalone graph with ordered inputs and outputs.

A body is traced in the user's graph on placeholder nodes, so that it can close over the
user's parameters; `extract` then copies the nodes that depend on the placeholders into a graph
of their own. Nodes that do not depend on them (parameters, values computed before the loop)
become extra inputs, "captured" values, computed once outside the loop."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from ..core.errors import GraphError
from ..core.graph import Graph
from ..core.leaves import ConstantOp
from ..core.node import Node
from ..core.program import Program, ancestors
from .interpret import evaluate
from .passes import PIPELINE, run_pipeline


class Body:
    """A graph whose inputs are named in0, in1, ... in order, and its output nodes."""

    def __init__(self, graph: Graph, inputs: list[Node], outputs: list[Node]):
        self.graph, self.inputs, self.outputs = graph, inputs, outputs
        self.nodes = ancestors(outputs)
        position = {n.id: i for i, n in enumerate(self.nodes)}
        inputs_at = {n.id: i for i, n in enumerate(inputs)}
        self.key = (
            tuple(
                (inputs_at.get(n.id), n.op.key(), tuple(position[i.id] for i in n.inputs), n.shape, n.dtype.str)
                for n in self.nodes
            ),
            tuple(position[o.id] for o in outputs),
            len(inputs),
        )
        uncomputable = [n for n in self.nodes if not n.inputs and n.op.name not in ("input", "constant")]
        if uncomputable:
            raise GraphError(f"a loop body cannot hold {uncomputable[0].describe()}")

    @property
    def program(self) -> Program:
        """The body as a program of its own, before any pass."""
        return Program(graph=self.graph, outputs=tuple(self.outputs))

    @functools.cached_property
    def reference_program(self) -> Program:
        return run_pipeline(self.program, PIPELINE)

    def inline(self, graph: Graph, values: Sequence[Node]) -> list[Node]:
        """The body's outputs rebuilt in `graph` on the nodes `values` (one per input)."""
        mapping = {n.id: v for n, v in zip(self.inputs, values)}
        for node in self.nodes:
            if node.id in mapping:
                continue
            if not node.inputs:  # a constant
                mapping[node.id] = graph.constant(node.op.value, dtype=str(node.dtype))
            else:
                mapping[node.id] = Node(graph, node.op, [mapping[i.id] for i in node.inputs], node.type)
        return [mapping[o.id] for o in self.outputs]

    def run_reference(self, values: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The outputs for these input values, with every op's NumPy forward."""
        feeds, batch = {}, None
        for node, value in zip(self.inputs, values):
            feeds[node.id] = value
            for dim, size in zip(node.shape, np.shape(value)):
                batch = size if dim is None else batch
        program = self.reference_program
        computed = evaluate(program, feeds, {}, batch)
        return [computed[o.id] for o in program.outputs]


def extract(graph: Graph, placeholders: list[Node], outputs: list[Node]) -> tuple[Body, list[Node]]:
    """The body computing `outputs` from `placeholders`, and the outer nodes it captures (its
    inputs after the placeholders). Scalar constants are copied in, so loops keep them inline."""
    slot_ids = {p.id for p in placeholders}
    variant: set[int] = set()
    for node in ancestors(outputs):
        if node.id in slot_ids or any(i.id in variant for i in node.inputs):
            variant.add(node.id)
    body = Graph(dtype=graph.dtype)
    mapping: dict[int, Node] = {}
    inputs: list[Node] = []
    captured: list[Node] = []

    def new_input(node: Node) -> Node:
        inputs.append(body.input(f"in{len(inputs)}", node.shape, str(node.dtype)))
        return inputs[-1]

    for p in placeholders:
        mapping[p.id] = new_input(p)

    def copy(node: Node) -> Node:
        if node.id in mapping:
            return mapping[node.id]
        if node.id not in variant:
            if isinstance(node.op, ConstantOp):
                new = body.constant(node.op.value, dtype=str(node.dtype))
            else:
                captured.append(node)
                new = new_input(node)
        else:
            new = Node(body, node.op, [copy(i) for i in node.inputs], node.type)
        mapping[node.id] = new
        return new

    body_outputs = [copy(o) for o in outputs]
    return Body(body, inputs, body_outputs), captured

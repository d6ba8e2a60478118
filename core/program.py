"""What gets compiled: the outputs, the training spec, and (after the passes) the node list."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import networkx as nx
import numpy as np

from .graph import Graph
from .leaves import StateOp
from .node import Node


@dataclass(frozen=True)
class Program:
    graph: Graph
    outputs: tuple[Node, ...]  # returned values; the loss comes first when there is one
    loss: Node | None = None
    wrt: tuple[Node, ...] = ()  # trained parameters
    optimizer: Any = None
    training: bool = False  # the mode mode-dependent ops compute in (dropout, batch norm)
    grads: tuple[Node, ...] = ()  # d loss / d wrt, filled by autodiff
    updates: tuple[tuple[Node, Node], ...] = ()  # (parameter, optimizer state or buffer leaf, its new value)
    nodes: tuple[Node, ...] = ()  # every node needed, in execution order
    kernels: tuple = ()  # fusion's partition of the nodes (native backend)
    schedule: Any = None  # kernel order and memory plan (native backend)

    def with_(self, **changes: Any) -> Program:
        return replace(self, **changes)

    @property
    def roots(self) -> list[Node]:
        """Values the program must produce: outputs and new values of updated leaves."""
        return list(self.outputs) + [new for _, new in self.updates]

    def remapped(self, mapping: dict[int, Node]) -> Program:
        """The program with its outputs, loss, gradients and updates read through `mapping` (node
        id -> the node standing in for it, as a rewriting pass builds it; gradients it lacks stay),
        its nodes those they reach."""

        def remap(n: Node) -> Node:
            return mapping[n.id]

        return self.with_(
            outputs=tuple(map(remap, self.outputs)),
            loss=remap(self.loss) if self.loss is not None else None,
            grads=tuple(mapping.get(g.id, g) for g in self.grads),
            updates=tuple((leaf, remap(new)) for leaf, new in self.updates),
            nodes=tuple(ancestors([remap(r) for r in self.roots])),
        )

    def leaves(self, op_type: type) -> list[Node]:
        return [n for n in self.nodes if isinstance(n.op, op_type)]

    def initial_state(self) -> dict[str, np.ndarray]:
        """Fresh optimizer state buffers (moments, beta powers, lr) by key, at their initial values."""
        return {n.op.key_name: np.full(n.shape, n.op.init, n.dtype) for n in self.leaves(StateOp)}


def ancestors(outputs: Sequence[Node]) -> list[Node]:
    """Every node the outputs depend on, in topological (creation) order."""
    seen: dict[int, Node] = {}
    stack = list(outputs)
    while stack:
        node = stack.pop()
        if node.id not in seen:
            seen[node.id] = node
            stack.extend(node.inputs)
    return sorted(seen.values(), key=lambda n: n.id)


def to_networkx(nodes: tuple[Node, ...] | list[Node]) -> nx.DiGraph:
    """The data-flow graph: an edge from each input to its consumer."""
    dag = nx.DiGraph()
    for node in nodes:
        dag.add_node(node.id, node=node)
        for i in node.inputs:
            dag.add_edge(i.id, node.id)
    return dag


def format_program(program: Program) -> str:
    """One line per node, the way DRUG_DEBUG prints it."""
    lines = [f"  {n!r}" for n in program.nodes]
    for w, g in zip(program.wrt, program.grads):
        lines.append(f"  d {program.loss.label} / d {w.label} = {g.label}")
    for leaf, new in program.updates:
        lines.append(f"  {leaf.label} <- {new.label}")
    lines.append("  return " + ", ".join(o.label for o in program.outputs))
    return "\n".join(lines)

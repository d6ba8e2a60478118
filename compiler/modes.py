"""Training and inference: ops whose meaning depends on the mode (dropout, batch norm) are replaced
by what they compute in the program's mode, before autodiff sees the graph. The same graph thus
compiles to a train step (dropout active, batch statistics, running statistics updated) and to a
predictor (dropout off, running statistics read)."""

from __future__ import annotations

from ..core.errors import GraphError
from ..core.node import Node
from ..core.program import Program, ancestors


def specialize_modes(program: Program) -> Program:
    """The pass: every mode-dependent node rebuilt by its op's `specialize`, the nodes reading it
    rebuilt on the new value, and the state-buffer updates of the mode appended to the program's."""
    nodes = ancestors(program.roots)
    if not any(n.op.mode_dependent for n in nodes):
        return program
    mapping: dict[int, Node] = {}
    updates: dict[int, tuple[Node, Node]] = {}
    for node in nodes:
        inputs = [mapping[i.id] for i in node.inputs]
        if node.op.mode_dependent:
            specialized = node.op.specialize(inputs, program.training)
            if specialized.value.type != node.type:
                raise GraphError(
                    f"node {node.label} (op '{node.op.name}') specializes to {specialized.value.type}, not {node.type}"
                )
            for leaf, new in specialized.updates:
                if leaf.id in updates:
                    raise GraphError(f"state buffer '{leaf.label}' is updated by two nodes in one step")
                updates[leaf.id] = (leaf, new)
            mapping[node.id] = specialized.value
        elif any(a is not b for a, b in zip(inputs, node.inputs)):
            mapping[node.id] = Node(node.graph, node.op, inputs, node.type)
        else:
            mapping[node.id] = node
    return program.with_(
        outputs=tuple(mapping[o.id] for o in program.outputs),
        loss=mapping[program.loss.id] if program.loss is not None else None,
        updates=program.updates + tuple((leaf, mapping.get(new.id, new)) for leaf, new in updates.values()),
    )

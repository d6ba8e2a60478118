"""Simplification: algebraic identities, constant folding of small values, common-subexpression
elimination and (through the rebuild) dead-node removal. Nodes are immutable, so the pass builds
new ones and remaps the program."""

from __future__ import annotations

import math

import numpy as np

from ..core.leaves import ConstantOp
from ..core.node import Node, apply
from ..core.program import Program, ancestors
from ..ops import elementwise as ew
from ..ops import shape as sh
from ..ops.elementwise import Add, OnesLike
from ..ops.linalg import ContractLeading, MatMul
from ..ops.shape import AssembleSlices, SliceGrad, disjoint

FOLD_LIMIT = 64  # fold constants up to this many elements; larger ones stay computed
STACK_MIN = 4  # products in a sum that become one product of their stacked operands


def _scalar_constant(node: Node) -> float | None:

    if isinstance(node.op, ConstantOp) and node.op.value.size == 1:
        return float(node.op.value.reshape(()))
    return None


def _identity(node: Node, inputs: list[Node]) -> Node | list[Node] | None:
    """A simpler equivalent of `node` over the (already simplified) inputs, or None.
    A list means: the same op over fewer inputs."""

    op = node.op
    if isinstance(op, (ew.Mul, ew.Add)):
        neutral = 1.0 if isinstance(op, ew.Mul) else 0.0
        kept = [i for i in inputs if _scalar_constant(i) != neutral]
        if len(kept) < len(inputs) and kept:
            return kept[0] if len(kept) == 1 else kept
    if isinstance(op, (ew.Sub,)) and _scalar_constant(inputs[1]) == 0.0:
        return inputs[0]
    if isinstance(op, ew.Div) and _scalar_constant(inputs[1]) == 1.0:
        return inputs[0]
    if isinstance(op, ew.Neg) and isinstance(inputs[0].op, ew.Neg):
        return inputs[0].inputs[0]
    if isinstance(op, (sh.BroadcastLike, sh.Reshape, sh.SumTo)) and inputs[0].shape == node.shape:
        return inputs[0]
    if isinstance(op, sh.Transpose) and op.perm == tuple(range(len(op.perm))):
        return inputs[0]
    return None


def _assemble_slice_grads(node: Node, inputs: list[Node]) -> list[Node]:
    """In a sum, gradients of disjoint slices of one tensor become one AssembleSlices node,
    so an unrolled RNN does not zero and add a full-size buffer per time step."""

    groups: list[list[Node]] = []
    rest: list[Node] = []
    for x in inputs:
        if isinstance(x.op, SliceGrad):
            for group in groups:
                same = group[0].op.in_shape == x.op.in_shape
                if same and all(disjoint(x.op.index, y.op.index, x.op.in_shape) for y in group):
                    group.append(x)
                    break
            else:
                groups.append([x])
        else:
            rest.append(x)
    if all(len(group) < 2 for group in groups):
        return inputs
    out = list(rest)
    for group in groups:
        if len(group) == 1:
            out.append(group[0])
            continue
        op = AssembleSlices(tuple(y.op.index for y in group), group[0].op.in_shape)
        out.append(Node(node.graph, op, [y.inputs[0] for y in group], group[0].type))
    return out


def _weight_gradient(x: Node) -> tuple[Node, Node] | None:
    """(a, g) if x is a^T @ g for matrices a (k, m) and g (k, n): a weight's gradient from one use."""
    if not isinstance(x.op, MatMul) or x.ndim != 2:
        return None
    at, g = x.inputs
    if not isinstance(at.op, sh.Transpose) or at.op.perm != (1, 0) or g.ndim != 2:
        return None
    return at.inputs[0], g


def _stacked_products(inputs: list[Node]) -> list[Node]:
    """In a sum, STACK_MIN or more products a_i^T @ g_i of like shapes (a weight's gradients from
    its uses at each time step of an unrolled RNN) become one product of the stacked operands,
    contract_leading(stack(a), stack(g)): one GEMM with the steps' rows as its inner dimension,
    instead of one short GEMM per step, each writing a full-size result the sum reads back."""
    groups: dict[tuple, list[tuple[Node, tuple[Node, Node]]]] = {}
    rest: list[Node] = []
    for x in inputs:
        pair = _weight_gradient(x)
        if pair is None:
            rest.append(x)
        else:
            groups.setdefault((pair[0].shape, pair[1].shape, x.dtype), []).append((x, pair))
    if all(len(members) < STACK_MIN for members in groups.values()):
        return inputs
    out = rest
    for members in groups.values():
        if len(members) < STACK_MIN:
            out += [x for x, _ in members]
            continue
        a, g = (_stack([pair[side] for _, pair in members]) for side in (0, 1))
        out.append(apply(ContractLeading(), a, g))
    return out


def _stack(xs: list[Node]) -> Node:
    """Matrices (k, m) side by side as (k, len(xs), m): a copy each, no more."""
    rows = [apply(sh.Reshape((x.shape[0], 1, x.shape[1]), x.shape), x) for x in xs]
    return apply(sh.Concat(1), *rows)


def _foldable(node: Node, inputs: list[Node]) -> bool:

    if None in node.shape or math.prod(node.shape) > FOLD_LIMIT or not node.inputs:
        return False
    if node.op.multi_output:
        return False

    return isinstance(node.op, OnesLike) or all(isinstance(i.op, ConstantOp) for i in inputs)


def simplify(program: Program) -> Program:

    mapping: dict[int, Node] = {}
    seen: dict[tuple, Node] = {}
    graph = program.graph
    for node in ancestors(program.roots):
        inputs = [mapping[i.id] for i in node.inputs]
        new = node
        if node.inputs:
            if isinstance(node.op, Add):
                inputs = _stacked_products(_assemble_slice_grads(node, inputs))
                if len(inputs) == 1:
                    mapping[node.id] = inputs[0]
                    continue
            simpler = _identity(node, inputs)
            if isinstance(simpler, list):
                inputs, simpler = simpler, None
            if simpler is not None and simpler.type == node.type:
                new = simpler
            elif _foldable(node, inputs):
                if inputs and all(isinstance(i.op, ConstantOp) for i in inputs):
                    value = node.op.ref(*(i.op.value for i in inputs))
                else:
                    value = np.ones(node.shape, node.dtype)
                new = graph.constant(np.asarray(value, node.dtype), dtype=node.dtype)
            elif any(a is not b for a, b in zip(inputs, node.inputs)) or len(inputs) != len(node.inputs):
                new = Node(graph, node.op, inputs, node.type)
                new.call = node.call  # the same computation: profiles and errors name its origin
        if isinstance(new.op, ConstantOp) and new.op.value.size <= FOLD_LIMIT:
            key = ("constant", new.dtype.str, new.shape, new.op.value.tobytes())
        elif new.inputs:
            key = (new.op.key(), tuple(i.id for i in new.inputs))
        else:
            key = ("leaf", new.id)
        new = seen.setdefault(key, new)
        mapping[node.id] = new

    return program.remapped(mapping)

"""Convolution epilogues: conv2d, a bias per output channel and a relu become one `conv2d_bias`
node where the target's convolution kernel can finish each tile it stores (add the bias, apply
the relu) while the tile is in registers. Unfused, the bias and the relu are a loop of their own
that reads and writes the whole output once more.

A relu's gradient (relu_grad) reads the relu's input; it reads the relu's output instead, which
is positive exactly where the input is, so that nothing needs the sum before the relu."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.node import Node
from ..core.program import Program
from ..core.types import TensorType
from ..ops.conv import Conv2D, Conv2DBias
from ..ops.elementwise import Add, Relu, ReluGrad
from ..ops.shape import Reshape
from .target import Target


@dataclass(frozen=True)
class _Epilogue:
    """One fusion found: conv2d `conv`, then `add` of the channel bias `bias_4d` ((O, 1, 1) or (1,
    O, 1, 1)), then `relu` if any; `last` is the node the fused one replaces."""

    conv: Node
    add: Node
    bias_4d: Node
    relu: Node | None

    @property
    def last(self) -> Node:
        return self.relu if self.relu is not None else self.add


def _readers(program: Program) -> dict[int, list[Node]]:
    readers: dict[int, list[Node]] = {}
    for node in program.nodes:
        for i in node.inputs:
            readers.setdefault(i.id, []).append(node)
    return readers


def _match(conv: Node, readers: dict[int, list[Node]], roots: set[int], order: dict[int, int]) -> _Epilogue | None:
    """The epilogue after `conv`, if its value is read only by an add of a channel bias."""
    users = readers.get(conv.id, [])
    if conv.id in roots or len(users) != 1:
        return None
    add = users[0]
    if not isinstance(add.op, Add) or len(add.inputs) != 2 or add.type != conv.type:
        return None
    (bias_4d,) = [i for i in add.inputs if i is not conv] or [None]
    channels = conv.shape[1]
    if bias_4d is None or bias_4d.dtype != conv.dtype or bias_4d.shape not in ((channels, 1, 1), (1, channels, 1, 1)):
        return None
    users = readers.get(add.id, [])
    relus = [u for u in users if isinstance(u.op, Relu)]
    if add.id in roots or len(relus) != 1:
        return _Epilogue(conv, add, bias_4d, None)
    (relu,) = relus

    # every other reader must be a relu_grad taking the add as the relu's input, and come after
    # the relu (it will read the relu's output)
    def reads_relu_input(u: Node) -> bool:
        return isinstance(u.op, ReluGrad) and u.inputs == (u.inputs[0], add) and order[u.id] > order[relu.id]

    if not all(u is relu or reads_relu_input(u) for u in users):
        return _Epilogue(conv, add, bias_4d, None)
    return _Epilogue(conv, add, bias_4d, relu)


def _bias_vector(bias_4d: Node) -> Node:
    """The bias as a vector of the output channels (the reshape's source when it is one)."""
    channels = max(bias_4d.shape)
    source = bias_4d.inputs[0] if isinstance(bias_4d.op, Reshape) else None
    if source is not None and source.shape == (channels,):
        return source
    return Node(bias_4d.graph, Reshape((channels,), bias_4d.shape), [bias_4d], TensorType((channels,), bias_4d.dtype))


@dataclass(frozen=True)
class FuseConvEpilogues:
    """The pass for a target: conv2d + channel bias (+ relu) -> conv2d_bias where the target
    has a kernel for the result."""

    target: Target

    def __call__(self, program: Program) -> Program:
        readers, roots = _readers(program), {r.id for r in program.roots}
        order = {n.id: i for i, n in enumerate(program.nodes)}
        found: dict[int, _Epilogue] = {}  # by the id of the node each replaces
        for node in program.nodes:
            if isinstance(node.op, Conv2D):
                epilogue = _match(node, readers, roots, order)
                if epilogue is not None and self.target.has_kernel(self._fused(epilogue, node.inputs, None)):
                    found[epilogue.last.id] = epilogue
        if not found:
            return program
        relu_inputs = {e.add.id: e.relu.id for e in found.values() if e.relu is not None}
        mapping: dict[int, Node] = {}
        for node in program.nodes:
            inputs = [mapping[i.id] for i in node.inputs]
            if node.id in found:
                epilogue = found[node.id]
                x, w = (mapping[i.id] for i in epilogue.conv.inputs)
                new = self._fused(epilogue, (x, w), mapping[epilogue.bias_4d.id])
            elif isinstance(node.op, ReluGrad) and node.inputs[1].id in relu_inputs:
                new = Node(program.graph, node.op, [inputs[0], mapping[relu_inputs[node.inputs[1].id]]], node.type)
            elif any(a is not b for a, b in zip(inputs, node.inputs)):
                new = Node(program.graph, node.op, inputs, node.type)
            else:
                new = node
            if new is not node:
                new.call = node.call  # profiles and errors name what the user wrote
            mapping[node.id] = new

        return program.remapped(mapping)

    @staticmethod
    def _fused(epilogue: _Epilogue, conv_inputs, bias_4d: Node | None) -> Node:
        """The conv2d_bias node (with the matched nodes' own inputs and bias when `bias_4d` is None:
        a candidate to ask the target about, never part of the program)."""
        conv = epilogue.conv
        op = Conv2DBias(**conv.op.geometry, activation="relu" if epilogue.relu is not None else None)
        bias = _bias_vector(epilogue.bias_4d if bias_4d is None else bias_4d)
        return Node(conv.graph, op, [*conv_inputs, bias], epilogue.last.type)

"""Epilogues: conv2d, a bias per output channel and a relu become one `conv2d_bias` node where
the target's convolution kernel can finish each tile it stores (add the bias, apply the relu)
while the tile is in registers; a matrix product by a matrix, a bias per column and a relu
become one `matmul_bias` where each thread can finish the block of the product it computed
while the block is in its cache. Unfused, the bias and the relu are a loop of their own that
reads and writes the whole output once more (on one thread, the blocks another thread wrote
come from that thread's cache).

A relu's gradient (relu_grad) reads the relu's input; it reads the relu's output instead, which
is positive exactly where the input is, so that nothing needs the sum before the relu."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.node import Call, Node
from ..core.program import Program
from ..core.types import TensorType
from ..ops.conv import Conv2D, Conv2DBias
from ..ops.elementwise import Add, Relu, ReluGrad
from ..ops.linalg import MatMul, MatMulBias
from ..ops.shape import Reshape
from .target import Target


@dataclass(frozen=True)
class _Epilogue:
    """One fusion found: conv2d or matmul `product`, then `add` of the bias `bias` (one per channel:
    (O, 1, 1) or (1, O, 1, 1); one per column: (n,) or (1, ..., n)), then `relu` if any; `last`
    is the node the fused one replaces."""

    product: Node
    add: Node
    bias: Node
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


def _bias_shapes(product: Node) -> tuple[tuple, ...] | None:
    """The shapes of a bias `product`'s fused node adds, None if it has none."""
    if isinstance(product.op, Conv2D):
        channels = product.shape[1]
        return (channels, 1, 1), (1, channels, 1, 1)
    if isinstance(product.op, MatMul) and product.inputs[1].ndim == 2:
        columns = product.shape[-1]
        return tuple((1,) * ones + (columns,) for ones in range(product.ndim))
    return None


def _match(product: Node, readers: dict[int, list[Node]], roots: set[int], order: dict[int, int]) -> _Epilogue | None:
    """The epilogue after `product`, if its value is read only by an add of a bias."""
    users = readers.get(product.id, [])
    shapes = _bias_shapes(product)
    if shapes is None or product.id in roots or len(users) != 1:
        return None
    add = users[0]
    if not isinstance(add.op, Add) or len(add.inputs) != 2 or add.type != product.type:
        return None
    (bias,) = [i for i in add.inputs if i is not product] or [None]
    if bias is None or bias.dtype != product.dtype or bias.shape not in shapes:
        return None
    users = readers.get(add.id, [])
    relus = [u for u in users if isinstance(u.op, Relu)]
    if add.id in roots or len(relus) != 1:
        return _Epilogue(product, add, bias, None)
    (relu,) = relus

    # every other reader must be a relu_grad taking the add as the relu's input, and come after
    # the relu (it will read the relu's output)
    def reads_relu_input(u: Node) -> bool:
        return isinstance(u.op, ReluGrad) and u.inputs == (u.inputs[0], add) and order[u.id] > order[relu.id]

    if not all(u is relu or reads_relu_input(u) for u in users):
        return _Epilogue(product, add, bias, None)
    return _Epilogue(product, add, bias, relu)


def _bias_vector(bias: Node) -> Node:
    """The bias as a vector (the reshape's source when it is one)."""
    size = max(bias.shape)
    if bias.shape == (size,):
        return bias
    source = bias.inputs[0] if isinstance(bias.op, Reshape) else None
    if source is not None and source.shape == (size,):
        return source
    return Node(bias.graph, Reshape((size,), bias.shape), [bias], TensorType((size,), bias.dtype))


def _fusion_call(epilogue: _Epilogue, call: Call | None) -> Call | None:
    """What profiles and errors say made the fused node: the layer that made what it replaces, or
    the compiler's "gradient of ..." call, else the nodes it replaces by their labels (the fused
    node's own label names no node of the user's graph, and theirs are gone with them)."""
    if call is not None and call.kind != "op":
        return call
    parts = [epilogue.product, epilogue.add] + ([epilogue.relu] if epilogue.relu is not None else [])
    return Call("fusion of " + ", ".join(n.label for n in parts), "fusion")


@dataclass(frozen=True)
class FuseEpilogues:
    """The pass for a target: conv2d + channel bias (+ relu) -> conv2d_bias, matmul + column bias
    (+ relu) -> matmul_bias, where the target has a kernel for the result."""

    target: Target

    def __call__(self, program: Program) -> Program:
        readers, roots = _readers(program), {r.id for r in program.roots}
        order = {n.id: i for i, n in enumerate(program.nodes)}
        found: dict[int, _Epilogue] = {}  # by the id of the node each replaces
        for node in program.nodes:
            epilogue = _match(node, readers, roots, order)
            if epilogue is not None and self.target.has_kernel(self._fused(epilogue, node.inputs, None)):
                found[epilogue.last.id] = epilogue
        if not found:
            return program
        relu_inputs = {e.add.id: e.relu.id for e in found.values() if e.relu is not None}
        mapping: dict[int, Node] = {}
        for node in program.nodes:
            inputs, call = [mapping[i.id] for i in node.inputs], node.call
            if node.id in found:
                epilogue = found[node.id]
                x, w = (mapping[i.id] for i in epilogue.product.inputs)
                new = self._fused(epilogue, (x, w), mapping[epilogue.bias.id])
                call = _fusion_call(epilogue, node.call)
            elif isinstance(node.op, ReluGrad) and node.inputs[1].id in relu_inputs:
                new = Node(program.graph, node.op, [inputs[0], mapping[relu_inputs[node.inputs[1].id]]], node.type)
            elif any(a is not b for a, b in zip(inputs, node.inputs)):
                new = Node(program.graph, node.op, inputs, node.type)
            else:
                new = node
            if new is not node:  # profiles, errors and a library's outputs name what the user wrote
                new.call, new.name = call, node.name
            mapping[node.id] = new

        return program.remapped(mapping)

    @staticmethod
    def _fused(epilogue: _Epilogue, product_inputs, bias: Node | None) -> Node:
        """The conv2d_bias or matmul_bias node (with the matched nodes' own inputs and bias when
        `bias` is None: a candidate to ask the target about, never part of the program)."""
        product = epilogue.product
        activation = "relu" if epilogue.relu is not None else None
        if isinstance(product.op, Conv2D):
            op = Conv2DBias(**product.op.geometry, activation=activation)
        else:
            op = MatMulBias(activation=activation)
        bias = _bias_vector(epilogue.bias if bias is None else bias)
        return Node(product.graph, op, [*product_inputs, bias], epilogue.last.type)

"""Elementwise ops exported through their scalar rules (compiler/scalar.py): ONNX is one more
renderer of the ScalarBuilder primitives, with whole tensors as values (ONNX's elementwise ops
broadcast as NumPy does, so a rule written for one element computes every element). Any op
with a rule, traced @dg.elementwise functions included, exports without an entry of its own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..compiler.scalar import scalar_rule_of
from ..core.errors import GraphError
from ..core.node import Node
from ..core.op import Op
from ..core.types import BOOL, Shape, broadcast_shapes

COMPARISONS = {"<": "Less", "<=": "LessOrEqual", ">": "Greater", ">=": "GreaterOrEqual", "==": "Equal"}


@dataclass(frozen=True)
class Tensor:
    """An ONNX value, its drug shape (None: the batch) and dtype."""

    name: str
    shape: Shape
    dtype: np.dtype


class OnnxScalars:
    """The ScalarBuilder protocol writing ONNX nodes into an EmitContext (emitters.py)."""

    def __init__(self, ctx, node: Node):
        self.ctx = ctx
        self.node = node

    @property
    def op(self) -> Op:
        return self.node.op

    def _add(self, op_type: str, *xs: Tensor, dtype: np.dtype | None = None) -> Tensor:
        """One ONNX node over `xs`; its result has the last operand's dtype unless `dtype` says
        (Where's condition comes first)."""
        shape = broadcast_shapes([x.shape for x in xs])
        return Tensor(self.ctx.add(op_type, [x.name for x in xs]), shape, dtype or xs[-1].dtype)

    def const(self, value: float, dtype: np.dtype | None = None) -> Tensor:
        dtype = np.dtype(dtype or self.node.dtype)
        return Tensor(self.ctx.const(np.asarray(value, dtype), "c"), (), dtype)

    def add(self, x, y):
        return self._add("Add", x, y)

    def sub(self, x, y):
        return self._add("Sub", x, y)

    def mul(self, x, y):
        return self._add("Mul", x, y)

    def div(self, x, y):
        return self._add("Div", x, y)

    def neg(self, x):
        return self._add("Neg", x)

    def maximum(self, x, y):
        return self._add("Max", x, y)

    def minimum(self, x, y):
        return self._add("Min", x, y)

    def sqrt(self, x):
        return self._add("Sqrt", x)

    def exp(self, x):
        return self._add("Exp", x)

    def log(self, x):
        return self._add("Log", x)

    def tanh(self, x):
        return self._add("Tanh", x)

    def sigmoid(self, x):
        return self._add("Sigmoid", x)

    def abs(self, x):
        return self._add("Abs", x)

    def expm1(self, x):
        return self._add("Sub", self._add("Exp", x), self.const(1.0, x.dtype))

    def erf(self, x):
        return self._add("Erf", x)

    def sin(self, x):
        return self._add("Sin", x)

    def cos(self, x):
        return self._add("Cos", x)

    def pow(self, x, y):
        return self._add("Pow", x, y)

    def logical_and(self, x, y):
        return self._add("And", x, y, dtype=BOOL)

    def logical_or(self, x, y):
        return self._add("Or", x, y, dtype=BOOL)

    def logical_xor(self, x, y):
        return self._add("Xor", x, y, dtype=BOOL)

    def logical_not(self, x):
        return self._add("Not", x, dtype=BOOL)

    def cast(self, x, source: np.dtype, target: np.dtype):
        return Tensor(self.ctx.add("Cast", [x.name], to=self.ctx.elem_type(target)), x.shape, np.dtype(target))

    def compare(self, symbol: str, x, y):
        if symbol == "!=":
            return self._add("Not", self._add("Equal", x, y, dtype=BOOL), dtype=BOOL)
        return self._add(COMPARISONS[symbol], x, y, dtype=BOOL)

    def select(self, condition, x, y):
        return self._add("Where", condition, x, y)

    def count(self, dims: Sequence[int | None]) -> Tensor:
        static = float(np.prod([d for d in dims if d is not None]))
        if None not in dims:
            return self.const(static)
        batched = next(i for i in self.node.inputs if None in i.shape)
        size = self.ctx.add("Shape", [self.ctx.value(batched)])
        batch = self.ctx.add("Gather", [size, self.ctx.ints([batched.shape.index(None)], "batch_axis")])
        batch = self.ctx.add("Cast", [batch], to=self.ctx.elem_type(self.node.dtype))
        return self._add("Mul", Tensor(self.ctx.add("Squeeze", [batch]), (), self.node.dtype), self.const(static))


def emit_by_rule(ctx, node: Node) -> str | None:
    """The node written through its op's scalar rule, or None when its op has none."""
    rule = scalar_rule_of(node.op)
    if rule is None:
        return None
    builder = OnnxScalars(ctx, node)
    inputs = [Tensor(ctx.value(i), i.shape, i.dtype) for i in node.inputs]
    result = rule(builder, *inputs)
    if not isinstance(result, Tensor):
        raise GraphError(f"node {node.label} (op '{node.op.name}'): its scalar rule returned {result!r}")
    for i in node.inputs:  # a rule may ignore inputs (ones_like) or return a constant: broadcast back
        if result.shape != node.shape and i.shape != result.shape:
            shape = ctx.add("Shape", [ctx.value(i)])
            result = Tensor(
                ctx.add("Expand", [result.name, shape]), broadcast_shapes([result.shape, i.shape]), result.dtype
            )
    return result.name

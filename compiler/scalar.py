"""Elementwise ops as scalar code: each op's rule for one element, written with a small set of
primitive operations (the ScalarBuilder protocol). This is the fused-kernel description every
native backend shares: the LLVM backend builds the primitives as IR inside its loops, another
backend (OpenCL C, PTX) renders the same rules its own way. Traced functions (@dg.elementwise)
use the same primitives.

    @scalar_rule(ew.Tanh)
    def _tanh(b, x):          # b: a backend's ScalarBuilder; b.op is the op being computed
        return b.tanh(x)

An op without a rule is not fused: a backend runs it as a kernel of its own, or not at all."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..core.node import Node
from ..core.op import Op, registered_for
from ..ops import elementwise as ew
from ..ops.reduce import Count
from ..ops.shape import BroadcastLike
from . import tracing
from .traced import Traced

Value = Any  # a backend's scalar value (an IR value, a C expression, ...)


class ScalarBuilder(Protocol):
    """The primitives a scalar rule may use; floats of the node's dtype unless noted."""

    node: Node  # the node being computed (its static shapes, its op)

    @property
    def op(self) -> Op: ...

    def const(self, value: float) -> Value: ...
    def add(self, x: Value, y: Value) -> Value: ...
    def sub(self, x: Value, y: Value) -> Value: ...
    def mul(self, x: Value, y: Value) -> Value: ...
    def div(self, x: Value, y: Value) -> Value: ...
    def neg(self, x: Value) -> Value: ...
    def maximum(self, x: Value, y: Value) -> Value:
        """NaN-propagating, like np.maximum."""

    def minimum(self, x: Value, y: Value) -> Value: ...
    def sqrt(self, x: Value) -> Value: ...
    def exp(self, x: Value) -> Value: ...
    def log(self, x: Value) -> Value: ...
    def tanh(self, x: Value) -> Value: ...
    def sigmoid(self, x: Value) -> Value: ...
    def cos(self, x: Value) -> Value: ...
    def sin(self, x: Value) -> Value: ...
    def floor(self, x: Value) -> Value: ...
    def compare(self, symbol: str, x: Value, y: Value) -> Value:
        """A condition (<, <=, >, >=, ==, !=) with NumPy's NaN semantics: only != holds for NaN."""

    def select(self, condition: Value, x: Value, y: Value) -> Value: ...
    def count(self, dims: Sequence[int | None]) -> Value:
        """The number of elements over `dims` (None: the run-time batch), as a float."""


ScalarRule = Callable[..., Value]  # (builder, *input values) -> value
_RULES: dict[type[Op], ScalarRule] = {}


def scalar_rule(*op_classes: type[Op]) -> Callable[[ScalarRule], ScalarRule]:
    """Decorator: the rule computing one element of these op classes' output."""

    def register(rule: ScalarRule) -> ScalarRule:
        for op_class in op_classes:
            _RULES[op_class] = rule
        return rule

    return register


def scalar_rule_of(op: Op | type[Op]) -> ScalarRule | None:
    """The op's (or op class's) rule, found along its class's MRO (a subclass computes like its
    parent unless it registers a rule of its own)."""
    return registered_for(_RULES, op)


@scalar_rule(ew.Add)
def _add(b, *xs):
    return functools.reduce(b.add, xs)


@scalar_rule(ew.Mul)
def _mul(b, *xs):
    return functools.reduce(b.mul, xs)


@scalar_rule(ew.Sub)
def _sub(b, x, y):
    return b.sub(x, y)


@scalar_rule(ew.Div)
def _div(b, x, y):
    return b.div(x, y)


@scalar_rule(ew.Neg)
def _neg(b, x):
    return b.neg(x)


@scalar_rule(ew.Relu)
def _relu(b, x):
    return b.maximum(x, b.const(0.0))  # NaN-propagating, like np.maximum


@scalar_rule(ew.ReluGrad)
def _relu_grad(b, g, x):
    """g where x > 0, else 0 (a NaN x gives 0, like np.where(x > 0, g, 0))."""
    return b.select(b.compare(">", x, b.const(0.0)), g, b.const(0.0))


@scalar_rule(ew.Sigmoid)
def _sigmoid(b, x):
    return b.sigmoid(x)


@scalar_rule(ew.Tanh)
def _tanh(b, x):
    return b.tanh(x)


@scalar_rule(ew.Exp)
def _exp(b, x):
    return b.exp(x)


@scalar_rule(ew.Log)
def _log(b, x):
    return b.log(x)


@scalar_rule(ew.Sqrt)
def _sqrt(b, x):
    return b.sqrt(x)


@scalar_rule(ew.Equal)
def _equal(b, x, y):
    return b.select(b.compare("==", x, y), b.const(1.0), b.const(0.0))


@scalar_rule(ew.OnesLike)
def _ones_like(b, x):
    return b.const(1.0)


@scalar_rule(BroadcastLike)
def _broadcast_like(b, x, like):
    return x  # the loop reads x broadcast over the domain


@scalar_rule(Count)
def _count(b, x):
    """The element count over the reduced axes at run time (the batch may be among them)."""
    shape = b.node.inputs[0].shape
    return b.count([shape[a] for a in b.op.axes])


@scalar_rule(Traced)
def _traced(b, *xs):
    return tracing.evaluate(b.op.code, list(xs), b)

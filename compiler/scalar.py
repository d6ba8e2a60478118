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

import numpy as np

from ..core.node import Node
from ..core.op import Op, registered_for
from ..ops import activations as act
from ..ops import elementwise as ew
from ..ops import logic
from ..ops import numeric as num
from ..ops.cast import Cast
from ..ops.reduce import Count
from ..ops.shape import BroadcastLike, BroadcastTo
from . import tracing
from .traced import Traced

Value = Any  # a backend's scalar value (an IR value, a C expression, ...)


class ScalarBuilder(Protocol):
    """The primitives a scalar rule may use. Values have the dtype of what they come from: the
    node's inputs, `const`, or a primitive's operands. Arithmetic works on floats and on integers
    (two operands of one dtype, the result of that dtype); the math functions on floats only.
    Bool values are conditions: what `compare` returns, what `select` and the logical
    primitives take, and what a bool node's rule returns."""

    node: Node  # the node being computed (its static shapes, its op)

    @property
    def op(self) -> Op: ...

    def const(self, value: float, dtype: np.dtype | None = None) -> Value:
        """A constant of `dtype` (default: the node's dtype)."""

    def add(self, x: Value, y: Value) -> Value: ...
    def sub(self, x: Value, y: Value) -> Value: ...
    def mul(self, x: Value, y: Value) -> Value: ...
    def div(self, x: Value, y: Value) -> Value:
        """Floats only (true division)."""

    def neg(self, x: Value) -> Value: ...
    def abs(self, x: Value) -> Value:
        """|x|; for integers abs(INT_MIN) wraps to INT_MIN, like NumPy."""

    def maximum(self, x: Value, y: Value) -> Value:
        """NaN-propagating for floats, like np.maximum."""

    def minimum(self, x: Value, y: Value) -> Value: ...
    def sqrt(self, x: Value) -> Value: ...
    def exp(self, x: Value) -> Value: ...
    def expm1(self, x: Value) -> Value:
        """exp(x) - 1, relatively accurate for tiny x."""

    def log(self, x: Value) -> Value: ...
    def tanh(self, x: Value) -> Value: ...
    def sigmoid(self, x: Value) -> Value: ...
    def erf(self, x: Value) -> Value:
        """The error function, 2/sqrt(pi) * integral of exp(-t^2) from 0 to x."""

    def sin(self, x: Value) -> Value:
        """Sine of x radians, accurate for every finite x (full range reduction)."""

    def cos(self, x: Value) -> Value: ...
    def floor(self, x: Value) -> Value: ...
    def pow(self, x: Value, y: Value) -> Value:
        """x ** y with np.power's meaning for floats: NaN for a negative x and a non-integer y,
        the sign of x for a negative x and an odd integer y, 1 for y == 0."""

    def compare(self, symbol: str, x: Value, y: Value) -> Value:
        """A condition (<, <=, >, >=, ==, !=) between two values of one dtype: floats with NumPy's
        NaN semantics (only != holds for NaN), integers signed, bools with False < True."""

    def select(self, condition: Value, x: Value, y: Value) -> Value: ...
    def logical_and(self, x: Value, y: Value) -> Value:
        """On conditions, like logical_or, logical_xor and logical_not."""

    def logical_or(self, x: Value, y: Value) -> Value: ...
    def logical_xor(self, x: Value, y: Value) -> Value: ...
    def logical_not(self, x: Value) -> Value: ...
    def cast(self, x: Value, source: np.dtype, target: np.dtype) -> Value:
        """x of dtype `source` as `target`, like NumPy's astype: floats to integers truncate toward
        zero (x must be in range), anything to bool is x != 0 (NaN: true), bools become 0 or 1."""

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


def scalar_rules() -> list[ScalarRule]:
    """Every registered scalar rule."""
    return list(_RULES.values())


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


@scalar_rule(ew.OnesLike)
def _ones_like(b, x):
    return b.const(1.0)


@scalar_rule(BroadcastLike)
def _broadcast_like(b, x, like):
    return x  # the loop reads x broadcast over the domain


@scalar_rule(BroadcastTo)
def _broadcast_to(b, x):
    return x


@scalar_rule(Count)
def _count(b, x):
    """The element count over the reduced axes at run time (the batch may be among them)."""
    shape = b.node.inputs[0].shape
    return b.count([shape[a] for a in b.op.axes])


# Comparisons, where, logical ops and casts (ops/logic.py, ops/cast.py).


@scalar_rule(logic.Less, logic.LessEqual, logic.Greater, logic.GreaterEqual, logic.Equal, logic.NotEqual)
def _comparison(b, x, y):
    return b.compare(b.op.symbol, x, y)


@scalar_rule(logic.Where)
def _where(b, condition, x, y):
    return b.select(condition, x, y)


@scalar_rule(
    logic.LogicalAnd, logic.LogicalOr, logic.LogicalXor, logic.LogicalNot,
    num.Erf, num.Sin, num.Cos, num.Abs, num.Pow, num.Maximum, num.Minimum,
)  # fmt: skip
def _primitive(b, *xs):
    """Ops that are one primitive of the same name (erf, logical_and, maximum, ...)."""
    return getattr(b, b.op.name)(*xs)


@scalar_rule(Cast)
def _cast(b, x):
    return b.cast(x, b.node.inputs[0].dtype, b.node.dtype)


# Numeric functions and activations (ops/numeric.py, ops/activations.py).


@scalar_rule(num.Sign)
def _sign(b, x):
    """1 above zero, -1 below, x itself otherwise (0, -0.0 or NaN)."""
    below = b.select(b.compare("<", x, b.const(0)), b.const(-1), x)
    return b.select(b.compare(">", x, b.const(0)), b.const(1), below)


@scalar_rule(num.Square)
def _square(b, x):
    return b.mul(x, x)


@scalar_rule(num.Rsqrt)
def _rsqrt(b, x):
    return b.div(b.const(1.0), b.sqrt(x))


@scalar_rule(num.Clip)
def _clip(b, x):
    op = b.op
    x = x if op.lo is None else b.maximum(x, b.const(op.lo))
    return x if op.hi is None else b.minimum(x, b.const(op.hi))


@scalar_rule(act.Gelu)
def _gelu(b, x):
    half_x = b.mul(x, b.const(0.5))
    if b.op.approximate == "tanh":
        cubic = b.mul(b.mul(b.mul(x, x), x), b.const(act.GELU_CUBIC))
        inner = b.mul(b.add(x, cubic), b.const(act.SQRT_2_OVER_PI))
        return b.mul(half_x, b.add(b.tanh(inner), b.const(1.0)))
    return b.mul(half_x, b.add(b.erf(b.mul(x, b.const(act.SQRT_HALF))), b.const(1.0)))


@scalar_rule(act.Silu)
def _silu(b, x):
    return b.mul(x, b.sigmoid(x))


@scalar_rule(act.LeakyRelu)
def _leaky_relu(b, x):
    return b.select(b.compare(">", x, b.const(0.0)), x, b.mul(x, b.const(b.op.alpha)))


@scalar_rule(act.Elu)
def _elu(b, x):
    return b.select(b.compare(">", x, b.const(0.0)), x, b.mul(b.expm1(x), b.const(b.op.alpha)))


@scalar_rule(act.Softplus)
def _softplus(b, x):
    """max(x, 0) + log1p(exp(-|x|)), with log1p(e) = log(u) * e / (u - 1), u = 1 + e (exact
    where u rounds to 1: then log1p(e) = e), so softplus of a very negative x keeps its digits."""
    e = b.exp(b.neg(b.abs(x)))
    u = b.add(e, b.const(1.0))
    u_minus_1 = b.sub(u, b.const(1.0))
    log1p = b.select(b.compare("==", u_minus_1, b.const(0.0)), e, b.div(b.mul(b.log(u), e), u_minus_1))
    return b.add(b.maximum(x, b.const(0.0)), log1p)


@scalar_rule(act.StopGradient)
def _stop_gradient(b, x):
    return x


@scalar_rule(Traced)
def _traced(b, *xs):
    return tracing.evaluate(b.op.code, list(xs), b)

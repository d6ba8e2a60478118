"""Elementwise ops: one drug op each, also on values that merge the batch with other axes."""

from __future__ import annotations

from collections.abc import Callable

from ...core.node import Node
from ...ops import (
    abs,
    add,
    clip,
    cos,
    div,
    elu,
    erf,
    exp,
    gelu,
    greater,
    greater_equal,
    leaky_relu,
    less,
    less_equal,
    log,
    logical_and,
    logical_not,
    logical_or,
    logical_xor,
    maximum,
    minimum,
    mul,
    neg,
    pow,
    relu,
    sigmoid,
    sign,
    sin,
    softplus,
    sqrt,
    sub,
    tanh,
    where,
)
from ...ops import equal as equal_to
from ..context import Merged
from .registry import converts


def _elementwise(op_type: str, fn: Callable[..., Node]) -> None:
    converts(op_type)(lambda ctx: _merged_elementwise(ctx, fn) or fn(*ctx.inputs()))


def _merged_elementwise(ctx, fn: Callable[..., Node]) -> Merged | None:
    """An elementwise op on values with the batch merged into their first axis: on the nodes that
    hold them apart, when the other operands broadcast over trailing axes only."""
    merged = [ctx.merged(i) for i in range(ctx.arity)]
    first = next((m for m in merged if m is not None), None)
    if first is None:
        return None
    operands = []
    for i, m in enumerate(merged):
        if m is not None:
            if m.axes != first.axes or m.node.shape[: m.axes] != first.node.shape[: first.axes]:
                raise ctx.fail("its operands merge the batch with different axes")
            operands.append(m.node)
        elif ctx.has(i):
            x = ctx.input(i)
            if x.ndim >= first.rank:
                raise ctx.fail(f"{x.describe()} would meet the batch merged with other axes")
            operands.append(x)
    return first.with_node(fn(*operands))


for _op_type, _fn in {
    "Add": add, "Sub": sub, "Mul": mul, "Div": div, "Relu": relu, "Sigmoid": sigmoid, "Tanh": tanh,
    "Sqrt": sqrt, "Exp": exp, "Log": log, "Neg": neg, "Erf": erf, "Abs": abs, "Sin": sin, "Cos": cos,
    "Sign": sign, "Softplus": softplus, "Where": where, "Equal": equal_to, "Less": less, "LessOrEqual": less_equal,
    "Greater": greater, "GreaterOrEqual": greater_equal, "And": logical_and, "Or": logical_or,
    "Xor": logical_xor, "Not": logical_not,
}.items():  # fmt: skip
    _elementwise(_op_type, _fn)


@converts("Pow")
def _pow(ctx):
    """A constant scalar exponent is a Python number (2, 0.5, -0.5 and 1 pick cheaper code)."""
    exponent = ctx.fixed(1)
    if exponent is not None and exponent.size == 1 and exponent.dtype.kind == "f":
        return pow(ctx.input(0), float(exponent.reshape(())))
    return pow(ctx.input(0), ctx.input(1))


@converts("Gelu")
def _gelu(ctx):
    return gelu(ctx.input(0), approximate=ctx.attr("approximate", "none"))


@converts("LeakyRelu")
def _leaky_relu(ctx):
    return leaky_relu(ctx.input(0), ctx.attr("alpha", 0.01))


@converts("Elu")
def _elu(ctx):
    return elu(ctx.input(0), ctx.attr("alpha", 1.0))


@converts("Max", "Min")
def _extremum(ctx):
    fn = maximum if ctx.op_type == "Max" else minimum
    xs = ctx.inputs()
    out = xs[0]
    for x in xs[1:]:
        out = fn(out, x)
    return out


@converts("Clip")
def _clip(ctx):
    bounds = []
    for i in (1, 2):
        value = ctx.fixed(i)
        if ctx.has(i) and value is None:
            raise ctx.fail("drug clips to bounds known at import (constants or initializers)")
        bounds.append(None if value is None else float(value.reshape(())))
    return clip(ctx.input(0), *bounds) if any(b is not None for b in bounds) else ctx.input(0)

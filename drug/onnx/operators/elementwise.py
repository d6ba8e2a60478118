"""Elementwise ops: one drug op each, also on values that merge the batch with other axes."""

from __future__ import annotations

from collections.abc import Callable

from ...core.node import Node
from ...ops import (
    add,
    div,
    exp,
    log,
    mul,
    neg,
    relu,
    sigmoid,
    sqrt,
    sub,
    tanh,
)
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
    "Sqrt": sqrt, "Exp": exp, "Log": log, "Neg": neg,
}.items():  # fmt: skip
    _elementwise(_op_type, _fn)


@converts("Pow")
def _pow(ctx):
    x, exponent = ctx.input(0), ctx.fixed(1)
    if exponent is None or exponent.size != 1:
        raise ctx.fail("drug raises to a constant scalar power (2, 3, 0.5, -0.5, -1, 1) only")
    p = float(exponent.reshape(()))
    powers = {
        1.0: lambda: x,
        2.0: lambda: mul(x, x),
        3.0: lambda: mul(x, x, x),
        0.5: lambda: sqrt(x),
        -0.5: lambda: div(1.0, sqrt(x)),
        -1.0: lambda: div(1.0, x),
    }
    if p not in powers:
        raise ctx.fail(f"exponent {p:g}: drug raises to the powers {sorted(powers)} only")
    return powers[p]()

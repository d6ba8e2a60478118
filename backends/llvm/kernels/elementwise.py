"""Scalar rules of the elementwise ops: what one element of a fused loop computes."""

from __future__ import annotations

import functools

from ....ops.elementwise import Add, Div, Equal, Exp, Log, Mul, Neg, OnesLike, Relu, ReluGrad, Sigmoid, Sqrt, Sub, Tanh
from ....ops.reduce import Count
from ..lowering import lowering


@lowering(Add)
def _add(b, *xs):
    return functools.reduce(b.add, xs)


@lowering(Mul)
def _mul(b, *xs):
    return functools.reduce(b.mul, xs)


@lowering(Sub)
def _sub(b, x, y):
    return b.sub(x, y)


@lowering(Div)
def _div(b, x, y):
    return b.div(x, y)


@lowering(Neg)
def _neg(b, x):
    return b.neg(x)


@lowering(Relu)
def _relu(b, x):
    return b.maximum(x, b.const(0.0))  # NaN-propagating, like np.maximum


@lowering(ReluGrad)
def _relu_grad(b, g, x):
    return b.select_positive(x, g)


@lowering(Sigmoid)
def _sigmoid(b, x):
    return b.sigmoid(x)


@lowering(Tanh)
def _tanh(b, x):
    return b.tanh(x)


@lowering(Exp)
def _exp(b, x):
    return b.exp(x)


@lowering(Log)
def _log(b, x):
    return b.log(x)


@lowering(Sqrt)
def _sqrt(b, x):
    return b.sqrt(x)


@lowering(Equal)
def _equal(b, x, y):
    return b.equal(x, y)


@lowering(OnesLike)
def _ones_like(b, x):
    return b.const(1.0)


@lowering(Count)
def _count(b, x):
    """The element count over the reduced axes at run time (the batch may be among them)."""
    shape = b.node.inputs[0].shape
    return b.count([shape[a] for a in b.op.axes])

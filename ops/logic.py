"""Comparisons, `where` and logical ops: bool nodes, the masks attention and dropout select with.
Their values are not differentiable; `where` passes the gradient to the side it selected."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..core.errors import DTypeError
from ..core.node import Node, Operand, apply, user_call
from ..core.op import Example, same_dtype
from ..core.types import BOOL, DTYPES, TensorType, broadcast_shapes
from .elementwise import Elementwise, zeros_like


class Comparison(Elementwise):
    """a <op> b elementwise (broadcasting) for operands of one dtype; the result is bool. NaN
    compares like NumPy: only != holds."""

    arity = 2
    symbol: ClassVar[str] = ""
    numpy_fn: ClassVar = staticmethod(np.equal)

    def infer(self, a, b):
        same_dtype([a, b], DTYPES)
        return TensorType(broadcast_shapes([a.shape, b.shape]), BOOL)

    def ref(self, a, b):
        return self.numpy_fn(a, b)

    def grad(self, g, out, a, b):
        return [None, None]

    @classmethod
    def example(cls, rng, dims):
        shape = (dims[0], dims[1])
        a = np.round(rng.uniform(-2.0, 2.0, size=shape))  # small integers: some pairs are equal
        b = np.round(rng.uniform(-2.0, 2.0, size=shape[1:]))
        return cls(), Example([a, b], [False, False], {0: 0})


class Less(Comparison):
    name, symbol, numpy_fn = "less", "<", staticmethod(np.less)


class LessEqual(Comparison):
    name, symbol, numpy_fn = "less_equal", "<=", staticmethod(np.less_equal)


class Greater(Comparison):
    name, symbol, numpy_fn = "greater", ">", staticmethod(np.greater)


class GreaterEqual(Comparison):
    name, symbol, numpy_fn = "greater_equal", ">=", staticmethod(np.greater_equal)


class Equal(Comparison):
    name, symbol, numpy_fn = "equal", "==", staticmethod(np.equal)


class NotEqual(Comparison):
    name, symbol, numpy_fn = "not_equal", "!=", staticmethod(np.not_equal)


class Where(Elementwise):
    """`a` where `cond` holds, else `b` (all three broadcast); a and b share one dtype."""

    name = "where"
    arity = 3

    def infer(self, cond, a, b):
        if cond.dtype != BOOL:
            raise DTypeError(f"the condition must be bool, got {cond.dtype}; compare first (x > 0) or cast")
        if a.dtype != b.dtype:
            raise DTypeError(f"the branches disagree in dtype ({a.dtype} and {b.dtype}); cast one of them")
        return TensorType(broadcast_shapes([cond.shape, a.shape, b.shape]), a.dtype)

    def ref(self, cond, a, b):
        return np.where(cond, a, b)

    def grad(self, g, out, cond, a, b):
        zero = zeros_like(g)
        return [None, where(cond, g, zero), where(cond, zero, g)]

    @classmethod
    def example(cls, rng, dims):
        shape = (dims[0], dims[1])
        cond = rng.uniform(size=shape) < 0.5
        a, b = rng.standard_normal(shape), rng.standard_normal(shape[1:])
        return cls(), Example([cond, a, b], [False, True, True], {0: 0, 1: 0})


class Logical(Elementwise):
    """A logical op on bool operands (broadcasting); not differentiable."""

    numpy_fn: ClassVar = staticmethod(np.logical_and)

    def infer(self, *xs):
        if any(x.dtype != BOOL for x in xs):
            raise DTypeError(f"needs bool inputs, got {', '.join(str(x.dtype) for x in xs)}; compare or cast first")
        return TensorType(broadcast_shapes([x.shape for x in xs]), BOOL)

    def ref(self, *xs):
        return self.numpy_fn(*xs)

    def grad(self, g, out, *xs):
        return [None] * len(xs)

    @classmethod
    def example(cls, rng, dims):
        shape = (dims[0], dims[1])
        shapes = [shape] if cls.arity == 1 else [shape, shape[1:]]
        return cls(), Example([rng.uniform(size=s) < 0.5 for s in shapes], [False] * cls.arity, {0: 0})


class LogicalAnd(Logical):
    name, arity, numpy_fn = "logical_and", 2, staticmethod(np.logical_and)


class LogicalOr(Logical):
    name, arity, numpy_fn = "logical_or", 2, staticmethod(np.logical_or)


class LogicalXor(Logical):
    name, arity, numpy_fn = "logical_xor", 2, staticmethod(np.logical_xor)


class LogicalNot(Logical):
    name, arity, numpy_fn = "logical_not", 1, staticmethod(np.logical_not)


def _comparison_doc(symbol: str, name: str, example: str) -> str:
    return f"""`a {symbol} b` elementwise, as a bool node (`a {symbol} b` on nodes is `{name}(a, b)`).

    Inputs broadcast like NumPy arrays and share one dtype (float, integer or bool); NaN compares
    like NumPy's (only != holds). Not differentiable: use the result in `where` or cast it.

    Args:
        a: A node (or a number, which takes b's dtype).
        b: A node (or a number, which takes a's dtype).

    Returns:
        A bool node of the broadcast shape.

    Raises:
        ShapeError: The shapes do not broadcast.
        DTypeError: The dtypes differ.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> dg.{name}(x, 1.0).eval(x=np.array([[0.0, 1.0, 2.0]], np.float32))
        {example}
    """


@user_call()
def less(a: Operand, b: Operand) -> Node:
    return apply(Less(), a, b)


@user_call()
def less_equal(a: Operand, b: Operand) -> Node:
    return apply(LessEqual(), a, b)


@user_call()
def greater(a: Operand, b: Operand) -> Node:
    return apply(Greater(), a, b)


@user_call()
def greater_equal(a: Operand, b: Operand) -> Node:
    return apply(GreaterEqual(), a, b)


@user_call()
def equal(a: Operand, b: Operand) -> Node:
    return apply(Equal(), a, b)


@user_call()
def not_equal(a: Operand, b: Operand) -> Node:
    return apply(NotEqual(), a, b)


for _fn, _symbol, _example in (
    (less, "<", "array([[ True, False, False]])"),
    (less_equal, "<=", "array([[ True,  True, False]])"),
    (greater, ">", "array([[False, False,  True]])"),
    (greater_equal, ">=", "array([[False,  True,  True]])"),
    (equal, "==", "array([[False,  True, False]])"),
    (not_equal, "!=", "array([[ True, False,  True]])"),
):
    _fn.__doc__ = _comparison_doc(_symbol, _fn.__name__, _example)


@user_call()
def where(cond: Operand, a: Operand, b: Operand) -> Node:
    """`a` where `cond` holds, else `b` (NumPy's `where`); the gradient flows to the side that
    was selected, element by element.

    Args:
        cond: A bool node (a comparison, a mask).
        a: The values where cond is true.
        b: The values elsewhere; the same dtype as a (numbers take it).

    Returns:
        A node of the broadcast shape of all three, in a's dtype.

    Raises:
        DTypeError: cond is not bool, or a and b differ in dtype.
        ShapeError: The shapes do not broadcast.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> dg.where(x > 0, x, 0.1 * x).eval(x=np.array([[-1.0, 0.0, 2.0]], np.float32))
        array([[-0.1,  0. ,  2. ]], dtype=float32)
    """
    return apply(Where(), cond, a, b)


def _logical_doc(name: str, what: str, example: str, unary: bool = False) -> str:
    args = "x: A bool node." if unary else "a: A bool node.\n        b: A bool node (broadcasts with a)."
    call = "~(x > 0)" if unary else f"dg.{name}(x > 0, x < 2)"
    return f"""{what}, elementwise on bool nodes (`{name}`{" is `~x`" if unary else ""}).

    Args:
        {args}

    Returns:
        A bool node.

    Raises:
        DTypeError: An input is not bool (compare or cast first).

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> ({call}).eval(x=np.array([[-1.0, 1.0, 3.0]], np.float32))
        {example}
    """


@user_call()
def logical_and(a: Operand, b: Operand) -> Node:
    return apply(LogicalAnd(), a, b)


@user_call()
def logical_or(a: Operand, b: Operand) -> Node:
    return apply(LogicalOr(), a, b)


@user_call()
def logical_xor(a: Operand, b: Operand) -> Node:
    return apply(LogicalXor(), a, b)


@user_call()
def logical_not(x: Operand) -> Node:
    return apply(LogicalNot(), x)


logical_and.__doc__ = _logical_doc("logical_and", "Both true (`a & b`)", "array([[False,  True, False]])")
logical_or.__doc__ = _logical_doc("logical_or", "Either true (`a | b`)", "array([[ True,  True,  True]])")
logical_xor.__doc__ = _logical_doc("logical_xor", "Exactly one true (`a ^ b`)", "array([[ True, False,  True]])")
logical_not.__doc__ = _logical_doc("logical_not", "Not true", "array([[ True, False, False]])", unary=True)

"""`@dg.elementwise`: an elementwise op traced from a scalar Python function. Its forward,
gradient and native code all come from one traced expression (compiler/tracing.py), so it
fuses with its neighbours like any built-in elementwise op."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import numpy as np

from ..core.errors import GraphError
from ..core.node import Node, apply
from ..core.op import Example
from ..ops import numeric
from ..ops.elementwise import Elementwise
from . import tracing


class _NumpyScalars:
    """The NumPy meaning of each traced operation (elementwise over broadcast arrays)."""

    const = staticmethod(float)
    add, sub, mul, div = np.add, np.subtract, np.multiply, np.divide
    neg, exp, log, sqrt, tanh = np.negative, np.exp, np.log, np.sqrt, np.tanh
    erf, sin, cos, floor = staticmethod(numeric.reference_erf), np.sin, np.cos, np.floor
    select = staticmethod(np.where)
    _compare = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}
    _compare |= {"==": np.equal, "!=": np.not_equal}

    @classmethod
    def compare(cls, symbol, a, b):
        return cls._compare[symbol](a, b)


class Traced(Elementwise):
    """The elementwise op of a traced function; `code` is its straight-line expression."""

    name = "traced"

    def __init__(self, code: tuple[tuple, ...], label: str):
        self.code = code
        self.label = label
        self.n_inputs = 1 + max((v for op, v, _ in code if op == "input"), default=-1)

    def infer(self, *inputs):
        if len(inputs) < self.n_inputs:
            raise GraphError(f"'{self.label}' takes {self.n_inputs} inputs, got {len(inputs)}")
        return super().infer(*inputs)

    def ref(self, *xs):
        shape = np.broadcast_shapes(*(x.shape for x in xs))
        with np.errstate(all="ignore"):  # `where` evaluates both sides, like the native select
            out = tracing.evaluate(self.code, list(xs), _NumpyScalars)
        return np.broadcast_to(np.asarray(out, dtype=np.result_type(*xs)), shape).copy()

    def grad(self, g, out, *xs):
        expr = tracing.from_code(self.code)
        seed = tracing.Expr("input", value=len(xs))  # g is passed after the inputs
        grads = []
        for i in range(len(xs)):
            try:
                d = tracing.derivative(expr, i)
                code = None if tracing.is_const(d, 0.0) else tracing.linearize(tracing.mul(d, seed))
            except GraphError as error:  # a derivative nested deeper than the tracer allows
                raise GraphError(f"@dg.elementwise: the derivative of {self.label}: {error}") from None
            grads.append(None if code is None else apply(Traced(code, f"d_{self.label}/d{i}"), *xs, g))
        return grads

    def __repr__(self) -> str:
        return f"traced({self.label})"

    @classmethod
    def example(cls, rng, dims):
        shape = (dims[0], dims[1])
        xs = [rng.uniform(-2.0, 2.0, size=shape), rng.uniform(0.5, 2.0, size=shape[1:])]
        return _example_fn.op, Example(xs, [True, True], {0: 0})


def elementwise(fn: Callable) -> Callable:
    """Decorator: a scalar function of floats becomes an elementwise graph op.

    The function may use arithmetic, `**`, comparisons in `if`/`else` (also `max`, `min`,
    `abs`) and `math.exp/log/sqrt/tanh/erf/sin/cos/floor/fabs`. It is traced once, branch by branch (joined with
    selects, so native loops stay branch-free); its gradient is derived from the trace, and it
    fuses with neighbouring elementwise ops. Called on graph nodes it builds a node (inputs
    broadcast like `add`); called on Python numbers it is the plain function.

    Args:
        fn: A function of one or more floats returning a float.

    Returns:
        The op function, with `.op` (the traced op).

    Raises:
        GraphError: (at a call) the wrong number of inputs.

    Example:
        >>> import math, drug as dg, numpy as np
        >>> @dg.elementwise
        ... def softplus(x):
        ...     return max(x, 0.0) + math.log(1.0 + math.exp(-abs(x)))
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2))
        >>> softplus(x).eval(x=np.array([[0.0, 30.0]], np.float32))
        array([[ 0.6931472, 30.       ]], dtype=float32)
        >>> round(softplus(0.0), 4)
        0.6931
    """
    params = inspect.signature(fn).parameters.values()
    arity = sum(1 for p in params if p.default is inspect.Parameter.empty)
    op = Traced(tracing.linearize(tracing.trace(fn, arity)), fn.__name__)

    @functools.wraps(fn)
    def call(*args):
        if any(isinstance(a, Node) for a in args):
            if len(args) != arity:
                raise GraphError(f"'{fn.__name__}' takes {arity} inputs, got {len(args)}")
            return apply(op, *args)
        return fn(*args)

    call.op = op
    return call


@elementwise
def _example_fn(x, y):
    """A function with nested branches and every traced operation, for the registry tests."""
    if x > 0.5:
        z = x * y + math.exp(-x) / y
    elif x < -1.0:
        z = -(math.tanh(x) ** 2) - math.log(y) + math.erf(x * y)
    else:
        z = math.sqrt(y) * x**3 - abs(x - y) + math.sin(x) * math.cos(y)
    return max(z, x - 3.0)

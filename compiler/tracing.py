"""Tracing scalar Python functions into expressions, for `@dg.elementwise`.

The function runs on `Expr` placeholders. A comparison used as a bool (an `if`, `max()`,
`abs()`, `and`) is a branch: the tracer runs the function once per path through its branches
and joins the paths' results with `where(condition, then, else)`, so the traced expression is
branch-free and vectorizes. Derivatives are symbolic, over the same expressions."""

from __future__ import annotations

import math
import threading
import types
from collections.abc import Callable
from typing import Any

from ..core.errors import GraphError

MAX_PATHS = 256  # paths explored through a function's branches; also bounds the branches on one path
# Nesting of one expression: deeper keys would overflow the C stack when hashed (a Python loop of
# 300,000 operations did), long before they mean a sensible elementwise function.
MAX_DEPTH = 5_000
MAX_OPERATIONS = 200_000  # operations one run of a traced function may build
COMPARISONS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
UNARY = ("neg", "exp", "log", "sqrt", "tanh", "erf", "sin", "cos", "floor")
BINARY = ("add", "sub", "mul", "div")


class Expr:
    """A node of a scalar expression: inputs, constants, arithmetic, math functions,
    comparisons and `where`. Equal structure means equal key (used to share subexpressions)."""

    __slots__ = ("op", "args", "value", "key", "depth")

    def __init__(self, op: str, args: tuple[Expr, ...] = (), value: float | int | None = None):
        self.op, self.args, self.value = op, args, value
        self.depth = 1 + max((a.depth for a in args), default=0)
        if self.depth > MAX_DEPTH:
            raise _Unbounded(f"its expression is nested deeper than {MAX_DEPTH} operations")
        _PATH.count_operation()
        self.key = (op, value, tuple(a.key for a in args))

    # arithmetic, with Python numbers promoted to constants
    def __add__(self, other):
        return add(self, lift(other))

    def __radd__(self, other):
        return add(lift(other), self)

    def __sub__(self, other):
        return sub(self, lift(other))

    def __rsub__(self, other):
        return sub(lift(other), self)

    def __mul__(self, other):
        return mul(self, lift(other))

    def __rmul__(self, other):
        return mul(lift(other), self)

    def __truediv__(self, other):
        return div(self, lift(other))

    def __rtruediv__(self, other):
        return div(lift(other), self)

    def __neg__(self):
        return neg(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return where(Expr("lt", (self, const(0.0))), neg(self), self)

    def __pow__(self, exponent):
        return power(self, exponent)

    def __rpow__(self, base):
        return exp(mul(self, const(math.log(base))))

    def __lt__(self, other):
        return Expr("lt", (self, lift(other)))

    def __le__(self, other):
        return Expr("le", (self, lift(other)))

    def __gt__(self, other):
        return Expr("gt", (self, lift(other)))

    def __ge__(self, other):
        return Expr("ge", (self, lift(other)))

    def __eq__(self, other):  # type: ignore[override]
        return Expr("eq", (self, lift(other)))

    def __ne__(self, other):  # type: ignore[override]
        return Expr("ne", (self, lift(other)))

    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> bool:
        if self.op not in COMPARISONS:
            raise GraphError("@dg.elementwise: only comparisons can be used as conditions (e.g. `if x > 0:`)")
        return _PATH.decide(self)

    def __float__(self):
        raise GraphError(
            "@dg.elementwise: a traced value was converted to a Python float; use the functions of the "
            f"math module drug supports ({', '.join(sorted(MATH))}) and arithmetic on the arguments"
        )

    def __repr__(self) -> str:
        if self.op == "input":
            return f"x{self.value}"
        if self.op == "const":
            return repr(self.value)
        return f"{self.op}({', '.join(map(repr, self.args))})"


def lift(value: Any) -> Expr:
    if isinstance(value, Expr):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GraphError(f"@dg.elementwise: cannot use {value!r} ({type(value).__name__}) in a traced expression")
    return const(float(value))


def const(value: float) -> Expr:
    return Expr("const", value=float(value))


def is_const(e: Expr, value: float | None = None) -> bool:
    return e.op == "const" and (value is None or e.value == value)


# Builders fold constants and identities, so that derivatives stay small.
def add(a: Expr, b: Expr) -> Expr:
    if is_const(a) and is_const(b):
        return const(a.value + b.value)
    if is_const(a, 0.0):
        return b
    return a if is_const(b, 0.0) else Expr("add", (a, b))


def sub(a: Expr, b: Expr) -> Expr:
    if is_const(a) and is_const(b):
        return const(a.value - b.value)
    if is_const(b, 0.0):
        return a
    return neg(b) if is_const(a, 0.0) else Expr("sub", (a, b))


def mul(a: Expr, b: Expr) -> Expr:
    if is_const(a) and is_const(b):
        return const(a.value * b.value)
    if is_const(a, 0.0) or is_const(b, 0.0):
        return const(0.0)
    if is_const(a, 1.0):
        return b
    return a if is_const(b, 1.0) else Expr("mul", (a, b))


def div(a: Expr, b: Expr) -> Expr:
    if is_const(a, 0.0):
        return const(0.0)
    return a if is_const(b, 1.0) else Expr("div", (a, b))


def neg(a: Expr) -> Expr:
    if is_const(a):
        return const(-a.value)
    return a.args[0] if a.op == "neg" else Expr("neg", (a,))


def where(cond: Expr, a: Expr, b: Expr) -> Expr:
    return a if a.key == b.key else Expr("where", (cond, a, b))


def exp(a: Expr) -> Expr:
    return Expr("exp", (a,))


def log(a: Expr) -> Expr:
    return Expr("log", (a,))


def sqrt(a: Expr) -> Expr:
    return Expr("sqrt", (a,))


def tanh(a: Expr) -> Expr:
    return Expr("tanh", (a,))


def erf(a: Expr) -> Expr:
    return Expr("erf", (a,))


def sin(a: Expr) -> Expr:
    return Expr("sin", (a,))


def cos(a: Expr) -> Expr:
    return Expr("cos", (a,))


def floor(a: Expr) -> Expr:
    return const(math.floor(a.value)) if is_const(a) else Expr("floor", (a,))


def power(base: Expr, exponent: Any) -> Expr:
    if isinstance(exponent, Expr):
        return exp(mul(exponent, log(base)))
    exponent = float(exponent)
    if exponent == 0.5:
        return sqrt(base)
    if exponent.is_integer() and abs(exponent) <= 8:
        result = const(1.0)
        for _ in range(int(abs(exponent))):
            result = mul(result, base)
        return div(const(1.0), result) if exponent < 0 else result
    return exp(mul(const(exponent), log(base)))


def _scalar_or_expr(traced: Callable, plain: Callable) -> Callable:
    def fn(x):
        return traced(x) if isinstance(x, Expr) else plain(x)

    fn.__name__ = plain.__name__
    return fn


MATH = {
    "exp": _scalar_or_expr(exp, math.exp),
    "log": _scalar_or_expr(log, math.log),
    "sqrt": _scalar_or_expr(sqrt, math.sqrt),
    "tanh": _scalar_or_expr(tanh, math.tanh),
    "erf": _scalar_or_expr(erf, math.erf),
    "sin": _scalar_or_expr(sin, math.sin),
    "cos": _scalar_or_expr(cos, math.cos),
    "fabs": _scalar_or_expr(abs, math.fabs),
    "floor": _scalar_or_expr(floor, math.floor),
}


class _MathShim(types.ModuleType):
    """Stands in for the `math` module while a function is traced."""

    def __getattr__(self, name: str):
        value = getattr(math, name)
        if isinstance(value, float):
            return value  # pi, e, inf
        raise GraphError(f"@dg.elementwise: math.{name} is not supported; use {', '.join(sorted(MATH))}")


_SHIM = _MathShim("math")
for _name, _fn in MATH.items():
    setattr(_SHIM, _name, _fn)


def _with_traced_math(fn: Callable) -> Callable:
    """fn with `math` (and names imported from it) replaced by the tracing versions."""
    globals_ = dict(fn.__globals__)
    for name, value in fn.__globals__.items():
        if value is math:
            globals_[name] = _SHIM
        elif getattr(value, "__module__", None) == "math" and value.__name__ in MATH:
            globals_[name] = MATH[value.__name__]  # from math import exp [as e]
    return types.FunctionType(fn.__code__, globals_, fn.__name__, fn.__defaults__, fn.__closure__)


class _Unbounded(GraphError):
    """A traced function the tracer cannot turn into one bounded expression; reported with the
    function's name by `trace` (and Traced.grad for derivatives)."""


class _Path(threading.local):
    """The branch decisions of one run: forced ones first, then True for each new branch. One per
    thread, so that functions traced on several threads at once keep their own decisions."""

    def __init__(self) -> None:
        self.forced: list[bool] = []
        self.taken: list[tuple[Expr, bool]] = []
        self.operations: int | None = None  # counted while a function is traced

    def decide(self, condition: Expr) -> bool:
        i = len(self.taken)
        if i >= MAX_PATHS:  # a path this long cannot be explored within MAX_PATHS paths
            raise _Unbounded(
                f"one path through it takes more than {MAX_PATHS} branches (a loop whose condition "
                "depends on the inputs, such as `while x > 0`, never ends when traced)"
            )
        choice = self.forced[i] if i < len(self.forced) else True
        self.taken.append((condition, choice))
        return choice

    def count_operation(self) -> None:
        if self.operations is not None:
            self.operations += 1
            if self.operations > MAX_OPERATIONS:
                raise _Unbounded(f"one run of it builds more than {MAX_OPERATIONS} operations")


_PATH = _Path()


def trace(fn: Callable, arity: int) -> Expr:
    """The branch-free expression of fn(x0, ..., x{arity-1})."""
    traced_fn = _with_traced_math(fn)
    inputs = [Expr("input", value=i) for i in range(arity)]
    runs = 0

    def run(forced: list[bool]) -> tuple[Expr, list[tuple[Expr, bool]]]:
        nonlocal runs
        runs += 1
        if runs > MAX_PATHS:
            raise GraphError(f"@dg.elementwise: {fn.__name__} has more than {MAX_PATHS} paths through its branches")
        _PATH.forced, _PATH.taken, _PATH.operations = forced, [], 0
        try:
            result = lift(traced_fn(*inputs))
        except _Unbounded as error:
            raise GraphError(f"@dg.elementwise: {fn.__name__} cannot be traced: {error}") from None
        finally:
            taken, _PATH.taken, _PATH.operations = _PATH.taken, [], None
        return result, taken

    def explore(forced: list[bool]) -> Expr:
        result, taken = run(forced)
        joined = result
        for i in range(len(taken) - 1, len(forced) - 1, -1):  # innermost branch first
            condition, choice = taken[i]
            other = explore([c for _, c in taken[:i]] + [not choice])
            joined = where(condition, joined, other) if choice else where(condition, other, joined)
        return joined

    try:
        return explore([])
    except _Unbounded as error:  # joining the paths nested too deep
        raise GraphError(f"@dg.elementwise: {fn.__name__} cannot be traced: {error}") from None


def derivative(e: Expr, index: int, memo: dict | None = None) -> Expr:
    """d e / d input[index], symbolically; subexpressions in post-order with an explicit stack
    (an expression may be thousands of operations deep)."""
    memo = {} if memo is None else memo  # id(expr) -> (expr, derivative): keeps expr alive so its id is not reused
    stack = [(e, False)]
    while stack:
        node, ready = stack.pop()
        if id(node) in memo:
            continue
        if ready:
            memo[id(node)] = (node, _derivative_rule(node, index, lambda a: memo[id(a)][1]))
            continue
        stack.append((node, True))
        stack.extend((a, False) for a in _differentiated_args(node) if id(a) not in memo)
    return memo[id(e)][1]


def _differentiated_args(e: Expr) -> tuple[Expr, ...]:
    """The arguments whose derivatives e's rule reads (none of a comparison, not `where`'s condition)."""
    if e.op in ("input", "const") or e.op in COMPARISONS:
        return ()
    return e.args[1:] if e.op == "where" else e.args


def _derivative_rule(e: Expr, index: int, d: Callable[[Expr], Expr]) -> Expr:
    """d e / d input[index] from the derivatives `d` of its arguments."""
    op, args = e.op, e.args
    if op == "input":
        return const(1.0 if e.value == index else 0.0)
    if op == "const" or op in COMPARISONS:
        return const(0.0)
    if op in ("add", "sub"):
        return (add if op == "add" else sub)(d(args[0]), d(args[1]))
    if op == "mul":
        return add(mul(d(args[0]), args[1]), mul(args[0], d(args[1])))
    if op == "div":
        return div(sub(d(args[0]), mul(e, d(args[1]))), args[1])
    if op == "neg":
        return neg(d(args[0]))
    if op == "exp":
        return mul(e, d(args[0]))
    if op == "log":
        return div(d(args[0]), args[0])
    if op == "sqrt":
        return div(d(args[0]), mul(const(2.0), e))
    if op == "tanh":
        return mul(sub(const(1.0), mul(e, e)), d(args[0]))
    if op == "erf":  # 2/sqrt(pi) exp(-x^2)
        gauss = exp(neg(mul(args[0], args[0])))
        return mul(mul(const(2.0 / math.sqrt(math.pi)), gauss), d(args[0]))
    if op == "cos":
        return mul(neg(sin(args[0])), d(args[0]))
    if op == "sin":
        return mul(cos(args[0]), d(args[0]))
    if op == "floor":  # piecewise constant
        return const(0.0)
    if op == "where":
        return where(args[0], d(args[1]), d(args[2]))
    raise GraphError(f"no derivative rule for traced op {op!r}")  # pragma: no cover - every op built above is handled


def linearize(e: Expr) -> tuple[tuple, ...]:
    """The expression as straight-line code: (op, value, argument positions) per step, each
    distinct subexpression once; the last step is the result. Hashable, so it keys the op.
    Walked with an explicit stack (an expression may be thousands of operations deep)."""
    position: dict[tuple, int] = {}
    code: list[tuple] = []
    stack = [(e, False)]
    while stack:
        node, ready = stack.pop()
        if node.key in position:
            continue
        if ready:
            position[node.key] = len(code)
            code.append((node.op, node.value, tuple(position[a.key] for a in node.args)))
            continue
        stack.append((node, True))
        stack.extend((a, False) for a in reversed(node.args) if a.key not in position)
    return tuple(code)


def evaluate(code: tuple[tuple, ...], inputs: list, ops: Any) -> Any:
    """Run straight-line code with `ops` (NumPy arrays or LLVM scalars): ops has const(v),
    the arithmetic and math methods, compare(symbol, a, b) and select(cond, a, b)."""
    values: list = []
    for op, value, args in code:
        a = [values[i] for i in args]
        if op == "input":
            values.append(inputs[value])
        elif op == "const":
            values.append(ops.const(value))
        elif op in COMPARISONS:
            values.append(ops.compare(COMPARISONS[op], *a))
        elif op == "where":
            values.append(ops.select(*a))
        else:
            values.append(getattr(ops, op)(*a))
    return values[-1]


def from_code(code: tuple[tuple, ...]) -> Expr:
    """The expression back from its straight-line code (inverse of `linearize`)."""
    values: list[Expr] = []
    for op, value, args in code:
        values.append(Expr(op, tuple(values[i] for i in args), value))
    return values[-1]

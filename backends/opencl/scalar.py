"""Scalar rules (compiler/scalar.py) rendered as OpenCL C: the OpenCL backend's ScalarBuilder.
Each primitive appends one named `const` declaration to the kernel body and returns its name,
so shared subexpressions are computed once and the generated code reads like the rule."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ...compiler.grid import Size
from ...core.node import Node
from ...core.op import Op
from .source import c_type, literal, size

# NaN-propagating max/min with NumPy's choice between equal values (np.maximum: a >= b ? a : b)
HELPERS = """{t} drug_max_{t}({t} x, {t} y) {{ return (x >= y || isnan(x)) ? x : y; }}
{t} drug_min_{t}({t} x, {t} y) {{ return (x <= y || isnan(x)) ? x : y; }}
"""


def helpers(dtype: np.dtype) -> str:
    """The helper functions the rules of `dtype` call, once per program."""
    return HELPERS.format(t=c_type(dtype))


def _operand(x: str) -> str:
    return f"({x})" if x.startswith("-") else x


class CScalarBuilder:
    def __init__(self, node: Node, lines: list[str], fresh: Callable[[], str], indent: str):
        self.node = node
        self.dtype = np.dtype(node.dtype)
        self.type = c_type(node.dtype)
        self._lines, self._fresh, self._indent = lines, fresh, indent

    @property
    def op(self) -> Op:
        """The op of the node being rendered (its parameters: an alpha, a set of axes)."""
        return self.node.op

    def _let(self, expression: str, type_: str | None = None) -> str:
        name = self._fresh()
        self._lines.append(f"{self._indent}const {type_ or self.type} {name} = {expression};")
        return name

    def _binary(self, x: str, symbol: str, y: str) -> str:
        return self._let(f"{_operand(x)} {symbol} {_operand(y)}")

    def const(self, value: float, dtype: np.dtype | None = None) -> str:
        return literal(value, self.dtype if dtype is None else dtype)

    def add(self, x, y):
        return self._binary(x, "+", y)

    def sub(self, x, y):
        return self._binary(x, "-", y)

    def mul(self, x, y):
        return self._binary(x, "*", y)

    def div(self, x, y):
        return self._binary(x, "/", y)

    def neg(self, x):
        return self._let(f"-{_operand(x)}")

    def maximum(self, x, y):
        """NaN-propagating, like np.maximum."""
        return self._let(f"drug_max_{self.type}({x}, {y})")

    def minimum(self, x, y):
        return self._let(f"drug_min_{self.type}({x}, {y})")

    def combine(self, how: str, acc: str, x: str) -> str:
        """One step of a reduction (add, or NaN-propagating max/min), as an expression."""
        if how == "add":
            return f"{acc} + {_operand(x)}"
        return f"drug_{how}_{self.type}({acc}, {x})"

    def abs(self, x):
        return self._let(f"fabs({x})" if self.dtype.kind == "f" else f"abs({x})")

    def sqrt(self, x):
        return self._let(f"sqrt({x})")

    def exp(self, x):
        return self._let(f"exp({x})")

    def log(self, x):
        return self._let(f"log({x})")

    def expm1(self, x):
        return self._let(f"expm1({x})")

    def erf(self, x):
        return self._let(f"erf({x})")

    def pow(self, x, y):
        """C's pow has np.power's special cases (pow(x, 0) = 1, pow(1, NaN) = 1, NaN for a
        negative x and a non-integer y)."""
        return self._let(f"pow({x}, {y})")

    def tanh(self, x):
        return self._let(f"tanh({x})")

    def cos(self, x):
        return self._let(f"cos({x})")

    def sin(self, x):
        return self._let(f"sin({x})")

    def floor(self, x):
        return self._let(f"floor({x})")

    def sigmoid(self, x):
        one = self.const(1.0)
        return self._let(f"{one} / ({one} + exp(-{_operand(x)}))")

    def compare(self, symbol: str, x, y):
        """C comparisons already follow NumPy for NaN: only != holds."""
        return self._let(f"{_operand(x)} {symbol} {_operand(y)}", "int")

    def select(self, condition, x, y):
        return self._let(f"{condition} ? {x} : {y}")

    def logical_and(self, x, y):
        return self._let(f"{x} && {y}", "int")

    def logical_or(self, x, y):
        return self._let(f"{x} || {y}", "int")

    def logical_xor(self, x, y):
        return self._let(f"(!{x}) != (!{y})", "int")

    def logical_not(self, x):
        return self._let(f"!{x}", "int")

    def cast(self, x, source: np.dtype, target: np.dtype):
        """Like NumPy's astype: to bool, nonzero; otherwise as C converts (a float reaching an
        integer type is checked first by float_to_int, which the casting op uses for floats)."""
        if np.dtype(target).kind == "b":  # NumPy's astype(bool): nonzero (NaN included) is true
            return self._let(f"{x} != 0", c_type(target))
        return self._let(f"({c_type(target)}){x}", c_type(target))

    def count(self, dims: Sequence[int | None]):
        return self._let(f"({self.type}){size(Size.of(dims))}")

"""Scalar IR: the LLVM backend's ScalarBuilder (compiler/scalar.py), which scalar rules build one
element of a fused loop with. Fused loops call these inside their innermost body, so everything
here must vectorize."""

from __future__ import annotations

from llvmlite import ir

from . import mathlib
from .irutil import element_count

ARITH = ("contract",)  # fused multiply-add allowed; NaN/Inf semantics kept
REDUCE = ("reassoc", "contract")  # reassociation lets LLVM vectorize sums


class ScalarEmitter:
    def __init__(self, b: ir.IRBuilder, type_: ir.Type, batch: ir.Value | None = None, node=None):
        self.b = b
        self.type = type_
        self.batch = batch  # the run-time batch size (i64)
        self.node = node  # the node being emitted, for ops that need its static shapes

    @property
    def op(self):
        """The op of the node being emitted (its parameters: an alpha, a set of axes)."""
        return self.node.op

    def const(self, value: float) -> ir.Value:
        return ir.Constant(self.type, float(value))

    def add(self, x, y):
        return self.b.fadd(x, y, flags=ARITH)

    def sub(self, x, y):
        return self.b.fsub(x, y, flags=ARITH)

    def mul(self, x, y):
        return self.b.fmul(x, y, flags=ARITH)

    def div(self, x, y):
        return self.b.fdiv(x, y, flags=ARITH)

    def neg(self, x):
        return self.b.fneg(x)

    def _intrinsic(self, name: str, *args):
        fnty = ir.FunctionType(self.type, [self.type] * len(args))
        fn = self.b.module.declare_intrinsic(name, [self.type], fnty)
        return self.b.call(fn, args)

    def maximum(self, x, y):
        """NaN-propagating max, like np.maximum."""
        return self._intrinsic("llvm.maximum", x, y)

    def minimum(self, x, y):
        return self._intrinsic("llvm.minimum", x, y)

    def accumulate(self, combine: str, acc, x):
        """One step of a reduction: add, or NaN-propagating max/min."""
        if combine == "add":
            return self.b.fadd(acc, x, flags=REDUCE)
        return self.maximum(acc, x) if combine == "max" else self.minimum(acc, x)

    def sqrt(self, x):
        return self._intrinsic("llvm.sqrt", x)

    def compare(self, symbol: str, x, y):
        """An i1 comparison with NumPy's NaN semantics (only != holds for NaN)."""
        if symbol == "!=":
            return self.b.fcmp_unordered(symbol, x, y)
        return self.b.fcmp_ordered(symbol, x, y)

    def select(self, condition, x, y):
        return self.b.select(condition, x, y)

    def count(self, dims) -> ir.Value:
        """The number of elements over `dims` (None is the run-time batch), as a float."""
        return self.b.uitofp(element_count(self.b, dims, self.batch), self.type)

    def exp(self, x):
        return mathlib.emit(self.b, "exp", x)

    def log(self, x):
        return mathlib.emit(self.b, "log", x)

    def tanh(self, x):
        return mathlib.emit(self.b, "tanh", x)

    def sigmoid(self, x):
        return mathlib.emit(self.b, "sigmoid", x)

    def cos(self, x):
        return mathlib.emit(self.b, "cos", x)

    def sin(self, x):
        return mathlib.emit(self.b, "sin", x)

    def floor(self, x):
        return self._intrinsic("llvm.floor", x)

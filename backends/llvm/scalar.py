"""Scalar IR: the LLVM backend's ScalarBuilder (compiler/scalar.py), which scalar rules build one
element of a fused loop with. Fused loops call these inside their innermost body, so everything
here must vectorize. Floats, integers and bools (i1 conditions) each get their own instructions:
arithmetic looks at its operands' IR type."""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from . import mathlib
from .irutil import I1, element_count, scalar_constant, scalar_type

ARITH = ("contract",)  # fused multiply-add allowed; NaN/Inf semantics kept
REDUCE = ("reassoc", "contract")  # reassociation lets LLVM vectorize sums


def _is_int(x: ir.Value) -> bool:
    return isinstance(x.type, ir.IntType)


class ScalarEmitter:
    def __init__(self, b: ir.IRBuilder, type_: ir.Type, batch: ir.Value | None = None, node=None):
        self.b = b
        self.type = type_  # the scalar IR type of the node's dtype
        self.batch = batch  # the run-time batch size (i64)
        self.node = node  # the node being emitted, for ops that need its static shapes

    @property
    def op(self):
        """The op of the node being emitted (its parameters: an alpha, a set of axes)."""
        return self.node.op

    def const(self, value, dtype=None) -> ir.Value:
        if dtype is not None:
            return scalar_constant(dtype, value)
        if isinstance(self.type, ir.IntType):
            return ir.Constant(self.type, int(value))
        return ir.Constant(self.type, float(value))

    def add(self, x, y):
        return self.b.add(x, y) if _is_int(x) else self.b.fadd(x, y, flags=ARITH)

    def sub(self, x, y):
        return self.b.sub(x, y) if _is_int(x) else self.b.fsub(x, y, flags=ARITH)

    def mul(self, x, y):
        return self.b.mul(x, y) if _is_int(x) else self.b.fmul(x, y, flags=ARITH)

    def div(self, x, y):
        return self.b.fdiv(x, y, flags=ARITH)

    def neg(self, x):
        return self.b.neg(x) if _is_int(x) else self.b.fneg(x)

    def _intrinsic(self, name: str, *args):
        type_ = args[0].type
        fnty = ir.FunctionType(type_, [type_] * len(args))
        fn = self.b.module.declare_intrinsic(name, [type_], fnty)
        return self.b.call(fn, args)

    def maximum(self, x, y):
        """NaN-propagating max, like np.maximum."""
        return self._intrinsic("llvm.smax" if _is_int(x) else "llvm.maximum", x, y)

    def minimum(self, x, y):
        return self._intrinsic("llvm.smin" if _is_int(x) else "llvm.minimum", x, y)

    def abs(self, x):
        if _is_int(x):
            fnty = ir.FunctionType(x.type, [x.type, I1])
            fn = self.b.module.declare_intrinsic("llvm.abs", [x.type], fnty)
            return self.b.call(fn, [x, ir.Constant(I1, 0)])  # abs(INT_MIN) wraps, like NumPy
        return self._intrinsic("llvm.fabs", x)

    def accumulate(self, combine: str, acc, x):
        """One step of a reduction: add, or NaN-propagating max/min."""
        if combine == "add":
            return self.b.fadd(acc, x, flags=REDUCE)
        return self.maximum(acc, x) if combine == "max" else self.minimum(acc, x)

    def sqrt(self, x):
        return self._intrinsic("llvm.sqrt", x)

    def compare(self, symbol: str, x, y):
        """An i1 comparison with NumPy's NaN semantics (only != holds for NaN); integers signed,
        bools unsigned (False < True)."""
        if x.type == I1:
            return self.b.icmp_unsigned(symbol, x, y)
        if _is_int(x):
            return self.b.icmp_signed(symbol, x, y)
        if symbol == "!=":
            return self.b.fcmp_unordered(symbol, x, y)
        return self.b.fcmp_ordered(symbol, x, y)

    def select(self, condition, x, y):
        return self.b.select(condition, x, y)

    def logical_and(self, x, y):
        return self.b.and_(x, y)

    def logical_or(self, x, y):
        return self.b.or_(x, y)

    def logical_xor(self, x, y):
        return self.b.xor(x, y)

    def logical_not(self, x):
        return self.b.not_(x)

    def cast(self, x, source, target):
        """x (of dtype `source`) as `target`, like NumPy's astype; a float converted to an integer
        must be in range (FloatToInt checks that first)."""
        b, source, target = self.b, np.dtype(source), np.dtype(target)
        to = scalar_type(target)
        if target == np.bool_:
            zero = scalar_constant(source, 0)
            return b.fcmp_unordered("!=", x, zero) if source.kind == "f" else b.icmp_unsigned("!=", x, zero)
        if source.kind == "f" and target.kind == "f":
            if source.itemsize == target.itemsize:
                return x
            return b.fpext(x, to) if target.itemsize > source.itemsize else b.fptrunc(x, to)
        if source.kind == "f":
            return b.fptosi(x, to)
        if target.kind == "f":
            return b.uitofp(x, to) if source == np.bool_ else b.sitofp(x, to)
        if x.type.width == to.width:
            return x
        if x.type.width > to.width:
            return b.trunc(x, to)
        return b.zext(x, to) if source == np.bool_ else b.sext(x, to)

    def count(self, dims) -> ir.Value:
        """The number of elements over `dims` (None is the run-time batch), as a float."""
        return self.b.uitofp(element_count(self.b, dims, self.batch), self.type)

    def exp(self, x):
        return mathlib.emit(self.b, "exp", x)

    def expm1(self, x):
        return mathlib.emit(self.b, "expm1", x)

    def log(self, x):
        return mathlib.emit(self.b, "log", x)

    def tanh(self, x):
        return mathlib.emit(self.b, "tanh", x)

    def sigmoid(self, x):
        return mathlib.emit(self.b, "sigmoid", x)

    def erf(self, x):
        return mathlib.emit(self.b, "erf", x)

    def sin(self, x):
        return mathlib.emit(self.b, "sin", x)

    def cos(self, x):
        return mathlib.emit(self.b, "cos", x)

    def pow(self, x, y):
        return mathlib.emit(self.b, "pow", x, y)

    def floor(self, x):
        return self._intrinsic("llvm.floor", x)

"""The kernel of the random op (ops/random.py): Philox-4x32-10 per element as straight-line integer
code (32 x 32 -> 64-bit products, xors; the round keys are constants), which vectorizes, then the
same float conversions as the reference: top bits for uniforms, Box-Muller in double precision
for normals. Large draws are shared out over the threads."""

from __future__ import annotations

import math

from llvmlite import ir

from ....ops.random import MASK32, PHILOX_M, PHILOX_ROUNDS, PHILOX_W, Random
from ..irutil import I32, I64, for_range, i64
from ..lowering import kernel
from ..scalar import ScalarEmitter

DRAW_MIN_ELEMENTS = 1 << 15  # below this one thread draws everything


def philox(b: ir.IRBuilder, counter: list[ir.Value], key: tuple[int, int]) -> list[ir.Value]:
    """Philox-4x32-10 of four i32 words under a constant key: four i32 words."""
    c0, c1, c2, c3 = counter
    for r in range(PHILOX_ROUNDS):
        k0 = ir.Constant(I32, (key[0] + r * PHILOX_W[0]) & MASK32)
        k1 = ir.Constant(I32, (key[1] + r * PHILOX_W[1]) & MASK32)
        p0 = b.mul(b.zext(c0, I64), i64(PHILOX_M[0]), name=f"philox{r}.p0")
        p1 = b.mul(b.zext(c2, I64), i64(PHILOX_M[1]), name=f"philox{r}.p1")
        hi0, lo0 = b.trunc(b.lshr(p0, i64(32)), I32), b.trunc(p0, I32)
        hi1, lo1 = b.trunc(b.lshr(p1, i64(32)), I32), b.trunc(p1, I32)
        c0, c1, c2, c3 = b.xor(b.xor(hi1, c1), k0), lo1, b.xor(b.xor(hi0, c3), k1), lo0
    return [c0, c1, c2, c3]


def unit_uniform(b: ir.IRBuilder, words: list[ir.Value], first: int, type_: ir.Type) -> ir.Value:
    """[0, 1) from the top 24 (float) or 53 (double) bits, exactly as the reference computes it."""
    if isinstance(type_, ir.FloatType):
        top = b.uitofp(b.lshr(words[first], ir.Constant(I32, 8)), type_)
        return b.fmul(top, ir.Constant(type_, 2.0**-24), name="uniform")
    high = b.uitofp(b.lshr(words[first], ir.Constant(I32, 5)), type_)
    low = b.uitofp(b.lshr(words[first + 1], ir.Constant(I32, 6)), type_)
    return b.fmul(b.fadd(b.fmul(high, ir.Constant(type_, 2.0**26)), low), ir.Constant(type_, 2.0**-53), name="uniform")


def normal(b: ir.IRBuilder, words: list[ir.Value], type_: ir.Type) -> ir.Value:
    """Box-Muller in double: sqrt(-2 log u1) cos(2 pi u2), u1 in (0, 1]."""
    double = ir.DoubleType()
    single = isinstance(type_, ir.FloatType)
    u1 = b.fpext(unit_uniform(b, words, 0, type_), double) if single else unit_uniform(b, words, 0, type_)
    u2 = b.fpext(unit_uniform(b, words, 1, type_), double) if single else unit_uniform(b, words, 2, type_)
    u1 = b.fadd(u1, ir.Constant(double, 2.0**-24 if single else 2.0**-53), name="u1")
    f = ScalarEmitter(b, double)
    radius = f.sqrt(b.fmul(f.log(u1), ir.Constant(double, -2.0)))
    z = b.fmul(radius, f.cos(b.fmul(u2, ir.Constant(double, 2.0 * math.pi))), name="normal")
    return b.fptrunc(z, type_) if single else z


@kernel(Random)
def _random(k, node):
    op = node.op
    counter = node.inputs[0]
    count = k.count(node)
    worth = k.b.icmp_unsigned(">=", count, i64(DRAW_MIN_ELEMENTS), name="draw.worth")

    def span(ctx, lo, hi):
        b = ctx.b
        step = ctx.load(counter, i64(0))
        step = step if step.type == I64 else b.sext(step, I64, name="step")
        step_lo, step_hi = b.trunc(step, I32, name="step.lo"), b.trunc(b.lshr(step, i64(32)), I32, name="step.hi")
        type_ = ctx.scalar(node).type
        with for_range(b, hi, "i", start=lo) as i:
            words = philox(b, [b.trunc(i, I32), b.trunc(b.lshr(i, i64(32)), I32), step_lo, step_hi], op.key_words)
            value = unit_uniform(b, words, 0, type_) if op.distribution == "uniform" else normal(b, words, type_)
            ctx.store(node, i, value)

    k.parallel_for("draw", count, span, worth, grain=64)

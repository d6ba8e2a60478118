"""Inline, branch-free, vectorizable IR for transcendental scalar functions.

`emit(builder, name, x)` builds exp, log, tanh or sigmoid of one float/double value as straight-line
code: fma, rint, fabs, copysign, selects, and integer bit manipulation to build 2^n and to split a
float into mantissa and exponent. There are no branches, loops or libm calls, so when a fused
elementwise loop calls `emit` per element, LLVM's loop vectorizer turns the whole loop into SIMD code
(`llvm.exp.f32` would become a scalar call to `expf` and keep the loop scalar).

Methods (the classic Cephes/SLEEF/fdlibm structure, written for SIMD):
- exp: Cody-Waite range reduction x = n*ln2 + r with |r| <= ln2/2, ln2 split in a high and a low
  part and applied with fma; e^r - 1 from its Taylor polynomial; 2^n built from exponent bits.
- log: x = 2^k * m with m in [sqrt(1/2), sqrt(2)), then log(m) = 2*atanh(s), s = (m-1)/(m+1),
  from the (odd) Taylor series of atanh, rearranged as in fdlibm to keep the rounding error small.
- tanh: tanh|x| = -expm1(-2|x|) / (2 + expm1(-2|x|)), accurate (relatively) for tiny x and
  free of overflow; the sign is put back with copysign.
- sigmoid: e = exp(-|x|) never overflows; 1/(1+e) for x >= 0, e/(1+e) for x < 0.
- cos, sin: x = n*pi/2 + r with |r| <= pi/4 (Cody-Waite, pi/2 split in three parts applied with
  fma), then sin(r) or cos(r) from their Taylor polynomials and the sign the quadrant n mod 4
  gives; sin(x) = cos(x - pi/2) shifts the quadrant by one. The reduction is accurate while n*ulp
  of the last part of pi/2 stays small: |x| up to about 1e9 (float64), 1e5 (float32); no
  Payne-Hanek reduction for larger arguments. cos/sin of +-inf are NaN.

All polynomial coefficients are exact Taylor coefficients (1/k!, 2/(2k+1)) rounded to the working
precision; the number of terms is chosen so the truncation error stays below a quarter ulp on the
reduced interval. Special values match NumPy: exp(inf)=inf, exp(-inf)=0, log(0)=-inf, log(x<0)=nan,
log(inf)=inf, tanh(+-inf)=+-1, sigmoid(+-inf)=1/0, NaN in -> NaN out. Subnormal results are not
flushed: exp scales by 2^n in two steps, so exp(x) underflows gradually like libm (it only returns
0 below the smallest subnormal), and log accepts subnormal inputs. sigmoid(x) for very negative x
(below about -88 in float32, -708 in float64) is computed as exp(x)*(1/(1+exp(x))) and stays
relatively accurate down to the subnormal range.

No fast-math flags are set on the emitted instructions; NaN/inf handling relies on ordinary IEEE
semantics only. Out-of-range inputs are clamped with compare+select (which maps NaN into range) and
the NaN is put back with a final select, so no instruction ever sees a value that would make
`fptosi` produce poison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llvmlite import ir

SUPPORTED = frozenset({"exp", "log", "tanh", "sigmoid", "cos", "sin"})

I32 = ir.IntType(32)
LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class _Precision:
    """Everything that differs between float32 and float64."""

    int_type: ir.IntType  # integer type of the same width, for bitcasts
    mant_bits: int  # explicit mantissa bits
    bias: int  # exponent bias
    ln2_hi: float  # ln2 = ln2_hi + ln2_lo, ln2_hi rounded to the working precision
    ln2_lo: float
    exp_lo: float  # exp(x) clamps x to [exp_lo, exp_hi]: beyond, the result is 0 / inf anyway
    exp_hi: float
    expm1_terms: int  # terms of (e^r - 1)/r = 1 + r/2! + r^2/3! + ...
    atanh_terms: int  # terms of (2*atanh(s) - 2s)/s^3 = 2/3 + 2/5 s^2 + ...
    tanh_clamp: float  # tanh(x) rounds to 1 for |x| >= tanh_clamp
    min_normal: float
    subnormal_shift: int  # log scales subnormal inputs by 2^subnormal_shift
    sqrt_half_bits: int  # bit pattern of sqrt(1/2)
    pio2: tuple[float, float, float]  # pi/2 = hi + mid + lo, each rounded to the working precision
    sin_terms: int  # terms of sin(r)/r = 1 - r^2/3! + ...
    cos_terms: int  # terms of cos(r) = 1 - r^2/2! + ...
    trig_max: float  # |x| beyond this: the reduction has lost the result (and n would overflow)


_F32 = _Precision(
    int_type=ir.IntType(32),
    mant_bits=23,
    bias=127,
    ln2_hi=0.6931471824645996,  # float32(ln2)
    ln2_lo=-1.9046542121259336e-09,  # float32(ln2 - ln2_hi)
    exp_lo=-104.0,  # exp(-104) < half the smallest subnormal (7e-46)
    exp_hi=89.0,  # exp(89) > FLT_MAX
    expm1_terms=7,  # truncation r^7/8! < 1.6e-8 for |r| <= ln2/2
    atanh_terms=4,  # truncation z^5/11 < 2.1e-9 for z = s^2 <= 0.0295
    tanh_clamp=10.0,
    min_normal=2.0**-126,
    subnormal_shift=24,
    sqrt_half_bits=0x3F3504F3,
    pio2=(1.5707963705062866, -4.371138828673793e-08, -1.7151245100058819e-15),
    sin_terms=6,  # truncation r^13/13! < 3e-12 for |r| <= pi/4
    cos_terms=6,  # truncation r^12/12! < 1.1e-10
    trig_max=1e9,
)

_F64 = _Precision(
    int_type=ir.IntType(64),
    mant_bits=52,
    bias=1023,
    ln2_hi=0.6931471805599453,  # float64(ln2)
    ln2_lo=2.3190468138462996e-17,  # ln2 - ln2_hi
    exp_lo=-746.0,  # exp(-746) < half the smallest subnormal (2.5e-324)
    exp_hi=710.0,  # exp(710) > DBL_MAX
    expm1_terms=13,  # truncation r^13/14! < 1.3e-17
    atanh_terms=9,  # truncation z^10/21 < 2.4e-17
    tanh_clamp=20.0,
    min_normal=2.0**-1022,
    subnormal_shift=54,
    sqrt_half_bits=0x3FE6A09E667F3BCD,
    pio2=(1.5707963267948966, 6.123233995736766e-17, -1.4973849048591698e-33),
    sin_terms=9,  # truncation r^19/19! < 1e-19
    cos_terms=10,  # truncation r^20/20! < 3.4e-21
    trig_max=1e15,
)

_EXPM1_COEFFS = tuple(1.0 / math.factorial(k + 1) for k in range(_F64.expm1_terms))
_ATANH_COEFFS = tuple(2.0 / (2 * k + 3) for k in range(_F64.atanh_terms))
_SIN_COEFFS = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(_F64.sin_terms))
_COS_COEFFS = tuple((-1) ** k / math.factorial(2 * k) for k in range(_F64.cos_terms))


def emit(builder: ir.IRBuilder, name: str, x: ir.Value) -> ir.Value:
    """`name`(x) for a float or double scalar `x`, as inline straight-line IR at the builder's position."""
    if name not in SUPPORTED:
        raise ValueError(f"mathlib: unsupported function {name!r}; expected one of {sorted(SUPPORTED)}")
    if not isinstance(x.type, (ir.FloatType, ir.DoubleType)):
        raise TypeError(f"mathlib.{name}: expected a float or double value, got {x.type}")
    ops = _Ops(builder, x.type)
    return _FUNCTIONS[name](ops, x)


class _Ops:
    """Thin helpers over the IRBuilder for one floating-point type."""

    def __init__(self, builder: ir.IRBuilder, ftype: ir.Type):
        self.b = builder
        self.t = ftype
        self.p = _F64 if isinstance(ftype, ir.DoubleType) else _F32

    def const(self, value: float) -> ir.Constant:
        return ir.Constant(self.t, value)

    def iconst(self, value: int) -> ir.Constant:
        return ir.Constant(self.p.int_type, value)

    def intrinsic(self, name: str, *args: ir.Value, label: str = "") -> ir.Value:
        """Call llvm.<name>.f32/.f64, declaring it once per module (an existing declaration is reused)."""
        fnty = ir.FunctionType(self.t, [self.t] * len(args))
        fn = self.b.module.declare_intrinsic(name, [self.t], fnty)
        return self.b.call(fn, args, name=label)

    def fma(self, a: ir.Value, b: ir.Value, c: ir.Value, label: str = "") -> ir.Value:
        return self.intrinsic("llvm.fma", a, b, c, label=label)

    def horner(self, x: ir.Value, coeffs: tuple[float, ...], label: str) -> ir.Value:
        """coeffs[0] + x*(coeffs[1] + x*(...)) in Horner form, one fma per step."""
        acc: ir.Value = self.const(coeffs[-1])
        for c in reversed(coeffs[:-1]):
            acc = self.fma(acc, x, self.const(c), label=label)
        return acc

    def clamp(self, x: ir.Value, lo: float, hi: float, label: str) -> ir.Value:
        """min(max(x, lo), hi) as compare+select (x86 max/min semantics); NaN becomes `lo`."""
        b = self.b
        x = b.select(b.fcmp_ordered(">", x, self.const(lo)), x, self.const(lo), name=f"{label}.lo")
        return b.select(b.fcmp_ordered("<", x, self.const(hi)), x, self.const(hi), name=label)

    def nan_passthrough(self, x: ir.Value, result: ir.Value, label: str) -> ir.Value:
        """`x` where x is NaN, else `result`."""
        return self.b.select(self.b.fcmp_unordered("uno", x, x), x, result, name=label)

    def pow2(self, n: ir.Value, label: str) -> ir.Value:
        """2.0**n for an i32 `n` in the normal exponent range, by writing the exponent bits."""
        b = self.b
        biased = b.add(n, ir.Constant(I32, self.p.bias), name=f"{label}.biased")
        if self.p.int_type.width != 32:
            biased = b.zext(biased, self.p.int_type, name=f"{label}.wide")
        bits = b.shl(biased, self.iconst(self.p.mant_bits), name=f"{label}.bits")
        return b.bitcast(bits, self.t, name=label)


def _expm1_reduced(ops: _Ops, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """Cody-Waite reduction for exp: returns (n, p) with e^x = 2^n * (1 + p), n an i32 and
    p = e^r - 1, r = x - n*ln2, |r| <= ln2/2 (plus rounding). `x` must already be clamped so that
    n fits the caller's use. p = r * (1 + r/2! + r^2/3! + ...) is relatively accurate for tiny r."""
    b, p = ops.b, ops.p
    nf = ops.intrinsic("llvm.rint", b.fmul(x, ops.const(LOG2E), name="exp.xlog2e"), label="exp.nf")
    minus_nf = b.fneg(nf, name="exp.minus_nf")
    r = ops.fma(minus_nf, ops.const(p.ln2_hi), x, label="exp.r_hi")
    r = ops.fma(minus_nf, ops.const(p.ln2_lo), r, label="exp.r")
    poly = ops.horner(r, _EXPM1_COEFFS[: p.expm1_terms], label="exp.poly")
    expm1_r = b.fmul(r, poly, name="exp.expm1_r")
    n = b.fptosi(nf, I32, name="exp.n")
    return n, expm1_r


def _exp(ops: _Ops, x: ir.Value) -> ir.Value:
    """e^x: Cody-Waite reduction + Taylor polynomial (see `_expm1_reduced`), then the scaling by
    2^n done as two factors 2^(n//2) * 2^(n - n//2), so results near overflow and in the subnormal
    range are right (no flush to zero). x is clamped to [exp_lo, exp_hi] first; beyond those the
    result is already inf or 0, which the clamped computation reproduces."""
    b, p = ops.b, ops.p
    xc = ops.clamp(x, p.exp_lo, p.exp_hi, label="exp.x")
    n, expm1_r = _expm1_reduced(ops, xc)
    n_half = b.ashr(n, ir.Constant(I32, 1), name="exp.n1")
    scale1 = ops.pow2(n_half, label="exp.scale1")
    scale2 = ops.pow2(b.sub(n, n_half, name="exp.n2"), label="exp.scale2")
    y = b.fmul(ops.fma(expm1_r, scale1, scale1, label="exp.y1"), scale2, name="exp.y")
    return ops.nan_passthrough(x, y, label="exp")


def _log(ops: _Ops, x: ir.Value) -> ir.Value:
    """log(x): split x = 2^k * m with m in [sqrt(1/2), sqrt(2)) using integer ops on the bits
    (subnormals are first scaled into the normal range), then with f = m - 1, s = f/(2+f):
    log(m) = 2*atanh(s) = f - s*(f - R), R = s^2*(2/3 + 2/5 s^2 + ...) (fdlibm's rearrangement),
    and log(x) = k*ln2_hi + (k*ln2_lo + log(m)). Zero, negative, inf and NaN inputs are selected
    at the end."""
    b, p = ops.b, ops.p
    tiny = b.fcmp_ordered("<", x, ops.const(p.min_normal), name="log.tiny")
    scaled = b.fmul(x, ops.const(2.0**p.subnormal_shift), name="log.scaled")
    xs = b.select(tiny, scaled, x, name="log.xs")
    k_adjust = b.select(tiny, ir.Constant(I32, -p.subnormal_shift), ir.Constant(I32, 0), name="log.kadj")

    # bits + (bias << mant_bits) - bits(sqrt(1/2)): the exponent field then holds k + bias with
    # m in [sqrt(1/2), sqrt(2)), and only unsigned shifts are needed.
    offset = (p.bias << p.mant_bits) - p.sqrt_half_bits
    shifted = b.add(b.bitcast(xs, p.int_type, name="log.bits"), ops.iconst(offset), name="log.shifted")
    k_biased = b.lshr(shifted, ops.iconst(p.mant_bits), name="log.kbiased")
    if p.int_type.width != 32:
        k_biased = b.trunc(k_biased, I32, name="log.kbiased32")
    k = b.add(b.sub(k_biased, ir.Constant(I32, p.bias), name="log.k0"), k_adjust, name="log.k")
    mant = b.and_(shifted, ops.iconst((1 << p.mant_bits) - 1), name="log.mantbits")
    m = b.bitcast(b.add(mant, ops.iconst(p.sqrt_half_bits), name="log.mbits"), ops.t, name="log.m")

    f = b.fsub(m, ops.const(1.0), name="log.f")
    s = b.fdiv(f, b.fadd(f, ops.const(2.0), name="log.fplus2"), name="log.s")
    z = b.fmul(s, s, name="log.z")
    big_r = b.fmul(z, ops.horner(z, _ATANH_COEFFS[: p.atanh_terms], label="log.poly"), name="log.R")
    log_m = ops.fma(b.fneg(s, name="log.minus_s"), b.fsub(f, big_r, name="log.f_minus_R"), f, label="log.logm")
    kf = b.sitofp(k, ops.t, name="log.kf")
    y = ops.fma(kf, ops.const(p.ln2_hi), ops.fma(kf, ops.const(p.ln2_lo), log_m, label="log.lo"), label="log.y")

    y = b.select(b.fcmp_ordered("==", x, ops.const(math.inf)), ops.const(math.inf), y, name="log.inf")
    y = b.select(b.fcmp_ordered("==", x, ops.const(0.0)), ops.const(-math.inf), y, name="log.zero")
    y = b.select(b.fcmp_ordered("<", x, ops.const(0.0)), ops.const(math.nan), y, name="log.neg")
    return ops.nan_passthrough(x, y, label="log")


def _tanh(ops: _Ops, x: ir.Value) -> ir.Value:
    """tanh(x) = sign(x) * -em1 / (2 + em1) with em1 = expm1(-2|x|) in (-1, 0]: no cancellation,
    no overflow, and relatively accurate for tiny x (em1 ~ -2|x|). expm1 reuses exp's Cody-Waite
    reduction: expm1(y) = 2^n * p + (2^n - 1). |x| is clamped where tanh rounds to 1."""
    b, p = ops.b, ops.p
    a = ops.clamp(ops.intrinsic("llvm.fabs", x, label="tanh.abs"), 0.0, p.tanh_clamp, label="tanh.a")
    n, expm1_r = _expm1_reduced(ops, b.fmul(a, ops.const(-2.0), name="tanh.minus2a"))
    scale = ops.pow2(n, label="tanh.scale")
    em1 = ops.fma(expm1_r, scale, b.fsub(scale, ops.const(1.0), name="tanh.scale_m1"), label="tanh.em1")
    t = b.fdiv(b.fneg(em1, name="tanh.num"), b.fadd(em1, ops.const(2.0), name="tanh.den"), name="tanh.abs_y")
    y = ops.intrinsic("llvm.copysign", t, x, label="tanh.y")
    return ops.nan_passthrough(x, y, label="tanh")


def _sigmoid(ops: _Ops, x: ir.Value) -> ir.Value:
    """sigmoid(x) = 1/(1+e) for x >= 0 and e/(1+e) for x < 0, with e = exp(-|x|) in (0, 1]: never
    overflows, and stays relatively accurate for very negative x. NaN propagates through exp."""
    b = ops.b
    e = _exp(ops, b.fneg(ops.intrinsic("llvm.fabs", x, label="sigmoid.abs"), name="sigmoid.minus_abs"))
    t = b.fdiv(ops.const(1.0), b.fadd(e, ops.const(1.0), name="sigmoid.den"), name="sigmoid.pos")
    negative = b.fcmp_ordered("<", x, ops.const(0.0), name="sigmoid.negative")
    return b.select(negative, b.fmul(e, t, name="sigmoid.neg"), t, name="sigmoid")


def _cos_quadrant(ops: _Ops, x: ir.Value, shift: int, label: str) -> ir.Value:
    """cos(x - shift * pi/2): x = n*pi/2 + r, then by the quadrant (n - shift) mod 4 one of cos(r),
    -sin(r), -cos(r), sin(r). x is clamped first so that n stays an exact small integer; the
    result is NaN for +-inf and NaN."""
    b, p = ops.b, ops.p
    xc = ops.clamp(x, -p.trig_max, p.trig_max, label=f"{label}.x")
    nf = ops.intrinsic("llvm.rint", b.fmul(xc, ops.const(2.0 / math.pi), name=f"{label}.x2pi"), label=f"{label}.nf")
    minus_nf = b.fneg(nf, name=f"{label}.minus_nf")
    r = xc
    for part, value in zip(("hi", "mid", "lo"), p.pio2):
        r = ops.fma(minus_nf, ops.const(value), r, label=f"{label}.r_{part}")
    z = b.fmul(r, r, name=f"{label}.z")
    sin_r = b.fmul(r, ops.horner(z, _SIN_COEFFS[: p.sin_terms], label=f"{label}.sinpoly"), name=f"{label}.sin_r")
    cos_r = ops.horner(z, _COS_COEFFS[: p.cos_terms], label=f"{label}.cospoly")
    wide = ir.IntType(64)
    quadrant = b.and_(b.add(b.fptosi(nf, wide, name=f"{label}.n"), ir.Constant(wide, 4 - shift)), ir.Constant(wide, 3),
                      name=f"{label}.quadrant")  # fmt: skip
    odd = b.icmp_unsigned("==", b.and_(quadrant, ir.Constant(wide, 1)), ir.Constant(wide, 1), name=f"{label}.odd")
    flip = b.icmp_unsigned("!=", b.and_(b.add(quadrant, ir.Constant(wide, 1)), ir.Constant(wide, 2)),
                           ir.Constant(wide, 0), name=f"{label}.flip")  # fmt: skip
    y = b.select(odd, sin_r, cos_r, name=f"{label}.abs")
    y = b.select(flip, b.fneg(y, name=f"{label}.neg"), y, name=f"{label}.y")
    infinite = b.fcmp_ordered("==", ops.intrinsic("llvm.fabs", x, label=f"{label}.absx"), ops.const(math.inf))
    y = b.select(infinite, ops.const(math.nan), y, name=f"{label}.inf")
    return ops.nan_passthrough(x, y, label=label)


def _cos(ops: _Ops, x: ir.Value) -> ir.Value:
    return _cos_quadrant(ops, x, 0, "cos")


def _sin(ops: _Ops, x: ir.Value) -> ir.Value:
    """sin(x) = cos(x - pi/2); sin(-0) stays -0."""
    y = _cos_quadrant(ops, x, 1, "sin")
    return ops.b.select(ops.b.fcmp_ordered("==", x, ops.const(0.0)), x, y, name="sin")


_FUNCTIONS = {"exp": _exp, "log": _log, "tanh": _tanh, "sigmoid": _sigmoid, "cos": _cos, "sin": _sin}

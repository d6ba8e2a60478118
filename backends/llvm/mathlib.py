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
- expm1: exp's reduction, then 2^n * p + (2^n - 1), relatively accurate for tiny x.
- erf: an odd series below 1, polynomials around the centers of unit intervals up to its limit,
  +-1 beyond (float32 in float32: fitted polynomials, the last step rounded once).
- sin, cos, pow are computed in double precision (for float32 too, rounded once at the end).
  sin, cos: x = (n + f) * pi/2 reduced for any finite x (Payne-Hanek style: 2/pi in 53-bit
  chunks, double-double sums), Taylor polynomials of sin r and cos r, the sign from the quadrant
  n mod 4. pow: exp(y log|x|) with NumPy's special cases.

All polynomial coefficients but float32 erf's are exact Taylor coefficients (1/k!, 2/(2k+1))
rounded to the working precision; the number of terms is chosen so the truncation error stays below a quarter ulp on the
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

import functools
import math
import struct
from dataclasses import dataclass
from fractions import Fraction

from llvmlite import ir

SUPPORTED = frozenset({"exp", "expm1", "log", "tanh", "sigmoid", "erf", "sin", "cos", "pow"})

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
)

_EXPM1_COEFFS = tuple(1.0 / math.factorial(k + 1) for k in range(_F64.expm1_terms))
_ATANH_COEFFS = tuple(2.0 / (2 * k + 3) for k in range(_F64.atanh_terms))


def emit(builder: ir.IRBuilder, name: str, *args: ir.Value) -> ir.Value:
    """`name`(*args) for float or double scalars (one argument; pow takes two of one type), as
    inline straight-line IR at the builder's position."""
    if name not in SUPPORTED:
        raise ValueError(f"mathlib: unsupported function {name!r}; expected one of {sorted(SUPPORTED)}")
    if not all(isinstance(a.type, (ir.FloatType, ir.DoubleType)) and a.type == args[0].type for a in args):
        raise TypeError(
            f"mathlib.{name}: expected float or double values of one type, got {[str(a.type) for a in args]}"
        )
    ops = _Ops(builder, args[0].type)
    return _FUNCTIONS[name](ops, *args)


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

    def select(self, condition: ir.Value, x: ir.Value, y: ir.Value, label: str = "") -> ir.Value:
        return self.b.select(condition, x, y, name=label)

    def less(self, x: ir.Value, value: float, label: str = "") -> ir.Value:
        return self.b.fcmp_ordered("<", x, self.const(value), name=label)

    def rint(self, x: ir.Value, label: str = "") -> ir.Value:
        return self.intrinsic("llvm.rint", x, label=label)

    def wide(self) -> _Ops:
        """The same builder on doubles: float32 functions that compute in double precision."""
        return _Ops(self.b, ir.DoubleType())

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


def _expm1(ops: _Ops, x: ir.Value) -> ir.Value:
    """e^x - 1 = 2^n * p + (2^n - 1) after exp's reduction (tanh's formula), relatively accurate
    for tiny x. x is clamped to [-expm1_lo, 80] (below, the result rounds to -1); above 80 the -1
    no longer matters and exp(x) itself is returned."""
    b, p = ops.b, ops.p
    low = -30.0 if p is _F32 else -60.0
    n, expm1_r = _expm1_reduced(ops, ops.clamp(x, low, 80.0, label="expm1.x"))
    scale = ops.pow2(n, label="expm1.scale")
    y = ops.fma(expm1_r, scale, b.fsub(scale, ops.const(1.0), name="expm1.scale_m1"), label="expm1.y")
    y = ops.select(b.fcmp_ordered(">", x, ops.const(80.0)), _exp(ops, x), y, label="expm1.big")
    y = ops.select(ops.less(ops.intrinsic("llvm.fabs", x), 2.0**-60), x, y, label="expm1.tiny")  # keeps -0.0
    return ops.nan_passthrough(x, y, label="expm1")


def _in_double(function):
    """A function computed in double precision for float32 arguments too (rounded once at the
    end): the double code's error is far below half a float32 ulp, so float32 results are
    correctly rounded but for inputs within a hair of a rounding boundary. `function(ops,
    target, *args)` gets double ops and the precision of the result (`target`), so it can stop
    its series earlier for float32."""

    def wrapped(ops: _Ops, *args: ir.Value) -> ir.Value:
        if ops.p is _F64:
            return function(ops, _F64, *args)
        wide = ops.wide()
        result = function(wide, _F32, *(ops.b.fpext(a, wide.t, name=f"{function.__name__}.wide") for a in args))
        return ops.b.fptrunc(result, ops.t, name=function.__name__)

    wrapped.__name__ = function.__name__
    return wrapped


# erf: |x| < 1 from the odd series erf(x) = x * P(x^2); 1 <= |x| < LIMIT from polynomials in
# u = |x| - c around the centers c of unit intervals; beyond LIMIT erf rounds to +-1.
# float64: P's exact Taylor coefficients c_k = 2/sqrt(pi) (-1)^k / (k! (2k + 1)), and around the
# centers the exact Taylor coefficients erf^(n)(c) / n! = 2/sqrt(pi) (-1)^(n-1) H_{n-1}(c) e^(-c^2)
# / n! (H the Hermite polynomials, computed in exact rational arithmetic), each piece with enough
# terms that its truncation error is below 2^-54 relative, measured on a fine grid.
# float32: evaluated in float32 (16 lanes per AVX-512 vector where double would take 8, and fewer
# terms) from least-squares fits on 400 Chebyshev nodes of each interval, in float64 (numpy's
# polyfit, weights 1/|erf|), whose relative error is below 2.1e-9 (2^-28.8) on a fine grid, so
# that the float32 rounding of the evaluation is what is left.
@dataclass(frozen=True)
class _ErfPieces:
    centers: tuple[float, ...]
    tables: tuple[tuple[float, ...], ...]  # the odd series' coefficients, then one table per center

    @property
    def limit(self) -> float:
        return self.centers[-1] + 0.5


def _erf_odd_coefficients(terms: int) -> tuple[float, ...]:
    return tuple(2.0 / math.sqrt(math.pi) * (-1) ** k / (math.factorial(k) * (2 * k + 1)) for k in range(terms))


@functools.cache
def _erf_taylor_coefficients(center: float, terms: int) -> tuple[float, ...]:
    """erf(center + u) = sum_n a_n u^n: a_0 = erf(center), a_n from the Hermite polynomials."""
    c = Fraction(center)
    hermite = [[Fraction(1)], [Fraction(0), Fraction(2)]]  # physicists': H0 = 1, H1 = 2x
    for k in range(1, terms):
        up = [Fraction(0)] + [2 * v for v in hermite[k]]
        down = [2 * k * v for v in hermite[k - 1]] + [Fraction(0)] * (len(up) - len(hermite[k - 1]))
        hermite.append([a - d for a, d in zip(up, down)])
    scale = 2.0 / math.sqrt(math.pi) * math.exp(-center * center)
    coefficients = [math.erf(center)]
    for n in range(1, terms):
        value = sum(v * c**j for j, v in enumerate(hermite[n - 1])) / math.factorial(n)
        coefficients.append(float((-1) ** (n - 1) * value) * scale)
    return tuple(coefficients)


@functools.cache
def _erf_pieces(target: _Precision) -> _ErfPieces:
    if target is _F64:
        centers = (1.5, 2.5, 3.5, 4.5, 5.5)
        tables = (_erf_odd_coefficients(19),) + tuple(_erf_taylor_coefficients(c, 22) for c in centers)
        return _ErfPieces(centers, tables)
    return _ErfPieces((1.5, 2.5, 3.5), _ERF_FLOAT32_FITS)


_ERF_FLOAT32_FITS = (
    (1.1283791656893227, -0.3761262556739916, 0.11283582247992215, -0.02685369109969131,
     0.005188098889363052, -0.0008008189322875876, 7.847259126165183e-05),
    (0.9661051463909367, 0.11893028673491991, -0.1783954163320903, 0.1387522046323211, -0.044599451248960864,
     -0.014870810275316058, 0.01933344865610714, -0.004701337922231746, -0.002401968508016874,
     0.001540724783177565),
    (0.9995930481178115, 0.002178318042784333, -0.005445737569004963, 0.008348284482217947,
     -0.008621509315574457, 0.006143388028808476, -0.0028082740557721425, 0.0004030272515448438,
     0.00030643854930746136),
    (0.9999992580237069, 5.397294314795765e-06, -1.9041022607389623e-05, 4.240916974389176e-05,
     -6.487727886362891e-05, 8.048139714260459e-05, -9.566444012978192e-05, 6.689077378275222e-05),
)  # fmt: skip


def _erf(ops: _Ops, x: ir.Value) -> ir.Value:
    """erf: one Horner chain whose coefficients each lane picks by its piece (selects, no
    branches), then the sign of x; NaN stays NaN, +-inf give +-1, -0.0 gives -0.0.

    float32 rounds where float64 has bits to spare, so its last step is arranged to round once
    on a small correction: x + x*(P(x^2) - 1) below 1 (P - 1 is at most 0.16 there), and
    hi + (lo + u*Q(u)) around the centers, where hi + lo is the constant term erf(c) in two
    floats (rounded to one float it would be off by up to half an ulp by itself)."""
    b, pieces = ops.b, _erf_pieces(ops.p)
    a = ops.intrinsic("llvm.fabs", x, label="erf.a")
    length = max(len(t) for t in pieces.tables)
    tables = [t + (0.0,) * (length - len(t)) for t in pieces.tables]
    # piece i holds a < bounds[i]; the last one takes the rest (NaN included)
    below = [ops.less(a, 1.0 + i, label=f"erf.below{i + 1}") for i in range(len(tables) - 1)]

    def pick(values: list[float], label: str) -> ir.Value:
        picked = ops.const(values[-1])
        for i in reversed(range(len(values) - 1)):
            picked = ops.select(below[i], ops.const(values[i]), picked, label=label)
        return picked

    center = pick([0.0] + list(pieces.centers), "erf.center")
    u = ops.select(below[0], b.fmul(a, a, name="erf.z"), b.fsub(a, center, name="erf.u0"), label="erf.u")
    acc = pick([t[-1] for t in tables], "erf.c")
    for k in reversed(range(1, length - 1)):
        acc = ops.fma(acc, u, pick([t[k] for t in tables], f"erf.c{k}"), label="erf.poly")
    if ops.p is _F64:
        acc = ops.fma(acc, u, pick([t[0] for t in tables], "erf.c0"), label="erf.poly")
        y = ops.select(below[0], b.fmul(a, acc, name="erf.odd"), acc, label="erf.abs")
    else:
        hi = [1.0] + [_to_float32(t[0]) for t in tables[1:]]
        lo = [tables[0][0] - 1.0] + [t[0] - h for t, h in zip(tables[1:], hi[1:])]
        tail = ops.fma(acc, u, pick(lo, "erf.lo"), label="erf.tail")
        scale = ops.select(below[0], a, ops.const(1.0), label="erf.scale")
        base = ops.select(below[0], a, pick([0.0] + hi[1:], "erf.hi"), label="erf.base")
        y = ops.fma(scale, tail, base, label="erf.abs")
    y = ops.select(b.fcmp_ordered(">=", a, ops.const(pieces.limit)), ops.const(1.0), y, label="erf.one")
    return ops.intrinsic("llvm.copysign", y, x, label="erf")


def _to_float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def _two_over_pi(bits: int) -> int:
    """floor(2/pi * 2^bits), with pi from Machin's formula (pi = 16 atan(1/5) - 4 atan(1/239)) in
    integer arithmetic, 64 guard bits."""
    one = 1 << (bits + 64)

    def arctan_inverse(n: int) -> int:  # atan(1/n) * one
        total, power, k, sign = 0, one // n, 1, 1
        while power:
            total += sign * (power // k)
            power //= n * n
            k, sign = k + 2, -sign
        return total

    pi = 16 * arctan_inverse(5) - 4 * arctan_inverse(239)
    return (2 << bits) * one // pi


@functools.cache
def _two_over_pi_chunks(count: int) -> tuple[float, ...]:
    """2/pi as `count` doubles of 53 bits each, most significant first (their sum is 2/pi
    truncated after 53 * count bits)."""
    bits = _two_over_pi(53 * count)
    mask = (1 << 53) - 1
    return tuple(math.ldexp(float((bits >> (53 * (count - 1 - i))) & mask), -53 * (i + 1)) for i in range(count))


# sin/cos: chunks of 2/pi per target precision: 4 cover float32 (|x| < 2^128) with 64 bits to
# spare after the point; 5 cover float64 for |x| < 2^200 (beyond, the reduction loses bits).
_TRIG_CHUNKS = {_F32: 4, _F64: 5}
_SIN_TERMS = {_F32: 6, _F64: 9}  # sin r = r * sum_k (-1)^k r^2k / (2k+1)!, |r| <= pi/4
_COS_TERMS = {_F32: 7, _F64: 10}  # cos r = sum_k (-1)^k r^2k / (2k)!
PIO2_HI = 1.5707963267948966  # pi/2 = PIO2_HI + PIO2_LO
PIO2_LO = 6.123233995736766e-17


def _two_sum(ops: _Ops, a: ir.Value, b_: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(s, e) with s = fl(a + b) and a + b = s + e exactly (Knuth)."""
    b = ops.b
    s = b.fadd(a, b_, name="trig.s")
    bb = b.fsub(s, a, name="trig.bb")
    e = b.fadd(b.fsub(a, b.fsub(s, bb)), b.fsub(b_, bb), name="trig.e")
    return s, e


def _quarter_turns(ops: _Ops, target: _Precision, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """x = (n + f) * pi/2 with n an i32 (only n mod 4 matters) and |f| <= 1/2 (plus rounding), for
    any finite x (Payne-Hanek style): x * 2/pi is summed chunk by chunk, each product split
    exactly into two doubles with an fma and reduced mod 4 (exactly), in double-double."""
    b = ops.b
    s, e = ops.const(0.0), ops.const(0.0)
    for i, chunk in enumerate(_two_over_pi_chunks(_TRIG_CHUNKS[target])):
        hi = b.fmul(x, ops.const(chunk), name=f"trig.hi{i}")
        lo = ops.fma(x, ops.const(chunk), b.fneg(hi), label=f"trig.lo{i}")
        for part in (hi, lo):
            quarter = ops.rint(b.fmul(part, ops.const(0.25)), label="trig.turns")
            reduced = ops.fma(quarter, ops.const(-4.0), part, label="trig.reduced")  # exact
            s, err = _two_sum(ops, s, reduced)
            e = b.fadd(e, err, name="trig.err")
    n = ops.rint(s, label="trig.n")
    f = b.fadd(b.fsub(s, n, name="trig.f_hi"), e, name="trig.f")
    return b.fptosi(n, I32, name="trig.quadrant"), f


def _sin_cos_reduced(ops: _Ops, target: _Precision, r: ir.Value) -> tuple[ir.Value, ir.Value]:
    b = ops.b
    z = b.fmul(r, r, name="trig.z")
    sin_coeffs = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(_SIN_TERMS[target]))
    cos_coeffs = tuple((-1) ** k / math.factorial(2 * k) for k in range(_COS_TERMS[target]))
    sin_r = b.fmul(r, ops.horner(z, sin_coeffs, label="sin.poly"), name="sin.r")
    return sin_r, ops.horner(z, cos_coeffs, label="cos.r")


def _trig(ops: _Ops, target: _Precision, x: ir.Value, shift: int) -> ir.Value:
    """sin (shift 0) or cos (shift 1) of x: quadrant q = n + shift mod 4 picks +-sin r or +-cos r."""
    b = ops.b
    quadrant, f = _quarter_turns(ops, target, x)
    r = ops.fma(f, ops.const(PIO2_HI), b.fmul(f, ops.const(PIO2_LO)), label="trig.r")
    sin_r, cos_r = _sin_cos_reduced(ops, target, r)
    q = b.add(quadrant, ir.Constant(I32, shift), name="trig.q")
    odd = b.icmp_unsigned("!=", b.and_(q, ir.Constant(I32, 1)), ir.Constant(I32, 0), name="trig.odd")
    negative = b.icmp_unsigned("!=", b.and_(q, ir.Constant(I32, 2)), ir.Constant(I32, 0), name="trig.negative")
    y = ops.select(odd, cos_r, sin_r, label="trig.y")
    y = ops.select(negative, b.fneg(y), y, label="trig.signed")
    # tiny |x|: sin x = x (keeps -0.0), cos x = 1
    tiny = ops.less(ops.intrinsic("llvm.fabs", x), 2.0**-30, label="trig.tiny")
    return ops.select(tiny, x if shift == 0 else ops.const(1.0), y, label="trig")


@_in_double
def _sin(ops: _Ops, target: _Precision, x: ir.Value) -> ir.Value:
    return _trig(ops, target, x, 0)


@_in_double
def _cos(ops: _Ops, target: _Precision, x: ir.Value) -> ir.Value:
    return _trig(ops, target, x, 1)


@_in_double
def _pow(ops: _Ops, target: _Precision, x: ir.Value, y: ir.Value) -> ir.Value:
    """x^y = exp(y log|x|), then np.power's special cases: the sign for a negative x and an odd
    integer y, NaN for a finite negative x and a non-integer y, 1 for y == 0 and for x == 1 (even with
    NaN), 1 for |x| == 1 with an infinite y. In float64 the error grows with |y log x| (about
    that many ulps); float32 is computed in double and stays within an ulp."""
    b = ops.b
    one = ops.const(1.0)
    ax = ops.intrinsic("llvm.fabs", x, label="pow.ax")
    r = _exp(ops, b.fmul(y, _log(ops, ax), name="pow.ylogx"))
    integer = b.fcmp_ordered("==", ops.rint(y), y, name="pow.integer")
    half = ops.rint(b.fmul(y, ops.const(0.5)))
    odd = b.and_(integer, b.fcmp_ordered("!=", b.fmul(half, ops.const(2.0)), y), name="pow.odd")
    sign_bit = ops.less(ops.intrinsic("llvm.copysign", one, x), 0.0, label="pow.signbit")
    r = ops.select(b.and_(sign_bit, odd), b.fneg(r), r, label="pow.signed")
    negative = b.and_(ops.less(x, 0.0), b.fcmp_ordered(">", x, ops.const(-math.inf)), name="pow.negative")
    r = ops.select(b.and_(negative, b.not_(integer)), ops.const(math.nan), r, label="pow.domain")
    unit_inf = b.and_(b.fcmp_ordered("==", ax, one), b.fcmp_ordered("==", ops.intrinsic("llvm.fabs", y),
                                                                      ops.const(math.inf)))  # fmt: skip
    ones = b.or_(b.or_(b.fcmp_ordered("==", y, ops.const(0.0)), b.fcmp_ordered("==", x, one)), unit_inf)
    return ops.select(ones, one, r, label="pow")


_FUNCTIONS = {
    "exp": _exp, "expm1": _expm1, "log": _log, "tanh": _tanh, "sigmoid": _sigmoid,
    "erf": _erf, "sin": _sin, "cos": _cos, "pow": _pow,
}  # fmt: skip

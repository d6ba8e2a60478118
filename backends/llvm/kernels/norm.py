"""Fused kernels of layer_norm and rms_norm (ops/norm.py), forward and backward: per row, one
loop accumulates every sum the row needs at once (vectorized: the sums carry `reassoc`), a second
writes the result. Rows are shared out over the threads when there are enough of them.

The variance comes from sums of x - x[0] and its square: one pass instead of two, and shifting by
an element of the row keeps the subtraction E[d^2] - E[d]^2 from cancelling catastrophically
when the mean is large compared with the spread."""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from ....ops.norm import LayerNorm, LayerNormGrad, RMSNorm, RMSNormGrad
from ..irutil import element_count, for_range, i64
from ..lowering import kernel
from .nn import entry_alloca

ROWS_MIN_WORK = 1 << 15  # elements: below this one thread normalizes every row


def _sums(ctx, f, n: int, count: int, terms: Callable[[ir.Value], list[ir.Value]], name: str) -> list[ir.Value]:
    """The sums over j < n of each of the `count` values terms(j), accumulated in one loop."""
    b = ctx.b
    slots = [entry_alloca(b, f.type, f"{name}.acc{i}") for i in range(count)]  # promoted to registers
    for slot in slots:
        b.store(f.const(0.0), slot)
    with for_range(b, i64(n), f"{name}.j") as j:
        for slot, value in zip(slots, terms(j), strict=True):
            b.store(f.accumulate("add", b.load(slot), value), slot)
    return [b.load(slot, name=f"{name}.sum{i}") for i, slot in enumerate(slots)]


def _row_kernel(k, node, row_body) -> None:
    """row_body(ctx, f, base, n) for every row of `node`, rows shared out over the threads."""
    op = node.op
    n = op.row_size(node.shape)
    rows = element_count(k.b, node.shape[: op.axes[0]], k.batch)
    worth = k.b.icmp_unsigned(">=", k.b.mul(rows, i64(n)), i64(ROWS_MIN_WORK), name="rows.worth")

    def span(ctx, lo, hi):
        f = ctx.scalar(node)
        with for_range(ctx.b, hi, "row", start=lo) as row:
            row_body(ctx, f, ctx.b.mul(row, i64(n), name="base"), n)

    k.parallel_for("rows", rows, span, worth)


def _shifted_moments(ctx, f, x, base, n: int, extra=None, extras: int = 0, name: str = "stats"):
    """(shift, mean of d, variance, extra sums) of a row, d = x - x[base]; `extra(d, j)` adds
    `extras` more terms to the same loop."""
    b = ctx.b
    shift = ctx.load(x, base)

    def terms(j):
        d = f.sub(ctx.load(x, b.add(base, j)), shift)
        return [d, f.mul(d, d)] + (extra(d, j) if extra else [])

    sums = _sums(ctx, f, n, 2 + extras, terms, name)
    inv_n = f.const(1.0 / n)
    mean_d = f.mul(sums[0], inv_n)
    var = f.maximum(f.sub(f.mul(sums[1], inv_n), f.mul(mean_d, mean_d)), f.const(0.0))
    return shift, mean_d, var, sums[2:]


def _rstd(f, mean_square, eps: float):
    return f.div(f.const(1.0), f.sqrt(f.add(mean_square, f.const(eps))))


@kernel(LayerNorm)
def _layer_norm(k, node):
    (x,) = node.inputs

    def row(ctx, f, base, n):
        b = ctx.b
        shift, mean_d, var, _ = _shifted_moments(ctx, f, x, base, n)
        mean, rstd = f.add(shift, mean_d), _rstd(f, var, node.op.eps)
        with for_range(b, i64(n), "write") as j:
            at = b.add(base, j)
            ctx.store(node, at, f.mul(f.sub(ctx.load(x, at), mean), rstd))

    _row_kernel(k, node, row)


@kernel(LayerNormGrad)
def _layer_norm_grad(k, node):
    """dx = rstd (g - mean(g) - xhat mean(g xhat)); mean(g xhat) = rstd (mean(g d) - mean(d) mean(g))."""
    g, x = node.inputs

    def row(ctx, f, base, n):
        b = ctx.b

        def extra(d, j):
            gj = ctx.load(g, b.add(base, j))
            return [gj, f.mul(gj, d)]

        shift, mean_d, var, (sum_g, sum_gd) = _shifted_moments(ctx, f, x, base, n, extra, 2)
        rstd, inv_n = _rstd(f, var, node.op.eps), f.const(1.0 / n)
        mean_g = f.mul(sum_g, inv_n)
        mean_g_xhat = f.mul(rstd, f.sub(f.mul(sum_gd, inv_n), f.mul(mean_d, mean_g)))
        with for_range(b, i64(n), "write") as j:
            at = b.add(base, j)
            xhat = f.mul(f.sub(f.sub(ctx.load(x, at), shift), mean_d), rstd)
            dx = f.sub(f.sub(ctx.load(g, at), mean_g), f.mul(xhat, mean_g_xhat))
            ctx.store(node, at, f.mul(dx, rstd))

    _row_kernel(k, node, row)


@kernel(RMSNorm)
def _rms_norm(k, node):
    (x,) = node.inputs

    def row(ctx, f, base, n):
        b = ctx.b

        def square(j):
            v = ctx.load(x, b.add(base, j))
            return [f.mul(v, v)]

        (sum_sq,) = _sums(ctx, f, n, 1, square, "squares")
        rstd = _rstd(f, f.mul(sum_sq, f.const(1.0 / n)), node.op.eps)
        with for_range(b, i64(n), "write") as j:
            at = b.add(base, j)
            ctx.store(node, at, f.mul(ctx.load(x, at), rstd))

    _row_kernel(k, node, row)


@kernel(RMSNormGrad)
def _rms_norm_grad(k, node):
    """dx = rstd (g - x rstd^2 mean(g x))."""
    g, x = node.inputs

    def row(ctx, f, base, n):
        b = ctx.b

        def terms(j):
            at = b.add(base, j)
            v = ctx.load(x, at)
            return [f.mul(v, v), f.mul(ctx.load(g, at), v)]

        sum_sq, sum_gx = _sums(ctx, f, n, 2, terms, "sums")
        inv_n = f.const(1.0 / n)
        rstd = _rstd(f, f.mul(sum_sq, inv_n), node.op.eps)
        scale = f.mul(f.mul(rstd, rstd), f.mul(sum_gx, inv_n))
        with for_range(b, i64(n), "write") as j:
            at = b.add(base, j)
            ctx.store(node, at, f.mul(f.sub(ctx.load(g, at), f.mul(ctx.load(x, at), scale)), rstd))

    _row_kernel(k, node, row)

"""Kernels of batch normalization (ops/batchnorm.py): the per-channel batch moments. Two passes per channel
(the mean, then the mean squared deviation) keep the variance accurate where a one-pass
E[x^2] - E[x]^2 cancels; each pass is a vectorized reduction (sums carry `reassoc`)."""

from __future__ import annotations

import math

from ....ops.batchnorm import BatchMoments
from ..irutil import STATUS_INVALID_INPUT, element_count, for_range, i64
from ..lowering import kernel
from .nn import entry_alloca


@kernel(BatchMoments)
def _batch_moments(k, node):
    """out[0, c] = mean of channel c, out[1, c] = its biased variance. Channels with pixels
    (NCHW) are summed plane by plane; without (N, C) the sums run along rows, over all channels
    at once."""
    (x,) = node.inputs
    b, f = k.b, k.scalar(node)
    axis = node.op.axis
    channels = x.shape[axis]
    outer = element_count(b, x.shape[:axis], k.batch)
    inner = math.prod(x.shape[axis + 1 :])
    values = b.mul(outer, i64(inner), name="values")
    k.fail_unless(b.icmp_signed(">=", values, i64(2)), STATUS_INVALID_INPUT)
    count = b.uitofp(values, f.type, name="count")
    if inner > 1:
        _moments_of_planes(k, node, x, outer, channels, inner, count)
    else:
        _moments_of_rows(k, node, x, outer, channels, count)


def _moments_of_planes(k, node, x, outer, channels: int, inner: int, count) -> None:
    b, f = k.b, k.scalar(node)
    total = entry_alloca(b, f.type, "total")

    def channel_sum(c, term, name):
        b.store(f.const(0.0), total)
        with for_range(b, outer, f"{name}.n") as n:
            start = b.mul(b.add(b.mul(n, i64(channels)), c), i64(inner), name=f"{name}.plane")
            with for_range(b, i64(inner), f"{name}.j") as j:
                value = term(k.load(x, b.add(start, j, name=f"{name}.at")))
                b.store(f.accumulate("add", b.load(total, name=f"{name}.acc"), value), total)
        return f.div(b.load(total, name=f"{name}.sum"), count)

    with for_range(b, i64(channels), "c") as c:
        mean = channel_sum(c, lambda v: v, "mean")
        k.store(node, c, mean)

        def squared_deviation(v):
            d = f.sub(v, mean)
            return f.mul(d, d)

        k.store(node, b.add(c, i64(channels), name="var_at"), channel_sum(c, squared_deviation, "var"))


def _moments_of_rows(k, node, x, outer, channels: int, count) -> None:
    b, f = k.b, k.scalar(node)

    def sweep(row: int, term, name):
        base = i64(row * channels)
        with for_range(b, i64(channels), f"{name}.init") as c:
            k.store(node, b.add(base, c), f.const(0.0))
        with for_range(b, outer, f"{name}.n") as n:
            start = b.mul(n, i64(channels), name=f"{name}.row")
            with for_range(b, i64(channels), f"{name}.c") as c:
                at = b.add(base, c, name=f"{name}.out")
                value = term(k.load(x, b.add(start, c, name=f"{name}.at")), c)
                k.store(node, at, f.accumulate("add", k.load(node, at), value))
        with for_range(b, i64(channels), f"{name}.scale") as c:
            at = b.add(base, c, name=f"{name}.out")
            k.store(node, at, f.div(k.load(node, at), count))

    def squared_deviation(v, c):
        d = f.sub(v, k.load(node, c))
        return f.mul(d, d)

    sweep(0, lambda v, c: v, "mean")
    sweep(1, squared_deviation, "var")

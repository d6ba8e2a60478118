"""Products, softmax and reductions."""

from __future__ import annotations

from collections.abc import Callable

from ...core.node import Node
from ...ops import (
    add,
    exp,
    log,
    matmul,
    mean,
    mul,
    reshape,
    softmax,
    sub,
    transpose,
)
from ...ops import max as reduce_max
from ...ops import min as reduce_min
from ...ops import sum as reduce_sum
from ..context import Merged
from .registry import Converter, axis_of, converts


@converts("MatMul")
def _matmul(ctx):
    merged_a, merged_b = ctx.merged(0), ctx.merged(1)
    if merged_a or merged_b:  # batched products over (batch * heads, ...): per (batch, head) here
        m = merged_a or merged_b
        a = merged_a.node if merged_a else ctx.input(0)
        b = merged_b.node if merged_b else ctx.input(1)
        if (merged_a and merged_b and merged_a.node.shape[: m.axes] != merged_b.node.shape[: m.axes]) or (
            min(a.ndim, b.ndim) < 2 or (not merged_a and a.ndim > 2) or (not merged_b and b.ndim > 2)
        ):
            raise ctx.fail("its operands merge the batch with other axes in ways that do not match")
        return m.with_node(matmul(a, b))
    a, b = ctx.input(0), ctx.input(1)
    vector_a, vector_b = a.ndim == 1, b.ndim == 1
    if vector_a:
        a = reshape(a, (1, a.shape[0]))
    if vector_b:
        b = reshape(b, (b.shape[0], 1))
    out = matmul(a, b)
    if vector_a or vector_b:
        drop = {out.ndim - 2} if vector_a else set()
        drop |= {out.ndim - 1} if vector_b else set()
        out = reshape(out, tuple(d for i, d in enumerate(out.shape) if i not in drop))
    return out


@converts("Gemm")
def _gemm(ctx):
    a, b = ctx.input(0), ctx.input(1)
    if ctx.attr("transA", 0):
        a = transpose(a)
    if ctx.attr("transB", 0):
        b = transpose(b)
    out = matmul(a, b)
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    if alpha != 1.0:
        out = mul(out, ctx.constant(alpha, out))
    if ctx.has(2) and beta != 0.0:
        c = ctx.input(2)
        out = add(out, c if beta == 1.0 else mul(c, ctx.constant(beta, c)))
    return out


# --- softmax ----------------------------------------------------------------------------------------


def _softmaxaxis_of(ctx) -> tuple[Node, int, Merged | None]:
    """The input, the axis on it, and the merged view if the input merges the batch."""
    merged = ctx.merged(0)
    if merged is None:
        x = ctx.input(0)
        return x, axis_of(ctx.attr("axis", -1), x.ndim, ctx), None
    axis = axis_of(ctx.attr("axis", -1), merged.rank, ctx)
    if axis == 0:
        raise ctx.fail("it normalizes over the batch merged with other axes")
    return merged.node, axis + merged.axes - 1, merged


@converts("Softmax")
def _softmax(ctx):
    x, axis, merged = _softmaxaxis_of(ctx)
    out = softmax(x, axis)
    return merged.with_node(out) if merged else out


@converts("LogSoftmax")
def _log_softmax(ctx):
    """x - max - log(sum(exp(x - max))): stable for large logits."""
    x, axis, merged = _softmaxaxis_of(ctx)
    shifted = sub(x, reduce_max(x, axis, keepdims=True))
    out = sub(shifted, log(reduce_sum(exp(shifted), axis, keepdims=True)))
    return merged.with_node(out) if merged else out


# --- reductions ---------------------------------------------------------------------------------------


def _reduce(fn: Callable, axes_input_since: int) -> Converter:
    def convert(ctx):
        x = ctx.input(0)
        if ctx.opset >= axes_input_since:
            axes = ctx.ints(1, "axes") if ctx.has(1) else []
        else:
            axes = list(ctx.attr("axes", []))
        if not axes:
            if ctx.attr("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.ndim))
        return fn(x, tuple(axis_of(a, x.ndim, ctx) for a in axes), keepdims=bool(ctx.attr("keepdims", 1)))

    return convert


converts("ReduceSum")(_reduce(reduce_sum, 13))
converts("ReduceMean")(_reduce(mean, 18))
converts("ReduceMax")(_reduce(reduce_max, 18))
converts("ReduceMin")(_reduce(reduce_min, 18))

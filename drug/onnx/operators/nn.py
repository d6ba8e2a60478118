"""Convolution, padding, pooling and normalization of NCHW images."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ...core.node import Node, apply
from ...ops import (
    add,
    avg_pool2d,
    batch_norm,
    conv2d,
    conv_transpose2d,
    div,
    layer_norm,
    max_pool2d,
    mean,
    mul,
    reshape,
    sqrt,
    sub,
)
from ...ops import max as reduce_max
from ...ops.conv import Pad
from .registry import axis_of, converts


def _spatial_pads(ctx, in_hw: Sequence[int], k_hw: Sequence[int], strides, dilations) -> list[tuple[int, int]]:
    """Per spatial axis (before, after), from auto_pad or pads ([x1_begin, x2_begin, x1_end, x2_end])."""
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    n = len(k_hw)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(in_hw, k_hw, strides, dilations):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            pads.append((small, large) if auto_pad == "SAME_UPPER" else (large, small))
        return pads
    if auto_pad == "VALID":
        return [(0, 0)] * n
    if auto_pad != "NOTSET":
        raise ctx.fail(f"unknown auto_pad {auto_pad!r}")
    flat = list(ctx.attr("pads", [0] * (2 * n)))
    return list(zip(flat[:n], flat[n:]))


def _image(ctx, x: Node) -> tuple[int, int]:
    if x.ndim != 4:
        raise ctx.fail(f"drug computes 2-D images (N, C, H, W); this input is {x.describe()}")
    if None in x.shape[1:]:
        raise ctx.fail(f"only the batch axis may be the batch; input is {x.describe()}")
    return x.shape[2], x.shape[3]


def _conv_geometry(ctx, in_hw, k_hw):
    strides = tuple(ctx.attr("strides", [1, 1]))
    dilations = tuple(ctx.attr("dilations", [1, 1]))
    return strides, dilations, tuple(_spatial_pads(ctx, in_hw, k_hw, strides, dilations))


def _bias(ctx, out: Node, i: int) -> Node:
    if not ctx.has(i):
        return out
    bias = ctx.input(i)
    return add(out, reshape(bias, (bias.shape[0], 1, 1)))


@converts("Conv")
def _conv(ctx):
    x, w = ctx.input(0), ctx.input(1)
    in_hw = _image(ctx, x)
    strides, dilations, pads = _conv_geometry(ctx, in_hw, tuple(ctx.attr("kernel_shape", w.shape[2:])))
    out = conv2d(x, w, stride=strides, padding=pads, dilation=dilations, groups=ctx.attr("group", 1))
    return _bias(ctx, out, 2)


@converts("ConvTranspose")
def _conv_transpose(ctx):
    """ONNX's output size is (in - 1) * stride + output_padding + (k - 1) * dilation + 1 - pads."""
    x, w = ctx.input(0), ctx.input(1)
    in_hw = _image(ctx, x)
    k_hw = tuple(ctx.attr("kernel_shape", w.shape[2:]))
    strides = tuple(ctx.attr("strides", [1, 1]))
    dilations = tuple(ctx.attr("dilations", [1, 1]))
    extra = tuple(ctx.attr("output_padding", [0, 0]))
    if ctx.attr("output_shape") is not None or ctx.attr("auto_pad", "NOTSET") != "NOTSET":
        raise ctx.fail("give ConvTranspose explicit pads (drug does not take output_shape or auto_pad for it)")
    pads = _spatial_pads(ctx, in_hw, k_hw, strides, dilations)
    if any(lo != hi for lo, hi in pads):
        raise ctx.fail(f"pads {pads}: drug's conv_transpose2d pads each side of an axis alike")
    out = conv_transpose2d(
        x, w, stride=strides, padding=tuple(lo for lo, _ in pads), output_padding=extra, dilation=dilations,
        groups=ctx.attr("group", 1),
    )  # fmt: skip
    return _bias(ctx, out, 2)


PAD_MODES = {"constant": "zeros", "edge": "replicate", "reflect": "reflect"}


@converts("Pad")
def _pad(ctx):
    """Padding of the two spatial axes of NCHW images (zeros, edge or reflect)."""
    x = ctx.input(0)
    in_hw = _image(ctx, x)
    pads = ctx.ints(1, "pads")
    axes = [axis_of(a, x.ndim, ctx) for a in ctx.ints(3, "axes")] if ctx.has(3) else list(range(x.ndim))
    before, after = dict(zip(axes, pads[: len(axes)])), dict(zip(axes, pads[len(axes) :]))
    mode = ctx.attr("mode", "constant")
    value = ctx.fixed(2)
    if any(before.get(a, 0) or after.get(a, 0) for a in (0, 1)) or mode not in PAD_MODES:
        raise ctx.fail(f"mode {mode!r}, pads {pads}: drug pads the spatial axes of images (constant, edge, reflect)")
    if mode == "constant" and ctx.has(2) and (value is None or np.any(value != 0)):
        raise ctx.fail("drug pads with zeros only (the constant value must be 0)")
    spatial = ((before.get(2, 0), after.get(2, 0)), (before.get(3, 0), after.get(3, 0)))
    if min(min(p) for p in spatial) < 0:
        raise ctx.fail(f"negative pads {pads} (cropping) are not supported")
    return apply(Pad(spatial, PAD_MODES[mode], in_hw), x)


def _pool(ctx, pool_fn: Callable, **options) -> Node:
    """Windows of any stride with the same padding on both sides of an axis (ceil_mode only where
    it changes nothing)."""
    x = ctx.input(0)
    in_hw = _image(ctx, x)
    kernel = tuple(ctx.attr("kernel_shape"))
    strides = tuple(ctx.attr("strides", [1] * len(kernel)))
    dilations = tuple(ctx.attr("dilations", [1] * len(kernel)))
    pads = _spatial_pads(ctx, in_hw, kernel, strides, dilations)
    floor_hw = [(n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(in_hw, kernel, strides, pads)]
    ceil_hw = [-(-(n + lo + hi - k) // s) + 1 for n, k, s, (lo, hi) in zip(in_hw, kernel, strides, pads)]
    if any(lo != hi for lo, hi in pads) or dilations != (1, 1) or (ctx.attr("ceil_mode", 0) and floor_hw != ceil_hw):
        raise ctx.fail(
            f"kernel {list(kernel)}, strides {list(strides)}, pads {pads}, dilations {list(dilations)}, "
            f"ceil_mode {ctx.attr('ceil_mode', 0)}: drug pools with the same padding on both sides of an axis, "
            f"without dilation, rounding the output size down"
        )
    return pool_fn(x, kernel, stride=strides, padding=tuple(lo for lo, _ in pads), **options)


@converts("MaxPool")
def _max_pool(ctx):
    return _pool(ctx, max_pool2d)


@converts("AveragePool")
def _average_pool(ctx):
    return _pool(ctx, avg_pool2d, count_include_pad=bool(ctx.attr("count_include_pad", 0)))


@converts("GlobalAveragePool")
def _global_average_pool(ctx):
    x = ctx.input(0)
    return mean(x, tuple(range(2, x.ndim)), keepdims=True)


@converts("GlobalMaxPool")
def _global_max_pool(ctx):
    x = ctx.input(0)
    return reduce_max(x, tuple(range(2, x.ndim)), keepdims=True)


# --- normalization ----------------------------------------------------------------------------------


@converts("BatchNormalization")
def _batch_norm(ctx):
    """drug's batch_norm over axis 1 with the running statistics as graph state: a predictor uses
    them, a train step (fine-tuning) the batch's statistics, updating them with ONNX's momentum."""
    if ctx.attr("training_mode", 0):
        raise ctx.fail("training_mode=1: drug imports batch normalization for inference (running statistics)")
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    mu, var = ctx.state(3), ctx.state(4)
    eps = ctx.attr("epsilon", 1e-5)
    if ctx.values.statistics_as_constants:  # the inference formula alone
        per_channel = lambda node: reshape(node, (node.shape[0],) + (1,) * (x.ndim - 2))
        scale, bias, mu, var = (per_channel(n) for n in (scale, bias, mu, var))
        return add(mul(div(sub(x, mu), sqrt(add(var, ctx.constant(eps, x)))), scale), bias)
    momentum = 1.0 - ctx.attr("momentum", 0.9)  # ONNX weighs the old statistics, drug the new batch's
    return batch_norm(x, scale, bias, axis=1, momentum=momentum, eps=eps, running_mean=mu, running_var=var)


@converts("LayerNormalization")
def _layer_norm(ctx):
    """Normalized over the axes from `axis` on (drug's fused layer_norm), then scaled and shifted."""
    if len([n for n in ctx.proto.output if n]) > 1:
        raise ctx.fail("drug computes only Y, not the Mean and InvStdDev outputs")
    x = ctx.input(0)
    axes = tuple(range(axis_of(ctx.attr("axis", -1), x.ndim, ctx), x.ndim))
    out = mul(layer_norm(x, axes, ctx.attr("epsilon", 1e-5)), ctx.input(1))
    return add(out, ctx.input(2)) if ctx.has(2) else out

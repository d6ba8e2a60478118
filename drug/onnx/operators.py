"""The import table: one converter per ONNX op type, from the node's inputs and attributes to drug
ops. Adding an op is one entry:

    @converts("Relu")
    def _relu(ctx):
        return relu(ctx.input(0))

A converter returns a drug node, an array known at import time (shapes), or a list of them (one
per ONNX output). It refuses what drug cannot compute with `raise ctx.fail("why")`; the importer
adds the file, the node and its op_type to the message."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx.numpy_helper

from ..core.errors import ShapeError
from ..core.node import Node, apply
from ..core.types import broadcast_shapes
from ..ops import (
    add,
    avg_pool2d,
    broadcast_like,
    concat,
    conv2d,
    div,
    embedding,
    exp,
    log,
    matmul,
    max_pool2d,
    mean,
    mul,
    neg,
    relu,
    reshape,
    sigmoid,
    softmax,
    sqrt,
    sub,
    tanh,
    transpose,
)  # fmt: skip
from ..ops import max as reduce_max
from ..ops import min as reduce_min
from ..ops import sum as reduce_sum
from ..ops.conv import Pad
from ..ops.reduce import Count
from .context import BATCH, Merged, NodeContext, has_batch, numpy_dtype

Converter = Callable[[NodeContext], "Node | np.ndarray | list"]
CONVERTERS: dict[str, Converter] = {}
INT64_MAX = np.iinfo(np.int64).max


def converts(*op_types: str) -> Callable[[Converter], Converter]:
    """Register a converter for these ONNX op types (default domain)."""

    def register(fn: Converter) -> Converter:
        for op_type in op_types:
            CONVERTERS[op_type] = fn
        return fn

    return register


def _axis(axis: int, ndim: int, ctx: NodeContext) -> int:
    if not -ndim <= axis < ndim:
        raise ctx.fail(f"axis {axis} is out of range for a {ndim}-D input")
    return axis % ndim


# --- values known at import time ---------------------------------------------------------------


@converts("Constant")
def _constant(ctx):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        value = ctx.attr(key)
        if value is not None:
            return np.asarray(value if key != "value" else _tensor(value))
    raise ctx.fail("only dense numeric constants are supported (value, value_float(s), value_int(s))")


def _tensor(proto) -> np.ndarray:
    return onnx.numpy_helper.to_array(proto)


@converts("Shape")
def _shape(ctx):
    x = ctx.input(0)
    shape = np.array([BATCH if d is None else d for d in x.shape], np.int64)
    start, end = ctx.attr("start", 0), ctx.attr("end", None)
    if len(shape[start:end]) == x.ndim:
        ctx.values.shape_sources[ctx.proto.output[0]] = x
    return shape[start:end]


@converts("Size")
def _size(ctx):
    x = ctx.input(0)
    if None in x.shape:
        raise ctx.fail(f"the size of {x.describe()} depends on the batch, which drug binds per call")
    return np.array(math.prod(x.shape), np.int64)


# --- elementwise --------------------------------------------------------------------------------


def _elementwise(op_type: str, fn: Callable[..., Node]) -> None:
    converts(op_type)(lambda ctx: _merged_elementwise(ctx, fn) or fn(*ctx.inputs()))


def _merged_elementwise(ctx, fn: Callable[..., Node]) -> Merged | None:
    """An elementwise op on values with the batch merged into their first axis: on the nodes that
    hold them apart, when the other operands broadcast over trailing axes only."""
    merged = [ctx.merged(i) for i in range(ctx.arity)]
    first = next((m for m in merged if m is not None), None)
    if first is None:
        return None
    operands = []
    for i, m in enumerate(merged):
        if m is not None:
            if m.axes != first.axes or m.node.shape[: m.axes] != first.node.shape[: first.axes]:
                raise ctx.fail("its operands merge the batch with different axes")
            operands.append(m.node)
        elif ctx.has(i):
            x = ctx.input(i)
            if x.ndim >= first.rank:
                raise ctx.fail(f"{x.describe()} would meet the batch merged with other axes")
            operands.append(x)
    return first.with_node(fn(*operands))


for _op_type, _fn in {
    "Add": add, "Sub": sub, "Mul": mul, "Div": div, "Relu": relu, "Sigmoid": sigmoid, "Tanh": tanh,
    "Sqrt": sqrt, "Exp": exp, "Log": log, "Neg": neg,
}.items():  # fmt: skip
    _elementwise(_op_type, _fn)


@converts("Identity")
def _identity(ctx):
    source = ctx.values.resolve(ctx.proto.input[0])
    if source in ctx.values.trainable:  # an initializer passed through (as exporters write them):
        ctx.values.aliases[ctx.proto.output[0]] = source  # created (parameter, buffer) where it is used
        return []
    return ctx.input(0)


@converts("Dropout")
def _dropout(ctx):
    """Inference: the identity (an exported model is a predictor)."""
    training = ctx.known(2)
    if training is not None and bool(training):
        raise ctx.fail("training_mode=True: drug imports models for inference, where dropout passes values through")
    return ctx.input(0)


@converts("Pow")
def _pow(ctx):
    x, exponent = ctx.input(0), ctx.fixed(1)
    if exponent is None or exponent.size != 1:
        raise ctx.fail("drug raises to a constant scalar power (2, 3, 0.5, -0.5, -1, 1) only")
    p = float(exponent.reshape(()))
    powers = {
        1.0: lambda: x,
        2.0: lambda: mul(x, x),
        3.0: lambda: mul(x, x, x),
        0.5: lambda: sqrt(x),
        -0.5: lambda: div(1.0, sqrt(x)),
        -1.0: lambda: div(1.0, x),
    }
    if p not in powers:
        raise ctx.fail(f"exponent {p:g}: drug raises to the powers {sorted(powers)} only")
    return powers[p]()


# --- linear algebra -------------------------------------------------------------------------------


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


def _softmax_axis(ctx) -> tuple[Node, int, Merged | None]:
    """The input, the axis on it, and the merged view if the input merges the batch."""
    merged = ctx.merged(0)
    if merged is None:
        x = ctx.input(0)
        return x, _axis(ctx.attr("axis", -1), x.ndim, ctx), None
    axis = _axis(ctx.attr("axis", -1), merged.rank, ctx)
    if axis == 0:
        raise ctx.fail("it normalizes over the batch merged with other axes")
    return merged.node, axis + merged.axes - 1, merged


@converts("Softmax")
def _softmax(ctx):
    x, axis, merged = _softmax_axis(ctx)
    out = softmax(x, axis)
    return merged.with_node(out) if merged else out


@converts("LogSoftmax")
def _log_softmax(ctx):
    """x - max - log(sum(exp(x - max))): stable for large logits."""
    x, axis, merged = _softmax_axis(ctx)
    shifted = sub(x, reduce_max(x, axis, keepdims=True))
    out = sub(shifted, log(reduce_sum(exp(shifted), axis, keepdims=True)))
    return merged.with_node(out) if merged else out


# --- convolution and pooling ------------------------------------------------------------------------


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


@converts("Conv")
def _conv(ctx):
    x, w = ctx.input(0), ctx.input(1)
    in_hw = _image(ctx, x)
    k_hw = tuple(ctx.attr("kernel_shape", w.shape[2:]))
    strides = tuple(ctx.attr("strides", [1, 1]))
    dilations = tuple(ctx.attr("dilations", [1, 1]))
    if ctx.attr("group", 1) != 1 or dilations != (1, 1):
        raise ctx.fail(f"group={ctx.attr('group', 1)}, dilations={list(dilations)}: drug's conv2d has neither yet")
    pads = _spatial_pads(ctx, in_hw, k_hw, strides, dilations)
    if any(p for pair in pads for p in pair):
        x = apply(Pad(tuple(pads), "zeros", in_hw), x)
    out = conv2d(x, w, stride=strides)
    if ctx.has(2):
        bias = ctx.input(2)
        out = add(out, reshape(bias, (bias.shape[0], 1, 1)))
    return out


PAD_MODES = {"constant": "zeros", "edge": "replicate", "reflect": "reflect"}


@converts("Pad")
def _pad(ctx):
    """Padding of the two spatial axes of NCHW images (zeros, edge or reflect)."""
    x = ctx.input(0)
    in_hw = _image(ctx, x)
    pads = ctx.ints(1, "pads")
    axes = [_axis(a, x.ndim, ctx) for a in ctx.ints(3, "axes")] if ctx.has(3) else list(range(x.ndim))
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


def _pool(ctx, pool_fn: Callable) -> Node:
    """Non-overlapping windows (stride = kernel, no padding): what drug's pools compute."""
    x = ctx.input(0)
    in_hw = _image(ctx, x)
    kernel = tuple(ctx.attr("kernel_shape"))
    strides = tuple(ctx.attr("strides", [1] * len(kernel)))
    dilations = tuple(ctx.attr("dilations", [1] * len(kernel)))
    pads = _spatial_pads(ctx, in_hw, kernel, strides, dilations)
    ceil_mode = ctx.attr("ceil_mode", 0) and any(n % k for n, k in zip(in_hw, kernel))
    if strides != kernel or any(p for pair in pads for p in pair) or dilations != (1, 1) or ceil_mode:
        raise ctx.fail(
            f"kernel {list(kernel)}, strides {list(strides)}, pads {pads}, dilations {list(dilations)}, "
            f"ceil_mode {ctx.attr('ceil_mode', 0)}: drug pools non-overlapping windows (strides = kernel, no padding)"
        )
    return pool_fn(x, kernel)


@converts("MaxPool")
def _max_pool(ctx):
    return _pool(ctx, max_pool2d)


@converts("AveragePool")
def _average_pool(ctx):
    return _pool(ctx, avg_pool2d)


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
    """Inference: (x - running mean) / sqrt(running var + eps) * scale + bias, per channel (axis 1)."""
    if ctx.attr("training_mode", 0):
        raise ctx.fail("training_mode=1: drug imports batch normalization for inference (running statistics)")
    x = ctx.input(0)
    per_channel = lambda node: reshape(node, (node.shape[0],) + (1,) * (x.ndim - 2))
    scale, bias = (per_channel(ctx.input(i)) for i in (1, 2))
    mu, var = (per_channel(ctx.state(i)) for i in (3, 4))
    eps = ctx.constant(ctx.attr("epsilon", 1e-5), x)
    return add(mul(div(sub(x, mu), sqrt(add(var, eps))), scale), bias)


@converts("LayerNormalization")
def _layer_norm(ctx):
    """Normalize over the axes from `axis` on (mean and biased variance), then scale and shift."""
    x = ctx.input(0)
    axes = tuple(range(_axis(ctx.attr("axis", -1), x.ndim, ctx), x.ndim))
    centered = sub(x, mean(x, axes, keepdims=True))
    variance = mean(mul(centered, centered), axes, keepdims=True)
    eps = ctx.constant(ctx.attr("epsilon", 1e-5), x)
    out = mul(div(centered, sqrt(add(variance, eps))), ctx.input(1))
    if any(ctx.has(i) for i in (3, 4)) and len(ctx.proto.output) > 1:
        raise ctx.fail("drug computes only Y, not the Mean and InvStdDev outputs")
    return add(out, ctx.input(2)) if ctx.has(2) else out


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
        return fn(x, tuple(_axis(a, x.ndim, ctx) for a in axes), keepdims=bool(ctx.attr("keepdims", 1)))

    return convert


converts("ReduceSum")(_reduce(reduce_sum, 13))
converts("ReduceMean")(_reduce(mean, 18))
converts("ReduceMax")(_reduce(reduce_max, 18))
converts("ReduceMin")(_reduce(reduce_min, 18))


# --- shapes ---------------------------------------------------------------------------------------------


@converts("Reshape")
def _reshape(ctx):
    target = ctx.ints(1, "shape")
    merged = ctx.merged(0)
    if merged is not None:
        return _reshape_merged(ctx, merged, target)
    x = ctx.input(0)
    shape = []
    for i, d in enumerate(target):
        if d == BATCH:
            shape.append(None)
        elif d == 0 and not ctx.attr("allowzero", 0):
            if i >= x.ndim:
                raise ctx.fail(f"target {target} copies axis {i}, which {x.describe()} does not have")
            shape.append(x.shape[i])
        else:
            shape.append(d)
    if None in x.shape and None not in shape and shape.count(-1) == 1:
        # [-1, 72] on (batch, 8, 3, 3): the inferred axis is the batch when the other sizes account
        # for every non-batch element
        if math.prod(d for d in shape if d != -1) == math.prod(d for d in x.shape if d is not None):
            shape[shape.index(-1)] = None
        elif x.shape[0] is None and shape[0] == -1 and x.shape[-(len(shape) - 1) :] == tuple(shape[1:]):
            return Merged(x, x.ndim - len(shape) + 1)  # (batch, heads, t, d) -> (batch * heads, t, d)
    if None in x.shape and None not in shape:
        raise ctx.fail(
            f"reshaping {x.describe()} to {target} merges the batch with other axes in a way drug does not "
            f"follow; drug keeps the batch an axis of its own"
        )
    return reshape(x, shape)


def _reshape_merged(ctx, merged: Merged, target: list[int]):
    """A value merging the batch with `lead` axes, reshaped: apart again ([batch, *lead, ...]), or
    merged the same way with other trailing sizes ([-1, ...])."""
    node, lead = merged.node, list(merged.node.shape[1 : merged.axes])
    trailing = math.prod(merged.node.shape[merged.axes :])
    if target[: merged.axes] == [BATCH, *lead] and math.prod(target[merged.axes :]) == trailing:
        return reshape(node, (None, *lead, *target[merged.axes :]))
    if target[0] == -1 and -1 not in target[1:] and 0 not in target and math.prod(target[1:]) == trailing:
        return merged.with_node(reshape(node, (None, *lead, *target[1:])))
    raise ctx.fail(f"it reshapes a value merging the batch with axes {lead} to {target}, which drug does not follow")


@converts("Transpose")
def _transpose(ctx):
    perm = ctx.attr("perm")
    merged = ctx.merged(0)
    if merged is not None:
        if perm is None or perm[0] != 0:
            raise ctx.fail("it moves the first axis, which merges the batch with other axes")
        shift = merged.axes - 1
        return merged.with_node(transpose(merged.node, list(range(merged.axes)) + [p + shift for p in perm[1:]]))
    x = ctx.input(0)
    return transpose(x, None if perm is None else list(perm))


def _merged(ctx, dims: Sequence[int | None]) -> int | None:
    """The size of axes flattened into one: None if the batch is among them (alone, with size-1 axes)."""
    if None not in dims:
        return math.prod(dims)
    if math.prod(d for d in dims if d is not None) != 1:
        raise ctx.fail(
            f"it would merge the batch with other axes {tuple(dims)}; drug keeps the batch an axis of its own"
        )
    return None


@converts("Flatten")
def _flatten(ctx):
    x = ctx.input(0)
    axis = ctx.attr("axis", 1)
    axis = axis % x.ndim if axis != x.ndim else axis
    return reshape(x, (_merged(ctx, x.shape[:axis]), _merged(ctx, x.shape[axis:])))


@converts("Squeeze")
def _squeeze(ctx):
    x = ctx.input(0)
    if ctx.has(1):
        axes = {_axis(a, x.ndim, ctx) for a in ctx.ints(1, "axes")}
    else:
        axes = {i for i, d in enumerate(x.shape) if d == 1}
    if any(x.shape[a] != 1 for a in axes):
        raise ctx.fail(f"cannot squeeze axes {sorted(axes)} of {x.describe()}: they must have size 1")
    return reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes))


@converts("Unsqueeze")
def _unsqueeze(ctx):
    x = ctx.input(0)
    rank = x.ndim + len(ctx.ints(1, "axes"))
    axes = {_axis(a, rank, ctx) for a in ctx.ints(1, "axes")}
    dims = iter(x.shape)
    return reshape(x, tuple(1 if i in axes else next(dims) for i in range(rank)))


@converts("Concat")
def _concat(ctx):
    xs = ctx.inputs()
    return concat(xs, _axis(ctx.attr("axis"), xs[0].ndim, ctx))


@converts("Slice")
def _slice(ctx):
    x = ctx.input(0)
    starts, ends = ctx.ints(1, "starts"), ctx.ints(2, "ends")
    axes = ctx.ints(3, "axes") if ctx.has(3) else list(range(len(starts)))
    steps = ctx.ints(4, "steps") if ctx.has(4) else [1] * len(starts)
    index: list[slice] = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(axis, x.ndim, ctx)
        if step == 0:
            raise ctx.fail("a slice step of 0")
        if x.shape[axis] is None:
            if (start, step) != (0, 1) or end < np.iinfo(np.int32).max:
                raise ctx.fail(f"it slices the batch axis {axis} ({start}:{end}:{step}); drug keeps every example")
            continue
        index[axis] = _onnx_slice(start, end, step, x.shape[axis])
    return x[tuple(index)]


def _onnx_slice(start: int, end: int, step: int, size: int) -> slice:
    """ONNX's clamping (a negative start below -size clamps to 0 even when stepping backwards, where
    Python's slices would give nothing), as a Python slice."""
    start, end = start + size if start < 0 else start, end + size if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), size), min(max(end, 0), size), step)
    start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
    return slice(start, None if end < 0 else end, step)


@converts("Expand")
def _expand(ctx):
    """Broadcast to a shape: known sizes, or the Shape of a node (then the batch may be among them)."""
    x = ctx.input(0)
    like = ctx.shape_source(1)
    target = [None if d == BATCH else d for d in ctx.ints(1, "shape")]
    try:
        out_shape = broadcast_shapes([x.shape, tuple(target)])
    except ShapeError:
        raise ctx.fail(f"{x.describe()} does not broadcast to {target}") from None
    if out_shape == x.shape:
        return x
    if like is not None and out_shape == like.shape:
        return broadcast_like(x, like)
    if None in out_shape and None not in x.shape:
        raise ctx.fail(f"it broadcasts {x.describe()} to a batch of {target} that is not the Shape of one value")
    zeros = np.zeros(tuple(1 if d is None else d for d in out_shape), x.dtype)  # x carries the batch
    return add(x, ctx.graph.constant(zeros, dtype=str(x.dtype)))


@converts("Split")
def _split(ctx):
    x = ctx.input(0)
    axis = _axis(ctx.attr("axis", 0), x.ndim, ctx)
    size = x.shape[axis]
    if size is None:
        raise ctx.fail(f"it splits the batch axis {axis}")
    count = len(ctx.proto.output)
    if ctx.has(1):
        sizes = ctx.ints(1, "split")
    else:  # equal parts; since opset 18 the last may be smaller (num_outputs)
        part = -(-size // count)
        sizes = [min(part, size - i * part) for i in range(count)]
    if sum(sizes) != size or len(sizes) != count or min(sizes) < 0:
        raise ctx.fail(f"sizes {sizes} do not split axis {axis} of size {size} into {count} outputs")
    lead = (slice(None),) * axis
    starts = np.cumsum([0] + sizes[:-1])
    return [x[lead + (slice(int(s), int(s) + n),)] for s, n in zip(starts, sizes)]


@converts("Gather")
def _gather(ctx):
    """Indices known now: slices of the data; indices computed at run time: rows of a 2-D table
    (an embedding lookup)."""
    x = ctx.input(0)
    axis = _axis(ctx.attr("axis", 0), x.ndim, ctx)
    ids = ctx.known(1)
    if ids is None:
        if axis != 0 or x.ndim != 2:
            raise ctx.fail(f"drug gathers run-time indices from the rows of a 2-D table only; data is {x.describe()}")
        return embedding(ctx.input(1), x)
    size = x.shape[axis]
    if size is None:
        raise ctx.fail(f"it gathers along the batch axis {axis}")
    ids = np.where(ids < 0, ids + size, ids)
    if np.any((ids < 0) | (ids >= size)):
        raise ctx.fail(f"indices {ids.tolist()} are out of range for axis {axis} of size {size}")
    lead = (slice(None),) * axis
    if ids.ndim == 0:
        return x[lead + (int(ids),)]
    picked = [x[lead + (slice(int(i), int(i) + 1),)] for i in ids.reshape(-1)]
    rows = picked[0] if len(picked) == 1 else concat(picked, axis)
    return reshape(rows, x.shape[:axis] + ids.shape + x.shape[axis + 1 :])


@converts("Cast")
def _cast(ctx):
    dtype = numpy_dtype(ctx.attr("to"))
    known = ctx.known(0)
    if known is not None and has_batch(known) and dtype.kind == "f":
        return _batch_size_value(ctx, known, dtype)
    x = ctx.input(0)
    if dtype != x.dtype:
        raise ctx.fail(f"drug has no cast from {x.dtype} to {dtype} yet")
    return x


def _batch_size_value(ctx, shape: np.ndarray, dtype: np.dtype) -> Node:
    """A shape holding the batch size, as floats computed at run time (what a mean over the batch
    divides by): the known sizes plus the batch's run-time count where the marker is."""
    source = ctx.values.batched_input(dtype)
    if source is None:
        raise ctx.fail(f"it casts the batch size to {dtype}, which needs a batched {dtype} input to count")
    marker = shape == BATCH
    count = apply(Count((source.shape.index(None),)), source)
    known = ctx.graph.constant(np.where(marker, 0, shape).astype(dtype), dtype=str(dtype))
    return add(known, mul(ctx.graph.constant(marker.astype(dtype), dtype=str(dtype)), count))


SUPPORTED_OPS = tuple(sorted(CONVERTERS))

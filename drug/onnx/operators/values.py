"""Values known at import time (constants, shapes, casts of shapes) and the nodes that pass
values through (Identity, Dropout in inference)."""

from __future__ import annotations

import math

import numpy as np
import onnx.numpy_helper

from ...core.node import Node, apply
from ...ops import (
    add,
    cast,
    mul,
)
from ...ops.reduce import Count
from ..context import BATCH, has_batch, numpy_dtype
from .registry import converts


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


@converts("Cast")
def _cast(ctx):
    dtype = numpy_dtype(ctx.attr("to"))
    known = ctx.known(0)
    if known is not None and has_batch(known) and dtype.kind == "f":
        return _batch_size_value(ctx, known, dtype)
    return cast(ctx.input(0), dtype)


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

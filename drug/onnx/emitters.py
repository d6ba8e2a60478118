"""The export table: one emitter per drug op class, writing the ONNX nodes that compute it (ops
without one but with a scalar rule, elementwise ones, are written through the rule: scalars.py).
Adding an op is one entry:

    @emits(Relu)
    def _relu(ctx, node):
        return ctx.add("Relu", [ctx.value(node.inputs[0])])

An emitter returns the name of the ONNX value holding the node's result."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper

from ..compiler.scalar import scalar_rule_of
from ..core.errors import GraphError
from ..core.node import Node
from ..core.op import REGISTRY
from ..ops import conv, indexing, linalg, nn, norm, padding, pool, reduce, shape
from ..ops import elementwise as ew
from ..ops.attention import Attention
from .scalars import emit_by_rule

Emitter = Callable[["EmitContext", Node], str]
EMITTERS: dict[type, Emitter] = {}
INT64_MIN = np.iinfo(np.int64).min


def emits(*op_classes: type) -> Callable[[Emitter], Emitter]:
    def register(fn: Emitter) -> Emitter:
        for cls in op_classes:
            EMITTERS[cls] = fn
        return fn

    return register


class EmitContext:
    """The ONNX graph being written: nodes, initializers, and the value name of each drug node."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.names: dict[int, str] = {}  # drug node id -> ONNX value name
        self._used: set[str] = set()
        self._counter = 0

    def value(self, node: Node) -> str:
        return self.names[node.id]

    def fresh(self, hint: str) -> str:
        name = hint
        while name in self._used:
            self._counter += 1
            name = f"{hint}_{self._counter}"
        self._used.add(name)
        return name

    def add(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attrs: Any) -> str:
        """Append one ONNX node; returns its (single) output's name."""
        output = output or self.fresh(op_type.lower())
        self.nodes.append(onnx.helper.make_node(op_type, list(inputs), [output], name=f"{output}/{op_type}", **attrs))
        return output

    def const(self, value: Any, hint: str, dtype: Any = None) -> str:
        """An initializer holding `value` (an int64 vector for shapes and axes by default)."""
        array = np.asarray(value, dtype=dtype if dtype is not None else np.asarray(value).dtype)
        name = self.fresh(hint)
        self.initializers.append(onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, values: Sequence[int], hint: str) -> str:
        return self.const(np.asarray(list(values), np.int64), hint)

    def elem_type(self, dtype: np.dtype) -> int:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _unary(op_type: str) -> Emitter:
    return lambda ctx, node: ctx.add(op_type, [ctx.value(node.inputs[0])])


def _binary(op_type: str) -> Emitter:
    """n-ary ops (drug's add and mul) as a chain of binary ONNX nodes."""

    def emit(ctx, node):
        names = [ctx.value(i) for i in node.inputs]
        out = names[0]
        for other in names[1:]:
            out = ctx.add(op_type, [out, other])
        return out

    return emit


for _cls, _op_type in {ew.Neg: "Neg", ew.Relu: "Relu", ew.Sigmoid: "Sigmoid", ew.Tanh: "Tanh", ew.Exp: "Exp",
                       ew.Log: "Log", ew.Sqrt: "Sqrt"}.items():  # fmt: skip
    emits(_cls)(_unary(_op_type))
for _cls, _op_type in {ew.Add: "Add", ew.Mul: "Mul", ew.Sub: "Sub", ew.Div: "Div", linalg.MatMul: "MatMul"}.items():
    emits(_cls)(_binary(_op_type))


@emits(nn.Softmax)
def _softmax(ctx, node):
    return ctx.add("Softmax", [ctx.value(node.inputs[0])], axis=node.op.axis)


@emits(shape.Transpose)
def _transpose(ctx, node):
    return ctx.add("Transpose", [ctx.value(node.inputs[0])], perm=list(node.op.perm))


@emits(shape.Reshape)
def _reshape(ctx, node):
    # the batch is the one axis whose size the others leave: -1
    target = ctx.ints([-1 if d is None else d for d in node.op.shape], "shape")
    return ctx.add("Reshape", [ctx.value(node.inputs[0]), target])


@emits(shape.Slice)
def _slice(ctx, node):
    starts, ends, axes, steps, dropped = [], [], [], [], []
    for axis, spec in enumerate(node.op.index):
        if isinstance(spec, int):
            spec, dropped = (spec, spec + 1, 1), dropped + [axis]
        start, stop, step = spec
        if (start, stop, step) == (0, None, 1) or node.inputs[0].shape[axis] is None:
            continue  # the whole axis (the batch axis always)
        starts.append(start)
        ends.append(INT64_MIN if stop is None or stop < 0 else stop)  # stop < 0: through element 0
        axes.append(axis)
        steps.append(step)
    out = ctx.value(node.inputs[0])
    if axes:
        names = [
            ctx.ints(v, hint) for v, hint in ((starts, "starts"), (ends, "ends"), (axes, "axes"), (steps, "steps"))
        ]
        out = ctx.add("Slice", [out] + names)
    return ctx.add("Squeeze", [out, ctx.ints(dropped, "axes")]) if dropped else out


@emits(shape.Concat)
def _concat(ctx, node):
    return ctx.add("Concat", [ctx.value(i) for i in node.inputs], axis=node.op.axis)


def _reduction(op_type: str, axes_input_since: int) -> Emitter:
    def emit(ctx, node):
        keepdims = int(node.op.keepdims)
        if ctx.opset >= axes_input_since:
            return ctx.add(op_type, [ctx.value(node.inputs[0]), ctx.ints(node.op.axes, "axes")], keepdims=keepdims)
        return ctx.add(op_type, [ctx.value(node.inputs[0])], axes=list(node.op.axes), keepdims=keepdims)

    return emit


emits(reduce.Sum)(_reduction("ReduceSum", 13))
emits(reduce.Max)(_reduction("ReduceMax", 18))
emits(reduce.Min)(_reduction("ReduceMin", 18))


def _conv_attributes(op) -> dict:
    (top, bottom), (left, right) = op.pads
    return dict(strides=list(op.stride), pads=[top, left, bottom, right], dilations=list(op.dilation), group=op.groups)


@emits(conv.Conv2D)
def _conv2d(ctx, node):
    x, w = (ctx.value(i) for i in node.inputs)
    return ctx.add("Conv", [x, w], **_conv_attributes(node.op))


@emits(conv.Conv2DBias)
def _conv2d_bias(ctx, node):
    """What a compiled predictor's epilogue pass fused: Conv with its bias input, then Relu."""
    x, w, bias = (ctx.value(i) for i in node.inputs)
    out = ctx.add("Conv", [x, w, bias], **_conv_attributes(node.op))
    return ctx.add("Relu", [out]) if node.op.activation == "relu" else out


@emits(linalg.MatMulBias)
def _matmul_bias(ctx, node):
    """What a compiled predictor's epilogue pass fused: MatMul, Add of the bias, then Relu."""
    a, w, bias = (ctx.value(i) for i in node.inputs)
    out = ctx.add("Add", [ctx.add("MatMul", [a, w]), bias])
    return ctx.add("Relu", [out]) if node.op.activation == "relu" else out


@emits(conv.ConvTranspose2D)
def _conv_transpose2d(ctx, node):
    """ONNX derives the output size from output_padding: what is left of drug's in_hw."""
    g, w = node.inputs
    op = node.op
    natural = [
        (n - 1) * s - lo - hi + d * (k - 1) + 1
        for n, s, (lo, hi), d, k in zip(g.shape[2:], op.stride, op.pads, op.dilation, w.shape[2:])
    ]
    extra = [target - size for target, size in zip(op.in_hw, natural)]
    return ctx.add("ConvTranspose", [ctx.value(g), ctx.value(w)], output_padding=extra, **_conv_attributes(op))


def _pool_attributes(op) -> dict:
    (top, bottom), (left, right) = op.pads
    return dict(kernel_shape=list(op.kernel), strides=list(op.stride), pads=[top, left, bottom, right])


@emits(pool.MaxPool2D)
def _max_pool(ctx, node):
    return ctx.add("MaxPool", [ctx.value(node.inputs[0])], **_pool_attributes(node.op))


@emits(pool.AvgPool2D)
def _avg_pool(ctx, node):
    include = int(node.op.count_include_pad)
    return ctx.add("AveragePool", [ctx.value(node.inputs[0])], count_include_pad=include, **_pool_attributes(node.op))


PAD_MODES = {"zeros": "constant", "replicate": "edge", "reflect": "reflect"}


@emits(conv.Pad)
def _pad(ctx, node):
    (top, bottom), (left, right) = node.op.pads
    pads = ctx.ints([0, 0, top, left, 0, 0, bottom, right], "pads")
    return ctx.add("Pad", [ctx.value(node.inputs[0]), pads], mode=PAD_MODES[node.op.mode])


@emits(nn.Embedding)
def _embedding(ctx, node):
    ids, table = (ctx.value(i) for i in node.inputs)
    return ctx.add("Gather", [table, ids], axis=0)


@emits(indexing.Take)
def _take(ctx, node):
    x, ids = (ctx.value(i) for i in node.inputs)
    return ctx.add("Gather", [x, ids], axis=node.op.axis)


@emits(indexing.Gather)
def _gather_along_axis(ctx, node):
    x, ids = (ctx.value(i) for i in node.inputs)
    return ctx.add("GatherElements", [x, ids], axis=node.op.axis)


@emits(indexing.Argmax, indexing.Argmin)
def _arg_extremum(ctx, node):
    op_type = "ArgMax" if isinstance(node.op, indexing.Argmax) else "ArgMin"
    position = ctx.add(op_type, [ctx.value(node.inputs[0])], axis=node.op.axis, keepdims=0)
    return ctx.add("Cast", [position], to=ctx.elem_type(node.dtype))  # ONNX gives int64, drug int32


@emits(indexing.Cumsum)
def _cumsum(ctx, node):
    axis = ctx.const(np.asarray(node.op.axis, np.int64), "axis")
    return ctx.add("CumSum", [ctx.value(node.inputs[0]), axis], reverse=int(node.op.reverse))


@emits(padding.PadND)
def _pad_nd(ctx, node):
    befores, afters = zip(*node.op.pads)
    inputs = [ctx.value(node.inputs[0]), ctx.ints(list(befores) + list(afters), "pads")]
    if node.op.mode == "constant":
        inputs.append(ctx.const(np.asarray(node.op.value, node.dtype), "pad_value"))
    return ctx.add("Pad", inputs, mode=ND_PAD_MODES[node.op.mode])


ND_PAD_MODES = {"constant": "constant", "replicate": "edge", "reflect": "reflect"}


def _row_stats(ctx, node, x: str, centered: bool) -> str:
    """x normalized over the op's axes: (x - mean) / sqrt(var + eps), or x / sqrt(mean(x^2) + eps)."""
    axes = ctx.ints(node.op.axes, "axes")
    mean = lambda v: ctx.add("ReduceMean", [v, axes], keepdims=1) if ctx.opset >= 18 else ctx.add(
        "ReduceMean", [v], axes=list(node.op.axes), keepdims=1
    )  # fmt: skip
    if centered:
        x = ctx.add("Sub", [x, mean(x)])
    eps = ctx.const(np.asarray(node.op.eps, node.dtype), "eps")
    return ctx.add("Div", [x, ctx.add("Sqrt", [ctx.add("Add", [mean(ctx.add("Mul", [x, x])), eps])])])


@emits(norm.LayerNorm)
def _layer_norm(ctx, node):
    x = ctx.value(node.inputs[0])
    first, ndim = node.op.axes[0], node.ndim
    if ctx.opset >= 17 and node.op.axes == tuple(range(first, ndim)):
        ones = ctx.const(np.ones(node.shape[first:], node.dtype), "ones")
        return ctx.add("LayerNormalization", [x, ones], axis=first, epsilon=node.op.eps)
    return _row_stats(ctx, node, x, centered=True)


@emits(norm.RMSNorm)
def _rms_norm(ctx, node):
    return _row_stats(ctx, node, ctx.value(node.inputs[0]), centered=False)


@emits(Attention)
def _attention(ctx, node):
    """softmax(q k^T * scale + mask) v as ONNX ops, in (batch, heads, time, dim) order."""
    op = node.op
    to_bhtd = lambda v: v if op.layout == "bhtd" else ctx.add("Transpose", [v], perm=[0, 2, 1, 3])
    q, k, v = (to_bhtd(ctx.value(i)) for i in node.inputs[:3])
    scale = ctx.const(np.asarray(op.scale, node.dtype), "scale")
    scores = ctx.add("Mul", [ctx.add("MatMul", [q, ctx.add("Transpose", [k], perm=[0, 1, 3, 2])]), scale])
    minus_inf = ctx.const(np.asarray(-np.inf, node.dtype), "minus_inf")
    if op.mask == "bool":
        scores = ctx.add("Where", [ctx.value(node.inputs[3]), scores, minus_inf])
    elif op.mask == "float":
        scores = ctx.add("Add", [scores, ctx.value(node.inputs[3])])
    if op.causal:
        tq, tk = (i.shape[2 if op.layout == "bhtd" else 1] for i in node.inputs[:2])
        future = np.triu(np.full((tq, tk), -np.inf, node.dtype), k=1)
        scores = ctx.add("Add", [scores, ctx.const(future, "causal")])
    p = ctx.add("Softmax", [scores], axis=-1)
    zero = ctx.const(np.zeros((), node.dtype), "zero")
    p = ctx.add("Where", [ctx.add("IsNaN", [p]), zero, p])  # a query no key may attend to: zeros
    return to_bhtd(ctx.add("MatMul", [p, v]))


def emitter_for(node: Node) -> Emitter:
    """The node's entry in the table, else its scalar rule (elementwise ops, traced functions)."""
    emitter = EMITTERS.get(type(node.op))
    if emitter is not None:
        return emitter
    if scalar_rule_of(node.op) is not None:
        return emit_by_rule
    raise GraphError(
        f"node {node.label} (op '{node.op.name}') has no ONNX form; drug exports {', '.join(exportable_ops())}"
    )


def exportable_ops() -> tuple[str, ...]:
    """Names of the registered ops the exporter writes: table entries and ops with scalar rules."""
    return tuple(sorted(name for name, cls in REGISTRY.items() if cls in EMITTERS or scalar_rule_of(cls) is not None))

"""drug.onnx.load: an ONNX model becomes a drug graph. Each node is converted by its entry in the
op table (operators.py); nodes whose inputs are all known at import time (constants, shapes,
subgraphs computing shapes) are evaluated now by onnx's reference evaluator. Every converted
node's shape is checked against ONNX's own shape inference, so a wrong mapping is caught here
with the node named, not later as wrong numbers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import onnx
import onnx.numpy_helper
from onnx.reference import ReferenceEvaluator

from ..core.errors import GraphError, ShapeError
from ..core.node import Node
from ..core.types import FLOAT_DTYPES, format_shape
from ..graph import Graph
from .context import BATCH_MOVERS, HOLDABLE_DTYPES, ConversionError, Merged, NodeContext, Values, has_batch, numpy_dtype
from .operators import CONVERTERS, SUPPORTED_OPS
from .reading import BATCH_PARAM, MAX_OPSET, MIN_OPSET, Prepared, prepare, shape_of

__all__ = ["MAX_OPSET", "MIN_OPSET", "Imported", "load"]

INITIALIZER_MODES = ("parameters", "constants")
STATISTICS_MODES = ("buffers", "constants")
NEVER_FOLDED = frozenset({"RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial"})  # random draws


class Imported(NamedTuple):
    """What `load` returns: the graph, its inputs and its outputs by ONNX name (in the file's order)."""

    graph: Graph
    inputs: dict[str, Node]
    outputs: dict[str, Node]


def load(
    source: str | os.PathLike | onnx.ModelProto,
    batch_dim: int | str | None = 0,
    *,
    initializers: str = "parameters",
    dims: Mapping[str, int] | None = None,
    running_statistics: str = "buffers",
    seed: int = 0,
) -> Imported:
    """Import an ONNX model (a file or an `onnx.ModelProto`) as a drug graph.

    batch_dim: which dimension of the inputs is the batch, bound per call: an axis (default 0: the
      first axis of every input, whether the file names it or fixes its size), the name of a
      symbolic dimension, or None (every size fixed).
    initializers: "parameters" (float initializers of rank 1 and more become trainable parameters
      named as in the file: fine-tune them with any optimizer; scalars stay constants) or
      "constants" (fixed, as an inference runtime holds them: the faster choice for inference,
      since the LLVM backend packs weights that only matrix products read for its GEMM once,
      at compile time, where it must read parameters as they are, the user may write them).
    dims: sizes for other symbolic dimensions ({"sequence": 128}); drug compiles fixed sizes.
    running_statistics: batch normalization's running mean and variance as "buffers" (graph state,
      updated when a train step runs batch norm in training mode) or "constants".

    Unsupported ops, opsets outside MIN_OPSET..MAX_OPSET, dynamic sizes other than the batch and
    dtypes drug cannot hold raise GraphError naming the file and the node; nothing is returned then."""
    if initializers not in INITIALIZER_MODES:
        raise GraphError(f"initializers must be one of {INITIALIZER_MODES}, got {initializers!r}")
    if running_statistics not in STATISTICS_MODES:
        raise GraphError(f"running_statistics must be one of {STATISTICS_MODES}, got {running_statistics!r}")
    prepared = prepare(source, batch_dim, dims)
    return _Importer(prepared, initializers == "parameters", running_statistics == "constants", seed).run()


class _Importer:
    def __init__(self, prepared: Prepared, trainable: bool, statistics_as_constants: bool, seed: int):
        self.prepared = prepared
        self.source = prepared.source
        self.graph = Graph(seed=seed, dtype=self._float_dtype())
        self.values = Values(self.graph, statistics_as_constants)
        self.trainable = trainable

    def _float_dtype(self) -> str:
        """The graph's float dtype: its first float input's (float32 when there is none)."""
        for value in self.prepared.model.graph.input:
            dtype = numpy_dtype(value.type.tensor_type.elem_type)
            if dtype in FLOAT_DTYPES:
                return str(dtype)
        return "float32"

    def run(self) -> Imported:
        graph = self.prepared.model.graph
        inputs = {name: self._input(name) for name in self.prepared.input_shapes}
        for tensor in graph.initializer:
            self._initializer(tensor)
        if graph.sparse_initializer:
            raise GraphError(f"{self.source}: sparse initializers ('{graph.sparse_initializer[0].values.name}') "
                             f"are not supported")  # fmt: skip
        for proto in graph.node:
            self._convert(proto)
        outputs = {value.name: self._output(value) for value in graph.output}
        return Imported(self.graph, inputs, outputs)

    def _input(self, name: str) -> Node:
        value = next(v for v in self.prepared.model.graph.input if v.name == name)
        dtype = numpy_dtype(value.type.tensor_type.elem_type)
        if dtype not in HOLDABLE_DTYPES:
            raise GraphError(f"{self.source}: input '{name}' has dtype {dtype}, which drug cannot hold")
        try:
            node = self.graph.input(name, self.prepared.input_shapes[name], dtype=str(dtype))
        except (GraphError, ShapeError, TypeError) as error:
            raise GraphError(f"{self.source}: input '{name}': {error}") from None
        self.values.nodes[name] = node
        return node

    def _initializer(self, tensor: onnx.TensorProto) -> None:
        if tensor.data_location == onnx.TensorProto.EXTERNAL and not tensor.raw_data:
            raise GraphError(
                f"{self.source}: initializer '{tensor.name}' lives in an external data file that was not loaded; "
                f"pass the model's path (or onnx.load it with its data)"
            )
        try:
            array = onnx.numpy_helper.to_array(tensor)
        except (ValueError, TypeError) as error:
            raise GraphError(f"{self.source}: initializer '{tensor.name}' cannot be read: {error}") from None
        if self.trainable and array.dtype in FLOAT_DTYPES and array.ndim > 0:
            self.values.trainable[tensor.name] = array  # scalars are exporters' constants (eps, 1.0, masks' fill)
        else:
            self.values.known[tensor.name] = array

    def _convert(self, proto: onnx.NodeProto) -> None:
        try:
            if proto.domain not in ("", "ai.onnx"):
                raise ConversionError(
                    f"ops of domain '{proto.domain}' are not supported; drug imports the default ONNX domain's "
                    f"{', '.join(SUPPORTED_OPS)}"
                )
            if self._foldable(proto):
                self._fold(proto)
                return
            converter = CONVERTERS.get(proto.op_type)
            if converter is None:
                raise ConversionError(f"op {proto.op_type} is not supported; drug imports {', '.join(SUPPORTED_OPS)}")
            results = converter(NodeContext(proto, self.values, self.prepared.opset))
            self._bind(proto, results if isinstance(results, (list, tuple)) else [results])
        except GraphError as error:  # ShapeError included: drug's ops check what converters build
            where = f"{self.source}: node '{proto.name or proto.output[0]}' ({proto.op_type})"
            raise type(error)(f"{where}: {error}") from None

    def _foldable(self, proto: onnx.NodeProto) -> bool:
        """Whether the node can be evaluated now: its inputs are known, and if they hold the batch
        size (from a Shape) the op only moves it around. Otherwise its converter decides: casting
        the batch size to a float makes a run-time value; other arithmetic on it is refused."""
        names = [n for n in proto.input if n]
        if proto.op_type in NEVER_FOLDED or not names:  # a Constant goes to its converter
            return False
        if not all(n in self.values.known and not self.values.is_runtime(n) for n in names):
            return False
        return self._moves_batch(proto) or not any(has_batch(self.values.known[n]) for n in names)

    def _fold(self, proto: onnx.NodeProto) -> None:
        """Evaluate a node whose inputs are all known now (onnx's reference evaluator)."""
        feeds = {n: self.values.known[n] for n in proto.input if n}
        try:
            results = ReferenceEvaluator(proto, opsets={"": self.prepared.opset}).run(None, feeds)
        except Exception as error:  # the reference evaluator raises whatever its kernels raise
            raise ConversionError(
                f"evaluating it on its known inputs failed: {type(error).__name__}: {error}"
            ) from None
        for name, value in zip(proto.output, results):
            if name:
                self.values.known[name] = np.asarray(value)

    @staticmethod
    def _moves_batch(proto: onnx.NodeProto) -> bool:
        if proto.op_type == "Cast":
            return any(a.name == "to" and a.i == onnx.TensorProto.INT64 for a in proto.attribute)
        return proto.op_type in BATCH_MOVERS

    def _bind(self, proto: onnx.NodeProto, results: list) -> None:
        """Record a converter's results, checking each node against ONNX's inferred type."""
        for name, result in zip(proto.output, results):
            if not name:
                continue
            if isinstance(result, Node):
                self._check_against_inference(name, result)
                self.values.nodes[name] = result
            elif isinstance(result, Merged):
                self.values.merged[name] = result
            else:
                self.values.known[name] = np.asarray(result)
        missing = [n for n in proto.output[len(results) :] if n and n not in self.values.aliases]
        if missing:
            raise ConversionError(f"drug computes only its first {len(results)} output(s), not {missing}")

    def _check_against_inference(self, name: str, node: Node) -> None:
        value_type = self.prepared.value_types.get(name)
        if value_type is None:
            return
        expected = shape_of(value_type)
        elem = value_type.tensor_type.elem_type
        if elem and numpy_dtype(elem) != node.dtype:
            raise ConversionError(f"drug computes {name!r} as {node.dtype}, ONNX says {numpy_dtype(elem)}")
        if expected is None:
            return
        fits = len(expected) == node.ndim and all(
            e is None or (e == BATCH_PARAM and d is None) or (isinstance(e, str) and e != BATCH_PARAM) or e == d
            for e, d in zip(expected, node.shape)
        )
        if not fits:
            shown = "(" + ", ".join("None" if e == BATCH_PARAM else str(e) for e in expected) + ")"
            raise ShapeError(
                f"drug computes {name!r} with shape {format_shape(node.shape)} but ONNX's shape inference "
                f"gives {shown} (None: the batch)"
            )

    def _output(self, value: onnx.ValueInfoProto) -> Node:
        name = value.name
        if name in self.values.known and not self.values.is_runtime(name):
            if has_batch(self.values.known[name]):
                raise GraphError(f"{self.source}: output '{name}' is a shape holding the batch size")
        try:
            node = self.values.node(name)
        except ConversionError as error:
            raise GraphError(f"{self.source}: output '{name}': {error}") from None
        if node.name is None and name not in self.graph:
            node.named(name)
        return node

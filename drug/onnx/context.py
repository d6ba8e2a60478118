"""What an op's converter sees: the ONNX node, its attributes, and its inputs as drug nodes or as
values known at import time (constants, shapes, folded subgraphs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx.helper

from ..core.errors import GraphError
from ..core.graph import Graph
from ..core.node import Node
from ..core.types import DTYPES

# The batch size inside a shape known at import time (Shape of a batched value): drug binds the
# batch per call, so a shape vector carries this marker where the batch goes. Ops that only move
# such vectors around (Gather, Concat, Unsqueeze, ...) keep it; arithmetic on it is refused.
BATCH = np.iinfo(np.int64).min
HOLDABLE_DTYPES = DTYPES  # what a drug tensor can be
# Ops that move the entries of a shape vector without computing with them: folded at import even
# when a vector holds the batch marker.
BATCH_MOVERS = frozenset({"Identity", "Concat", "Gather", "Unsqueeze", "Squeeze", "Slice", "Reshape", "Equal", "Where"})


@dataclass(frozen=True)
class Merged:
    """An ONNX value whose first axis is the batch merged with the next axes of `node` (the
    (batch * heads, time, dim) of attention written with 3-D products): `node` holds it with
    its first `axes` axes apart, batch first. Ops that work on trailing axes (products, softmax,
    elementwise ops, transposes and reshapes that leave the first axis alone) run on `node`."""

    node: Node
    axes: int

    @property
    def rank(self) -> int:
        """The rank of the ONNX value."""
        return self.node.ndim - self.axes + 1

    def with_node(self, node: Node) -> Merged:
        return Merged(node, self.axes)


class ConversionError(GraphError):
    """A converter's refusal; the importer prefixes the file, the node and its op_type."""


def has_batch(value: np.ndarray) -> bool:
    return value.dtype == np.int64 and bool(np.any(value == BATCH))


def numpy_dtype(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


class Values:
    """Every ONNX value by name: a drug node (computed at run time), an array known now, or a float
    initializer that becomes a trained parameter when an op first needs it as a tensor."""

    def __init__(self, graph: Graph, statistics_as_constants: bool = False):
        self.graph = graph
        self.statistics_as_constants = statistics_as_constants  # batch norm's running statistics
        self.nodes: dict[str, Node] = {}
        self.known: dict[str, np.ndarray] = {}
        self.trainable: dict[str, np.ndarray] = {}  # parameters-to-be, created on first use
        self.shape_sources: dict[str, Node] = {}  # a known shape vector -> the node it is the Shape of
        self.aliases: dict[str, str] = {}  # Identity outputs of initializers not created yet -> their names
        self.merged: dict[str, Merged] = {}  # values whose first axis is the batch merged with others

    def resolve(self, name: str) -> str:
        while name in self.aliases:
            name = self.aliases[name]
        return name

    def batched_input(self, dtype: np.dtype) -> Node | None:
        """A graph input with the batch dimension and this dtype (to count the batch at run time)."""
        return next(
            (n for n in self.nodes.values() if n.op.name == "input" and None in n.shape and n.dtype == dtype), None
        )

    def is_runtime(self, name: str) -> bool:
        name = self.resolve(name)
        return name in self.nodes or name in self.trainable or name in self.merged

    def node(self, name: str) -> Node:
        """The drug node of a value, creating the parameter or constant it stands for if needed."""
        name = self.resolve(name)
        if name in self.nodes:
            return self.nodes[name]
        if name in self.merged:
            raise ConversionError(
                f"value '{name}' merges the batch with other axes (as batch * heads), which drug takes only in "
                f"MatMul, Softmax, elementwise ops, Transpose and Reshape that keep the first axis"
            )
        if name in self.trainable:
            value = self.trainable.pop(name)
            node = self.graph.parameter(name, value.shape, init=value, dtype=str(value.dtype))
        elif name in self.known:
            value = as_holdable(self.known[name], f"value '{name}'")
            node = self.graph.constant(value, dtype=str(value.dtype))
        else:
            raise ConversionError(f"value '{name}' is not computed by any earlier node, input or initializer")
        self.nodes[name] = node
        return node


def as_holdable(value: np.ndarray, what: str) -> np.ndarray:
    """`value` if a drug tensor can hold it, otherwise a ConversionError naming `what` and the dtype."""
    if has_batch(value):
        raise ConversionError(
            f"{what} holds the batch size (it comes from a Shape), which drug binds per call and cannot use as data"
        )
    if value.dtype not in HOLDABLE_DTYPES:
        raise ConversionError(
            f"{what} has dtype {value.dtype}, which drug cannot hold (it holds {', '.join(map(str, HOLDABLE_DTYPES))})"
        )
    return value


class NodeContext:
    """One ONNX node being converted."""

    def __init__(self, proto: onnx.NodeProto, values: Values, opset: int):
        self.proto = proto
        self.values = values
        self.opset = opset
        self._attrs = {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute}

    @property
    def graph(self) -> Graph:
        return self.values.graph

    @property
    def op_type(self) -> str:
        return self.proto.op_type

    def attr(self, name: str, default: Any = None) -> Any:
        value = self._attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def fail(self, message: str) -> ConversionError:
        return ConversionError(message)

    def has(self, i: int) -> bool:
        """Whether optional input `i` is given."""
        return i < len(self.proto.input) and self.proto.input[i] != ""

    @property
    def arity(self) -> int:
        return len(self.proto.input)

    def input(self, i: int) -> Node:
        """Input `i` as a drug node (a value known now becomes a constant)."""
        if not self.has(i):
            raise self.fail(f"input {i} is missing")
        return self.values.node(self.proto.input[i])

    def state(self, i: int) -> Node:
        """Input `i` as a state buffer of the graph when it is a float initializer (statistics that
        steps read and may update, never trained: batch norm's running mean and variance), or as
        a constant if the importer was asked for that."""
        name = self.values.resolve(self.proto.input[i]) if self.has(i) else ""
        if name in self.values.trainable:
            value = self.values.trainable.pop(name)
            if self.values.statistics_as_constants:
                self.values.known[name] = value
            else:
                self.values.nodes[name] = self.graph.buffer(name, value)
        return self.input(i)

    def merged(self, i: int) -> Merged | None:
        """Input `i` if its first axis is the batch merged with other axes (see Merged)."""
        return self.values.merged.get(self.values.resolve(self.proto.input[i])) if self.has(i) else None

    def inputs(self) -> list[Node]:
        return [self.input(i) for i in range(self.arity) if self.has(i)]

    def known(self, i: int) -> np.ndarray | None:
        """Input `i` if its value is known at import time (not computed, not trained), else None."""
        if not self.has(i) or self.values.is_runtime(self.proto.input[i]):
            return None
        return self.values.known.get(self.proto.input[i])

    def fixed(self, i: int) -> np.ndarray | None:
        """Input `i` as a value fixed at import (known, or an initializer's value without making it
        a parameter: exponents, padding values), else None."""
        if not self.has(i):
            return None
        return self.values.trainable.get(self.values.resolve(self.proto.input[i]), self.known(i))

    def shape_source(self, i: int) -> Node | None:
        """The node whose whole Shape input `i` is, if it is one (Expand(x, Shape(y)) broadcasts
        like y, batch included)."""
        return self.values.shape_sources.get(self.proto.input[i]) if self.has(i) else None

    def static(self, i: int, what: str) -> np.ndarray:
        """Input `i`, which drug needs at import time (a shape, axes, indices): refused otherwise."""
        value = self.known(i)
        if value is None:
            raise self.fail(
                f"input {i} ({what}, '{self.proto.input[i]}') must be known when importing (a constant, an "
                f"initializer loaded as a constant, or computed from shapes); here it is computed at run time"
            )
        return value

    def ints(self, i: int, what: str) -> list[int]:
        return [int(v) for v in np.asarray(self.static(i, what)).reshape(-1)]

    def constant(self, value: Any, like: Node) -> Node:
        """A constant with `like`'s dtype (ONNX's scalars and tensors of one op share a type)."""
        return self.graph.constant(as_holdable(np.asarray(value), "a constant"), dtype=str(like.dtype))

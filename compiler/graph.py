"""Define-then-run graphs: nodes are created in insertion order, so ids are a topological order."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import GraphError, ShapeError
from .types import TensorType, format_shape, normalize_shape

if TYPE_CHECKING:
    from ..ops.base import Op

_ids = itertools.count()


class Node:
    """One value in a graph: the result of `op` applied to `inputs`."""

    __slots__ = ("graph", "op", "inputs", "type", "id", "name", "__weakref__")
    # NumPy operands on the left (`array * node`) defer to our reflected operators instead of
    # building an object array of nodes, one per element.
    __array_ufunc__ = None

    def __init__(self, graph: Graph, op: Op, inputs: Sequence[Node], type: TensorType):
        self.graph = graph
        self.op = op
        self.inputs = tuple(inputs)
        self.type = type
        self.id = next(_ids)
        self.name: str | None = None

    shape = property(lambda self: self.type.shape)
    dtype = property(lambda self: self.type.dtype)
    ndim = property(lambda self: len(self.type.shape))

    @property
    def label(self) -> str:
        return self.name if self.name is not None else f"{self.op.name}#{self.id}"

    def describe(self) -> str:
        return f"'{self.label}' {format_shape(self.shape)} {self.dtype}"

    def named(self, name: str) -> Node:
        """Give this node a name so that `graph[name]` finds it; returns the node."""
        self.graph._register(self, name)
        return self

    def __repr__(self) -> str:
        args = ", ".join(i.label for i in self.inputs)
        return f"<{self.label} = {self.op!r}({args}) : {self.type}>"

    # Operators build ops lazily (ops import this module).
    def __add__(self, other: Any) -> Node:
        return _ops().add(self, other)

    def __radd__(self, other: Any) -> Node:
        return _ops().add(other, self)

    def __sub__(self, other: Any) -> Node:
        return _ops().sub(self, other)

    def __rsub__(self, other: Any) -> Node:
        return _ops().sub(other, self)

    def __mul__(self, other: Any) -> Node:
        return _ops().mul(self, other)

    def __rmul__(self, other: Any) -> Node:
        return _ops().mul(other, self)

    def __truediv__(self, other: Any) -> Node:
        return _ops().div(self, other)

    def __rtruediv__(self, other: Any) -> Node:
        return _ops().div(other, self)

    def __matmul__(self, other: Any) -> Node:
        return _ops().matmul(self, other)

    def __rmatmul__(self, other: Any) -> Node:
        return _ops().matmul(other, self)

    def __neg__(self) -> Node:
        return _ops().neg(self)

    def __getitem__(self, index: Any) -> Node:
        return _ops().getitem(self, index)

    @property
    def T(self) -> Node:
        return _ops().transpose(self)

    def __bool__(self) -> bool:
        raise GraphError(f"node {self.label} has no value until the graph runs; it cannot be used as a bool")


@functools.cache
def _ops():
    from .. import ops

    return ops


class ParameterStore(Mapping[str, np.ndarray]):
    """Live parameter buffers, by name. Arrays are never replaced, so views stay valid."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._arrays[name]
        except KeyError:
            raise GraphError(f"no parameter named '{name}'; parameters are {sorted(self._arrays)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def _add(self, name: str, value: np.ndarray) -> None:
        self._arrays[name] = value


class Graph:
    """A DAG declared with inputs, parameters, constants and ops; compiled into callables."""

    def __init__(self, seed: int = 0, dtype: str = "float32"):
        self.rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.params = ParameterStore()
        self._named: dict[str, Node] = {}

    def __getitem__(self, name: str) -> Node:
        try:
            return self._named[name]
        except KeyError:
            raise GraphError(f"no node named '{name}'; named nodes are {sorted(self._named)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._named

    @property
    def parameters(self) -> list[Node]:
        from ..ops.leaves import ParameterOp

        return [n for n in self._named.values() if isinstance(n.op, ParameterOp)]

    def _register(self, node: Node, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise GraphError(f"node names must be non-empty strings, got {name!r}")
        if name in self._named and self._named[name] is not node:
            raise GraphError(f"duplicate node name '{name}': {self._named[name]!r} already has it")
        if node.name is not None and node.name != name:
            self._named.pop(node.name, None)
        node.name = name
        self._named[name] = node

    def _leaf(self, op: Op, type: TensorType, name: str | None) -> Node:
        node = Node(self, op, (), type)
        if name is not None:
            self._register(node, name)
        return node

    def input(self, name: str, shape: Sequence[int | None], dtype: str | None = None) -> Node:
        """A value fed at each call; a None dimension is the batch size, bound per call."""
        from ..ops.leaves import InputOp

        return self._leaf(InputOp(), TensorType(normalize_shape(shape), self._dtype(dtype)), name)

    def parameter(
        self, name: str, shape: Sequence[int], init: str | np.ndarray = "xavier", dtype: str | None = None
    ) -> Node:
        """A trained value owned by the graph; Xavier (Glorot uniform) unless `init` says otherwise."""
        from ..ops.leaves import ParameterOp, initial_value

        shape = normalize_shape(shape)
        if None in shape:
            raise ShapeError(f"parameter '{name}' {format_shape(shape)}: parameters cannot have a batch dimension")
        dt = self._dtype(dtype)
        if name in self._named:
            raise GraphError(f"duplicate node name '{name}': {self._named[name]!r} already has it")
        value = np.asarray(initial_value(name, shape, dt, init, self.rng), order="C")
        node = self._leaf(ParameterOp(), TensorType(shape, dt), name)
        self.params._add(name, value)
        return node

    def constant(self, value: Any, name: str | None = None, dtype: str | None = None) -> Node:
        """A fixed value baked into the compiled code; float data takes the graph's dtype."""
        from ..ops.leaves import ConstantOp

        array = np.asarray(value)
        if dtype is not None:
            array = array.astype(dtype)
        elif array.dtype.kind in "fc" or array.dtype == np.bool_:
            array = array.astype(self.dtype)
        elif array.dtype.kind in "iu":
            array = array.astype(np.int32 if array.dtype.itemsize <= 4 else np.int64)
        array = np.asarray(array, order="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
        array.setflags(write=False)
        return self._leaf(ConstantOp(array), TensorType(array.shape, array.dtype), name)

    def _dtype(self, dtype: str | None) -> np.dtype:
        return self.dtype if dtype is None else np.dtype(dtype)

    def compile(
        self,
        loss: Node | None = None,
        outputs: Node | Sequence[Node] | None = None,
        optimizer: Any = None,
        params: Sequence[Node | str] | None = None,
        backend: str | None = None,
        check_finite: bool = False,
    ):
        """Compile a train step (loss + optimizer), an evaluator (loss) or a predictor (outputs)."""
        from ..runtime.step import compile_step

        return compile_step(self, loss, outputs, optimizer, params, backend, check_finite)


def common_graph(values: Sequence[Any], op_name: str) -> Graph:
    graphs = {id(v.graph): v.graph for v in values if isinstance(v, Node)}
    if not graphs:
        raise GraphError(f"{op_name}: needs at least one graph node among its inputs")
    if len(graphs) > 1:
        raise GraphError(f"{op_name}: inputs come from different graphs")
    return next(iter(graphs.values()))

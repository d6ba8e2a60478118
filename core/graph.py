"""Define-then-run graphs: inputs, parameters and constants, and the nodes built on them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import GraphError, ShapeError
from .leaves import BufferOp, ConstantOp, InputOp, ParameterOp, initial_value
from .node import Node
from .op import Op
from .types import TensorType, format_shape, normalize_shape

RANDOM_COUNTER = "random/step"  # the state buffer random ops read (Graph.random_stream)


class ArrayStore(Mapping[str, np.ndarray]):
    """Live arrays of a graph by name (its parameters, its state buffers). Arrays are never
    replaced, so views stay valid; compiled steps update them in place."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "parameter", "state buffer": for error messages
        self._arrays: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._arrays[name]
        except KeyError:
            raise GraphError(f"no {self.kind} named '{name}'; {self.kind}s are {sorted(self._arrays)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def _add(self, name: str, value: np.ndarray) -> None:
        self._arrays[name] = value


class Graph:
    """A DAG declared with inputs, parameters, constants and ops (drug.Graph adds `compile`)."""

    def __init__(self, seed: int = 0, dtype: str = "float32"):
        self.seed = seed  # of the initial parameters (rng) and of the random ops' keys
        self.rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.params = ArrayStore("parameter")
        self.state = ArrayStore("state buffer")  # not trained, updated by steps: batch-norm statistics, RNG counters
        self._named: dict[str, Node] = {}
        self._random_counter: Node | None = None
        self._random_ops = 0

    def __getitem__(self, name: str) -> Node:
        try:
            return self._named[name]
        except KeyError:
            raise GraphError(f"no node named '{name}'; named nodes are {sorted(self._named)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._named

    @property
    def parameters(self) -> list[Node]:
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
        return self._leaf(InputOp(), TensorType(normalize_shape(shape), self._dtype(dtype)), name)

    def parameter(
        self, name: str, shape: Sequence[int], init: str | np.ndarray = "xavier", dtype: str | None = None
    ) -> Node:
        """A trained value owned by the graph; Xavier (Glorot uniform) unless `init` says otherwise."""
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

    def buffer(self, name: str, value: Any, dtype: str | None = None) -> Node:
        """A state buffer: a value the graph owns that steps read and update in place without
        training it (batch-norm running statistics, the random-number counter). Its initial
        value is `value` (a number or an array; floats take the graph's dtype); it lives in
        `graph.state[name]` and in checkpoints."""
        if name in self._named:
            raise GraphError(f"duplicate node name '{name}': {self._named[name]!r} already has it")
        array = np.array(value, dtype=dtype or (self.dtype if np.asarray(value).dtype.kind == "f" else None))
        node = self._leaf(BufferOp(), TensorType(array.shape, array.dtype), name)
        self.state._add(name, array)
        return node

    def random_stream(self) -> tuple[Node, int]:
        """For a new random op: the graph's step counter (an int64 state buffer, created on first
        use, that compiled functions drawing random numbers advance by one per call) and the op's
        salt, its number among the graph's random ops in construction order."""
        if self._random_counter is None:
            self._random_counter = self.buffer(RANDOM_COUNTER, 0, "int64")
        self._random_ops += 1
        return self._random_counter, self._random_ops - 1

    @property
    def random_counter(self) -> Node | None:
        return self._random_counter

    def constant(self, value: Any, name: str | None = None, dtype: str | None = None) -> Node:
        """A fixed value baked into the compiled code; float data takes the graph's dtype, bool
        data (a mask) stays bool."""
        array = np.asarray(value)
        if dtype is not None:
            array = array.astype(dtype)
        elif array.dtype.kind in "fc":
            array = array.astype(self.dtype)
        elif array.dtype.kind in "iu":
            array = array.astype(np.int32 if array.dtype.itemsize <= 4 else np.int64)
        array = np.asarray(array, order="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
        array.setflags(write=False)
        return self._leaf(ConstantOp(array), TensorType(array.shape, array.dtype), name)

    def _dtype(self, dtype: str | None) -> np.dtype:
        return self.dtype if dtype is None else np.dtype(dtype)

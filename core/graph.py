"""Define-then-run graphs: inputs, parameters and constants, and the nodes built on them."""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .arrays import HostArrays
from .errors import GraphError, ShapeError
from .leaves import BufferOp, ConstantOp, InputOp, ParameterOp, initial_value
from .node import Node
from .op import Op
from .pages import aligned_copy
from .types import TensorType, format_shape, normalize_shape

# A parameter or constant of this many bytes or more (a 784 x 512 float32 weight) lives on huge
# pages (pages.py)
HUGE_MIN = 1 << 20

RANDOM_COUNTER = "random/step"  # the state buffer random ops read (Graph.random_stream)


class ArrayStore(HostArrays):
    """Live arrays of a graph by name: its parameters (`g.params["w1"]`), its state buffers
    (`g.state`). Arrays are never replaced, so views stay valid: compiled steps update them in
    place, and writing into them changes the model. On a device backend (OpenCL) the steps update
    the device's copies; reading an array here brings their values back (see core/arrays.py).

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> w = g.parameter("w", (3, 2), init="zeros")
        >>> g.params
        ArrayStore(parameters: w (3, 2) float32; 6 values, 24 B)
        >>> g.params["w"].sum()
        np.float32(0.0)
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind  # "parameter", "state buffer": for error messages

    def _missing(self, name: str) -> GraphError:
        return GraphError(f"no {self.kind} named '{name}'; {self.kind}s are {sorted(self._arrays)}")

    def __contains__(self, name: object) -> bool:  # Mapping's would raise _missing's GraphError (and mark a write)
        return name in self._arrays

    @property
    def size(self) -> int:
        """Values in all arrays together."""
        return sum(a.size for a in self._arrays.values())

    @property
    def nbytes(self) -> int:
        """Bytes of all arrays together."""
        return sum(a.nbytes for a in self._arrays.values())

    def __repr__(self) -> str:
        if not self._arrays:
            return f"ArrayStore({self.kind}s: none)"
        shown = [f"{k} {format_shape(a.shape)} {a.dtype}" for k, a in list(self._arrays.items())[:8]]
        more = f", ... {len(self) - 8} more" if len(self) > 8 else ""
        listed = ", ".join(shown) + more
        return f"ArrayStore({self.kind}s: {listed}; {self.size:,} values, {format_bytes(self.nbytes)})"


def format_bytes(n: int) -> str:
    """`n` bytes as B, KiB, MiB or GiB with three significant digits."""
    if n < 1024:
        return f"{n} B"
    exponent = min(int(math.log(n, 1024)), 3)
    return f"{n / 1024**exponent:.3g} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


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
        self._made: list[weakref.ref[Node]] = []  # nodes made at top level (not by the compiler)

    def _adopt(self, node: Node) -> None:
        """Remember a node the user made (Node calls this; nodes made while compiling are not)."""
        self._made.append(weakref.ref(node))
        if len(self._made) % 4096 == 0:  # forget nodes nobody holds any more
            self._made = [ref for ref in self._made if ref() is not None]

    def nodes(self) -> list[Node]:
        """Every node made by the user's calls that is still alive (referenced by the user or by a
        later node), in creation order, internal nodes of composite calls included."""
        alive = [n for n in (ref() for ref in self._made) if n is not None]
        self._made = [weakref.ref(n) for n in alive]
        seen: dict[int, Node] = {}
        for node in alive:
            stack = [node]
            while stack:
                n = stack.pop()
                if n.id not in seen and n.graph is self:
                    seen[n.id] = n
                    stack.extend(n.inputs)
        return sorted(seen.values(), key=lambda n: n.id)

    def evaluate(self, nodes: Node | Sequence[Node], feeds: Mapping[str, Any]) -> Any:
        """The value of `nodes` for `feeds` (drug.Graph computes it; a bare core graph cannot)."""
        raise GraphError("evaluating nodes needs a drug.Graph (import drug and build with dg.Graph)")

    def __repr__(self) -> str:
        nodes = self.nodes()
        inputs = [n.label for n in nodes if isinstance(n.op, InputOp)]
        return (
            f"<Graph: {len(nodes)} nodes, inputs {inputs}, {len(self.params)} parameters "
            f"({self.params.size:,} values, {format_bytes(self.params.nbytes)}), {self.dtype}, seed {self.seed}>"
        )

    def __getitem__(self, name: str) -> Node:
        """The node named `name` (inputs, parameters, and nodes named with `node.named(...)`).

        Raises:
            GraphError: No node has that name (the message lists the names).
        """
        try:
            return self._named[name]
        except KeyError:
            raise GraphError(f"no node named '{name}'; named nodes are {sorted(self._named)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._named

    @property
    def parameters(self) -> list[Node]:
        """The parameter nodes, in the order they were declared (their values: `g.params`)."""
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
        """A value fed at each call of a compiled function, by name.

        Args:
            name: The feed's name (`train(x=...)`); unique in the graph.
            shape: The shape; one None dimension is the batch size, bound per call (every
                batched feed of a call must agree on it).
            dtype: "float32", "float64", "int32" or "int64" (default: the graph's dtype).

        Returns:
            The input node.

        Raises:
            GraphError: The name is taken or empty.
            ShapeError: A negative dimension, or more than one None.

        Example:
            >>> import drug as dg
            >>> g = dg.Graph()
            >>> g.input("labels", (None,), dtype="int32")
            <labels = input : (None,) int32>
        """
        return self._leaf(InputOp(), TensorType(normalize_shape(shape), self._dtype(dtype)), name)

    def parameter(
        self, name: str, shape: Sequence[int], init: str | np.ndarray = "xavier", dtype: str | None = None
    ) -> Node:
        """A trained value owned by the graph; its live array is `g.params[name]`.

        Args:
            name: Unique in the graph; checkpoints store the value under it.
            shape: A static shape (no batch dimension).
            init: "xavier" (or "glorot": uniform in ±sqrt(6 / (fan_in + fan_out)), the default),
                "normal" (Gaussian with variance 2 / (fan_in + fan_out)), "zeros", "ones", or an
                array of this shape. Fans follow Glorot: (in, out) matrices, OIHW kernels.
            dtype: Default: the graph's dtype.

        Returns:
            The parameter node.

        Raises:
            GraphError: The name is taken, an unknown init, or an init array of another shape.
            ShapeError: A None dimension.

        Example:
            >>> import drug as dg
            >>> g = dg.Graph(seed=0)
            >>> w = g.parameter("w", (784, 256))
            >>> g.params["w"].shape, bool(abs(g.params["w"]).max() <= (6 / (784 + 256)) ** 0.5)
            ((784, 256), True)
        """
        shape = normalize_shape(shape)
        if None in shape:
            raise ShapeError(f"parameter '{name}' {format_shape(shape)}: parameters cannot have a batch dimension")
        dt = self._dtype(dtype)
        if name in self._named:
            raise GraphError(f"duplicate node name '{name}': {self._named[name]!r} already has it")
        value = aligned_copy(np.asarray(initial_value(name, shape, dt, init, self.rng)), HUGE_MIN)
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
        """The step counter random ops read (`g.state["random/step"]`), None before the first one."""
        return self._random_counter

    def constant(self, value: Any, name: str | None = None, dtype: str | None = None) -> Node:
        """A fixed value baked into the compiled code (Python numbers and arrays given to ops
        become constants by themselves).

        Args:
            value: A number or an array.
            name: Optional, to find it with `g[name]`.
            dtype: Default: float data takes the graph's dtype, integers int32 (int64 if wider),
                bools stay bool (a mask).

        Returns:
            The constant node (read-only value).

        Example:
            >>> import drug as dg
            >>> g = dg.Graph()
            >>> g.constant([1.0, 2.0])
            <constant#... = constant(shape=(2,)) : (2,) float32>
        """
        array = np.asarray(value)
        if dtype is not None:
            array = array.astype(dtype)
        elif array.dtype.kind in "fc":
            array = array.astype(self.dtype)
        elif array.dtype.kind in "iu":
            array = array.astype(np.int32 if array.dtype.itemsize <= 4 else np.int64)
        array = aligned_copy(array, HUGE_MIN)  # kernels read it where it is, like a parameter
        array.setflags(write=False)
        return self._leaf(ConstantOp(array), TensorType(array.shape, array.dtype), name)

    def _dtype(self, dtype: str | None) -> np.dtype:
        return self.dtype if dtype is None else np.dtype(dtype)

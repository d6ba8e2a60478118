"""The Op contract: one class holds an op's shape rule, reference forward and gradient rule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..compiler.errors import GraphError, ShapeError
from ..compiler.graph import Graph, Node, common_graph
from ..compiler.types import FLOAT_DTYPES, TensorType, broadcast_shapes, format_shape

REGISTRY: dict[str, type[Op]] = {}


@dataclass
class Example:
    """Inputs for registry-driven tests: arrays, and which of them are differentiable."""

    inputs: list[np.ndarray]
    differentiable: list[bool]
    batch_axis: dict[int, int] = field(default_factory=dict)  # input index -> axis declared None


class Op:
    """Subclass to define an op. Attributes set in __init__ are its (hashable) parameters."""

    name: ClassVar[str] = ""
    arity: ClassVar[int | None] = None  # None: any number of inputs (n-ary)
    # its native kernel may stop the step (an id out of range): the schedule runs it before every
    # in-place parameter update, so a failed step changes nothing (Python callbacks are treated alike)
    may_fail: ClassVar[bool] = False
    # its kernel calls BLAS, whose own threads already use every core: it never runs beside
    # other kernels (compiler/concurrency.py)
    uses_blas: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            REGISTRY[cls.name] = cls

    def infer(self, *inputs: TensorType) -> TensorType:
        raise NotImplementedError(f"op '{self.name}' has no shape rule")

    def ref(self, *xs: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"op '{self.name}' has no reference forward")

    def ref_into(self, out: np.ndarray, *xs: np.ndarray) -> None:
        """The reference forward written into `out`: how the native backend runs an op without a
        kernel. Override to skip the temporary (an MPI allreduce receives straight into `out`)."""
        out[...] = self.ref(*xs)

    def grad(self, g: Node, out: Node, *xs: Node) -> Sequence[Node | None]:
        """Gradients w.r.t. each input as graph nodes (None: not differentiable)."""
        raise GraphError(f"op '{self.name}' has no gradient rule")

    @classmethod
    def example(cls, rng: np.random.Generator, dims: Sequence[int]) -> tuple[Op, Example] | None:
        """A random instance for the registry tests; `dims` are small sizes drawn by the test."""
        return None

    def params(self) -> dict[str, Any]:
        return dict(vars(self))

    def key(self) -> tuple:
        """Identity for caching and common-subexpression elimination."""
        return (type(self).__qualname__,) + tuple(sorted((k, _hashable(v)) for k, v in self.params().items()))

    def __call__(self, *inputs: Any) -> Node:
        return apply(self, *inputs)

    def __repr__(self) -> str:
        attrs = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if not isinstance(v, np.ndarray))
        return f"{self.name}({attrs})" if attrs else self.name


def _hashable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, np.dtype):
        return value.str
    return value


def as_node(graph: Graph, value: Any, dtype: np.dtype) -> Node:
    """Python numbers and arrays become constants; numbers adopt the other operands' dtype."""
    if isinstance(value, Node):
        return value
    array = np.asarray(value)
    if array.ndim == 0 and array.dtype.kind in "biuf":
        return graph.constant(array, dtype=dtype)
    return graph.constant(array)


def apply(op: Op, *args: Any) -> Node:
    """Create the node `op(*args)`, checking shapes now so errors point at the user's line."""
    if op.arity is not None and len(args) != op.arity:
        raise GraphError(f"op '{op.name}' takes {op.arity} inputs, got {len(args)}")
    graph = common_graph(args, op.name)
    dtypes = [a.dtype for a in args if isinstance(a, Node)]
    float_dtypes = [d for d in dtypes if d in FLOAT_DTYPES]
    weak_dtype = float_dtypes[0] if float_dtypes else graph.dtype
    inputs = [as_node(graph, a, weak_dtype) for a in args]
    try:
        out_type = op.infer(*(i.type for i in inputs))
        if out_type.shape.count(None) > 1:  # (None, 1) * (None, 1, 4): every example paired with every other
            raise ShapeError(f"the result {format_shape(out_type.shape)} would have the batch dimension twice")
    except ShapeError as error:
        described = ", ".join(i.describe() for i in inputs)
        raise ShapeError(f"op '{op.name}' on inputs {described}: {error}") from None
    return Node(graph, op, inputs, out_type)


def same_float_dtype(op_name: str, types: Sequence[TensorType]) -> np.dtype:
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise ShapeError(f"mixed dtypes {sorted(str(d) for d in dtypes)}; cast explicitly")
    dtype = dtypes.pop()
    if dtype not in FLOAT_DTYPES:
        raise ShapeError(f"needs float inputs, got {dtype}")
    return dtype


class Elementwise(Op):
    """Broadcasting ops evaluated one element at a time; the fusion pass groups them."""

    def infer(self, *inputs: TensorType) -> TensorType:
        dtype = same_float_dtype(self.name, inputs)
        return TensorType(broadcast_shapes([t.shape for t in inputs]), dtype)

    @classmethod
    def example(cls, rng, dims):
        n = cls.arity or 3
        shape = (dims[0], dims[1])
        # a binary/n-ary op's last input broadcasts, covering the sum-to-shape gradient
        shapes = [shape] if n == 1 else [shape] * (n - 1) + [shape[1:]]
        xs = [cls.sample_input(rng, s) for s in shapes]
        batched = {i: 0 for i, s in enumerate(shapes) if len(s) == 2}
        return cls(), Example(xs, [True] * n, batched)

    @staticmethod
    def sample_input(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return rng.uniform(-2.0, 2.0, size=shape)

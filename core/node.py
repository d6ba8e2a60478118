"""Nodes: one value of a graph each, the result of an op applied to earlier nodes. Node ids come
from one counter, so creation order is a topological order."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import GraphError, ShapeError
from .types import FLOAT_DTYPES, TensorType, format_shape

if TYPE_CHECKING:
    from .op import Op

_ids = itertools.count()

# The functions behind Node's operators (+ - * / @ **, unary - and abs(), comparisons, & | ~, x[i],
# x.T, x.astype). They are ops, which live a layer above this one: drug.ops registers them when it
# is imported.
OPERATOR_NAMES = (
    "add", "sub", "mul", "div", "neg", "matmul", "getitem", "transpose", "pow", "abs", "cast",
    "less", "less_equal", "greater", "greater_equal", "equal", "not_equal",
    "logical_and", "logical_or", "logical_xor", "logical_not",
)  # fmt: skip
_operators = SimpleNamespace()


def register_operators(**functions: Callable[..., Node]) -> None:
    """Give Node its operators (drug.ops calls this once, with its add, sub, ... functions)."""
    unknown = set(functions) - set(OPERATOR_NAMES)
    if unknown:
        raise ValueError(f"unknown operators {sorted(unknown)}; Node has {OPERATOR_NAMES}")
    vars(_operators).update(functions)


def _operator(name: str) -> Callable[..., Node]:
    try:
        return getattr(_operators, name)
    except AttributeError:
        raise GraphError(f"node operator '{name}' needs drug.ops; import drug first") from None


class Node:
    """One value in a graph: the result of `op` applied to `inputs`."""

    __slots__ = ("graph", "op", "inputs", "type", "id", "name", "__weakref__")
    # NumPy operands on the left (`array * node`) defer to our reflected operators instead of
    # building an object array of nodes, one per element.
    __array_ufunc__ = None

    def __init__(self, graph: Any, op: Op, inputs: Sequence[Node], type: TensorType):  # graph: a core.graph.Graph
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

    def __add__(self, other: Any) -> Node:
        return _operator("add")(self, other)

    def __radd__(self, other: Any) -> Node:
        return _operator("add")(other, self)

    def __sub__(self, other: Any) -> Node:
        return _operator("sub")(self, other)

    def __rsub__(self, other: Any) -> Node:
        return _operator("sub")(other, self)

    def __mul__(self, other: Any) -> Node:
        return _operator("mul")(self, other)

    def __rmul__(self, other: Any) -> Node:
        return _operator("mul")(other, self)

    def __truediv__(self, other: Any) -> Node:
        return _operator("div")(self, other)

    def __rtruediv__(self, other: Any) -> Node:
        return _operator("div")(other, self)

    def __matmul__(self, other: Any) -> Node:
        return _operator("matmul")(self, other)

    def __rmatmul__(self, other: Any) -> Node:
        return _operator("matmul")(other, self)

    def __neg__(self) -> Node:
        return _operator("neg")(self)

    def __pow__(self, other: Any) -> Node:
        return _operator("pow")(self, other)

    def __rpow__(self, other: Any) -> Node:
        return _operator("pow")(other, self)

    def __abs__(self) -> Node:
        return _operator("abs")(self)

    # Comparisons build bool nodes, as in NumPy, PyTorch and JAX. So `==` is not identity: nodes
    # hash by identity, and code comparing nodes themselves must use `is`.
    def __lt__(self, other: Any) -> Node:
        return _operator("less")(self, other)

    def __le__(self, other: Any) -> Node:
        return _operator("less_equal")(self, other)

    def __gt__(self, other: Any) -> Node:
        return _operator("greater")(self, other)

    def __ge__(self, other: Any) -> Node:
        return _operator("greater_equal")(self, other)

    def __eq__(self, other: Any) -> Node:  # type: ignore[override]
        return _operator("equal")(self, other)

    def __ne__(self, other: Any) -> Node:  # type: ignore[override]
        return _operator("not_equal")(self, other)

    __hash__ = object.__hash__

    def __and__(self, other: Any) -> Node:
        return _operator("logical_and")(self, other)

    def __rand__(self, other: Any) -> Node:
        return _operator("logical_and")(other, self)

    def __or__(self, other: Any) -> Node:
        return _operator("logical_or")(self, other)

    def __ror__(self, other: Any) -> Node:
        return _operator("logical_or")(other, self)

    def __xor__(self, other: Any) -> Node:
        return _operator("logical_xor")(self, other)

    def __rxor__(self, other: Any) -> Node:
        return _operator("logical_xor")(other, self)

    def __invert__(self) -> Node:
        return _operator("logical_not")(self)

    def astype(self, dtype: Any) -> Node:
        """This node's values converted to `dtype` (float32, float64, int32, int64 or bool), like dg.cast."""
        return _operator("cast")(self, dtype)

    def __getitem__(self, index: Any) -> Node:
        return _operator("getitem")(self, index)

    @property
    def T(self) -> Node:
        return _operator("transpose")(self)

    def __bool__(self) -> bool:
        raise GraphError(f"node {self.label} has no value until the graph runs; it cannot be used as a bool")


def common_graph(values: Sequence[Any], op_name: str) -> Any:
    graphs = {id(v.graph): v.graph for v in values if isinstance(v, Node)}
    if not graphs:
        raise GraphError(f"{op_name}: needs at least one graph node among its inputs")
    if len(graphs) > 1:
        raise GraphError(f"{op_name}: inputs come from different graphs")
    return next(iter(graphs.values()))


def as_node(graph: Any, value: Any, dtype: np.dtype) -> Node:
    """Python numbers and arrays become constants; numbers adopt the other operands' dtype."""
    if isinstance(value, Node):
        return value
    array = np.asarray(value)
    if array.ndim == 0 and array.dtype.kind in "biuf":
        return graph.constant(array, dtype=dtype)
    return graph.constant(array)


def _integral(value: Any) -> bool:
    return isinstance(value, (bool, int, np.bool_, np.integer))


def apply(op: Op, *args: Any) -> Node:
    """Create the node `op(*args)`, checking shapes now so errors point at the user's line."""
    if op.arity is not None and len(args) != op.arity:
        raise GraphError(f"op '{op.name}' takes {op.arity} inputs, got {len(args)}")
    graph = common_graph(args, op.name)
    dtypes = [a.dtype for a in args if isinstance(a, Node)]
    float_dtypes = [d for d in dtypes if d in FLOAT_DTYPES]
    # Python numbers are weakly typed: a float adopts the float operands' dtype (else the graph's),
    # an int or a bool adopts the first operand's dtype, whatever it is (`ids + 1` stays integer).
    float_dtype = float_dtypes[0] if float_dtypes else graph.dtype
    any_dtype = float_dtypes[0] if float_dtypes else dtypes[0] if dtypes else graph.dtype
    inputs = [as_node(graph, a, any_dtype if _integral(a) else float_dtype) for a in args]
    try:
        out_type = op.infer(*(i.type for i in inputs))
        if out_type.shape.count(None) > 1:  # (None, 1) * (None, 1, 4): every example paired with every other
            raise ShapeError(f"the result {format_shape(out_type.shape)} would have the batch dimension twice")
    except ShapeError as error:
        described = ", ".join(i.describe() for i in inputs)
        raise ShapeError(f"op '{op.name}' on inputs {described}: {error}") from None
    return Node(graph, op, inputs, out_type)

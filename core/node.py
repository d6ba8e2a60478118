"""Nodes: one value of a graph each, the result of an op applied to earlier nodes. Node ids come
from one counter, so creation order is a topological order."""

from __future__ import annotations

import functools
import itertools
import threading
import weakref
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import numpy as np

from .errors import GraphError, ShapeError, with_context
from .types import FLOAT_DTYPES, TensorType, format_shape

if TYPE_CHECKING:
    from .op import Op

_ids = itertools.count()


def id_mark() -> int:
    """A number below the id of every node made from now on (ids only grow): what a compile made
    is what has a larger id than the mark taken before it."""
    return next(_ids)


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


class Call:
    """One call of a public op function or of a layer, shared by every node it made. A composite
    call (softmax_cross_entropy: a per-row loss, then a mean) makes internal nodes the user never
    sees; errors about them name the call and its output, the node the user holds."""

    __slots__ = ("name", "kind", "_output", "composite")

    def __init__(self, name: str, kind: str = "op"):
        self.name = name  # the function's name ("softmax_cross_entropy") or the layer's ("dense1")
        self.kind = kind  # "op", or the layer's class name ("Dense")
        self._output: weakref.ref | None = None
        self.composite = False  # it made more than one computing node

    @property
    def output(self) -> Node | None:
        """The node the call returned (None while it runs, or if it returned no single node)."""
        return self._output() if self._output is not None else None

    def __str__(self) -> str:
        if self.kind == "op":
            return f"{self.name}()"
        if self.kind in COMPILER_KINDS:
            return self.name
        return f"layer '{self.name}' ({self.kind})"

    def __repr__(self) -> str:
        return f"<Call {self}>"

    def finish(self, out: Any) -> None:
        """Remember what the call returned (a weak reference: the nodes hold the call)."""
        first = out[0] if isinstance(out, (tuple, list)) and out else out  # (states, last state): states
        if isinstance(first, Node):
            self._output = weakref.ref(first)


# calls the compiler makes: a node's gradient rule, an optimizer update, nodes a pass fused into one
COMPILER_KINDS = ("gradient", "update", "fusion")


def user_name(node: Node) -> str:
    """The name of what the user called to make `node`: a layer's name, a composite call's
    output label, else the node's own label."""
    call = node.call
    if call is not None and call.kind not in ("op", *COMPILER_KINDS):
        return call.name
    if call is not None and call.output is not None:
        return call.output.label
    return node.label


# Per thread, the nodes made by the public call that is running (outermost first). A frame of
# None is an internal build (compile, autodiff): its nodes belong to no user call.
_frames = threading.local()


def _stack() -> list:
    stack = getattr(_frames, "stack", None)
    if stack is None:
        stack = _frames.stack = []
    return stack


class recording:
    """Record the nodes made inside the block as `call`'s (None: as internal, owned by no call);
    nested calls belong to the outermost one (the one the user made), unless `force`: the
    compiler labels the nodes of each gradient rule and optimizer update so, and an enclosing
    user call (dg.grad) still takes them over. `with recording(call) as made`: the list of the
    nodes. (A class, not a generator: every public op call enters one.)"""

    __slots__ = ("call", "force", "outer", "made")

    def __init__(self, call: Call | None, force: bool = False):
        self.call, self.force = call, force

    def __enter__(self) -> list[Node]:
        stack = _stack()
        self.made: list[Node] = []
        self.outer = bool(stack)
        stack.append(self.made if self.force or not self.outer else stack[-1])
        return self.made

    def __exit__(self, *exc: object) -> None:
        stack, call, made, force, outer = _stack(), self.call, self.made, self.force, self.outer
        stack.pop()
        if call is not None and (force or not outer):
            call.composite = sum(1 for node in made if node.inputs) > 1
            for node in made:
                node.call = call
        if force and outer:
            stack[-1].extend(made)
        elif call is not None and not outer:
            for node in made:
                node.graph._adopt(node)


def building_internally() -> bool:
    """Whether nodes are being made by the compiler (or inside a user call), not at top level."""
    return bool(_stack())


F = TypeVar("F", bound=Callable[..., Any])

# What op functions take as inputs: graph nodes, and Python numbers or NumPy arrays, which become
# constants (a number takes the dtype of the other float operands).
Operand: TypeAlias = "Node | float | int | np.ndarray"


def user_call(kind: str = "op") -> Callable[[F], F]:
    """Decorate a public op function: the nodes it makes share one `Call`, and a `GraphError`
    raised by an op it applies internally is prefixed with the function's name."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if _stack():  # nested: the outermost call owns the nodes
                return fn(*args, **kwargs)
            call = Call(fn.__name__, kind)
            try:
                with recording(call):
                    out = fn(*args, **kwargs)
            except GraphError as error:
                if f"'{fn.__name__}'" in str(error) or str(error).startswith(fn.__name__):
                    raise
                raise with_context(error, f"{fn.__name__}: ") from None
            call.finish(out)
            return out

        return wrapper  # type: ignore[return-value]

    return decorate


class Node:
    """One value in a graph: the result of `op` applied to `inputs`.

    Nodes are made by graph methods (`g.input`, `g.parameter`, `g.constant`) and by ops
    (`dg.relu(x)`, `x @ w`); they hold no value until the graph runs. `node.eval(**feeds)`
    computes one for a quick look.

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> h = dg.relu(x * 2.0)
        >>> h.shape, str(h.dtype)
        ((None, 3), 'float32')
    """

    __slots__ = ("graph", "op", "inputs", "type", "id", "name", "call", "__weakref__")
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
        self.call: Call | None = None  # the public call that made it (set when that call returns)
        stack = _stack()
        if stack:
            stack[-1].append(self)
        else:
            graph._adopt(self)

    shape = property(lambda self: self.type.shape)
    dtype = property(lambda self: self.type.dtype)
    ndim = property(lambda self: len(self.type.shape))

    @property
    def label(self) -> str:
        """The node's name, else `<op>#<id>`; the output of a composite call (a layer,
        softmax_cross_entropy) is `<call>#<id>`, after what the user called."""
        if self.name is not None:
            return self.name
        call = self.call
        if call is not None and call.composite and call.name != self.op.name and call.output is self:
            return f"{call.name}#{self.id}"
        return f"{self.op.name}#{self.id}"

    def describe(self) -> str:
        """The label, shape and dtype, as error messages show the node."""
        return f"'{self.label}' {format_shape(self.shape)} {self.dtype}"

    @property
    def where(self) -> str:
        """How the user recognises this node in an error: its label, and for an internal node of
        a composite call (softmax_cross_entropy's per-row loss) also that call and its output."""
        call = self.call
        out = call.output if call is not None else None
        if call is not None and call.kind in COMPILER_KINDS:
            return f"'{self.label}' (op '{self.op.name}', in the {call})"
        if out is None or out is self:
            return f"'{self.label}' (op '{self.op.name}')"
        return f"'{out.label}' ({call}; in its internal node {self.label}, op '{self.op.name}')"

    def eval(self, feeds: dict[str, Any] | None = None, /, **named: Any) -> np.ndarray:
        """This node's value for the given feeds, computed with the NumPy reference backend
        (the same as `dg.evaluate(node, ...)`); feeds the node does not need are ignored.

        Example:
            >>> import drug as dg, numpy as np
            >>> g = dg.Graph()
            >>> x = g.input("x", (None, 2))
            >>> (x * 3.0).eval(x=np.array([[1.0, 2.0]], np.float32))
            array([[3., 6.]], dtype=float32)
        """
        return self.graph.evaluate(self, {**(feeds or {}), **named})

    def named(self, name: str) -> Node:
        """Give this node a name so that `graph[name]` finds it; returns the node."""
        self.graph._register(self, name)
        return self

    def __repr__(self) -> str:
        if not self.inputs:  # a leaf: input, parameter, constant, optimizer state
            return f"<{self.label} = {self.op!r} : {self.type}>"
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
    """The one graph the nodes among `values` belong to; GraphError naming the nodes otherwise."""
    graphs: dict[int, list[Node]] = {}
    for v in values:
        if isinstance(v, Node):
            graphs.setdefault(id(v.graph), []).append(v)
    if not graphs:
        raise GraphError(f"{op_name}: needs at least one graph node among its inputs")
    if len(graphs) > 1:
        groups = [" and ".join(f"'{n.label}'" for n in nodes) for nodes in graphs.values()]
        raise GraphError(
            f"{op_name}: inputs come from different graphs: {groups[0]} from one, "
            + ", ".join(f"{group} from another" for group in groups[1:])
            + "; build each model's nodes from one dg.Graph"
        )
    return next(iter(graphs.values()))[0].graph


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
    graph = args[0].graph if args and isinstance(args[0], Node) else None
    if graph is not None and all(isinstance(a, Node) and a.graph is graph for a in args):
        inputs: Sequence[Node] = args  # nodes of one graph, the common case
    else:
        graph = common_graph(args, op.name)
        dtypes = [a.dtype for a in args if isinstance(a, Node)]
        float_dtypes = [d for d in dtypes if d in FLOAT_DTYPES]
        # Python numbers are weakly typed: a float adopts the float operands' dtype (else the
        # graph's), an int or a bool adopts the first operand's dtype, whatever it is (`ids + 1`
        # stays integer).
        float_dtype = float_dtypes[0] if float_dtypes else graph.dtype
        any_dtype = float_dtypes[0] if float_dtypes else dtypes[0] if dtypes else graph.dtype
        inputs = [as_node(graph, a, any_dtype if _integral(a) else float_dtype) for a in args]
    try:
        out_type = op.infer(*(i.type for i in inputs))
        if out_type.shape.count(None) > 1:  # (None, 1) * (None, 1, 4): every example paired with every other
            raise ShapeError(f"the result {format_shape(out_type.shape)} would have the batch dimension twice")
    except ShapeError as error:
        described = ", ".join(i.describe() for i in inputs)
        raise with_context(error, f"op '{op.name}' on inputs {described}: ") from None
    return Node(graph, op, inputs, out_type)

"""The Op contract: one class holds an op's meaning. Every hook a pass or a backend reads is an
attribute or method here, with a default; op classes override what applies to them.

What an op means lives in its class (ops/ and the higher-order ops of compiler/): the shape rule
(`infer`), the NumPy reference forward (`ref`) and the gradient rule (`grad`, in graph ops). How a
backend runs it is registered in that backend (backends/llvm/kernels/), keyed by the op class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from .errors import DTypeError, GraphError, ResultShapeError
from .node import apply
from .types import DTYPES, FLOAT_DTYPES, INT_DTYPES, Shape, TensorType

if TYPE_CHECKING:
    from .node import Node

REGISTRY: dict[str, type[Op]] = {}
T = TypeVar("T")


@dataclass(frozen=True)
class Specialized:
    """What a mode-dependent op becomes in one mode: its value and (buffer, new value) updates."""

    value: Node
    updates: tuple[tuple[Node, Node], ...] = ()


@dataclass
class Example:
    """Inputs for registry-driven tests: arrays, and which of them are differentiable."""

    inputs: list[np.ndarray]
    differentiable: list[bool]
    batch_axis: dict[int, int] = field(default_factory=dict)  # input index -> axis declared None


class Op:
    """Subclass to define an op: a name, a shape rule (`infer`), a NumPy forward (`ref`) and a
    gradient rule written with graph ops (`grad`). Attributes set in `__init__` are its
    (hashable) parameters. An op without a native kernel runs in native steps through a Python
    callback of its `ref` (correct, slower); apply it with `MyOp(...)(x, ...)`.

    Example:
        >>> import drug as dg, numpy as np
        >>> class Cube(dg.Op):
        ...     name = "cube"
        ...     arity = 1
        ...     def infer(self, x):
        ...         return x                        # same shape and dtype
        ...     def ref(self, x):
        ...         return x**3
        ...     def grad(self, g, out, x):
        ...         return [g * 3.0 * x * x]        # graph ops, so it differentiates again
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2))
        >>> dg.grad(dg.sum(Cube()(x)), x).eval(x=np.array([[1.0, 2.0]], np.float32))
        array([[ 3., 12.]], dtype=float32)
    """

    name: ClassVar[str] = ""
    arity: ClassVar[int | None] = None  # None: any number of inputs (n-ary)
    # Its forward may stop the step on bad data (an id out of range): schedules run it before every
    # in-place parameter update, so a failed step changes nothing (Python callbacks are treated alike).
    may_fail: ClassVar[bool] = False
    # Inputs read for their (run-time) shape only, never for their values (ones_like's, count's).
    shape_only_inputs: ClassVar[tuple[int, ...]] = ()
    # A reduction: how its values accumulate ("add", "max" or "min"). Fusion lets a reduction over
    # a loop's domain end that loop; `reduced_axes` and `keeps_reduced_axes` say over what.
    combine: ClassVar[str | None] = None
    # Several results (scan): `ref` returns a tuple, `output_types` lists their types, and nodes of
    # ops with `result_index` set pick them out; autodiff hands `grad` one cotangent per result.
    multi_output: ClassVar[bool] = False
    # The output is the input's data seen with another shape (reshape): no computation, no buffer.
    is_view: ClassVar[bool] = False
    # The op means one thing in a training step and another in inference (dropout, batch norm):
    # the `modes` pass replaces each of its nodes by what `specialize` builds for the program's mode.
    mode_dependent: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            REGISTRY[cls.name] = cls

    def infer(self, *inputs: TensorType) -> TensorType:
        """The output type from the input types; raise ShapeError (no node names: apply adds them)."""
        raise NotImplementedError(f"op '{self.name}' has no shape rule")

    def ref(self, *xs: np.ndarray) -> np.ndarray:
        """The NumPy reference forward: what the op means, and the oracle every backend is tested against."""
        raise NotImplementedError(f"op '{self.name}' has no reference forward")

    def ref_into(self, out: np.ndarray, *xs: np.ndarray) -> None:
        """The reference forward written into `out`: how a native backend runs an op without a
        kernel. Override to skip the temporary (an MPI allreduce receives straight into `out`).
        A result of another shape than `out` raises ResultShapeError (never broadcast into it)."""
        value = np.asarray(self.ref(*xs))
        if value.shape != out.shape:
            raise ResultShapeError(value.shape, out.shape)
        out[...] = value

    def grad(self, g: Node, out: Node, *xs: Node) -> Sequence[Node | None]:
        """Gradients w.r.t. each input as graph nodes (None: not differentiable), given the
        cotangent `g` of the output `out`. Autodiff sums a gradient back to its input's shape."""
        raise GraphError(f"op '{self.name}' has no gradient rule")

    @classmethod
    def example(cls, rng: np.random.Generator, dims: Sequence[int]) -> tuple[Op, Example] | None:
        """A random instance for the registry tests; `dims` are small sizes drawn by the test."""
        return None

    def flops(self, out: tuple[int, ...], *inputs: tuple[int, ...]) -> int | None:
        """Floating-point operations of one evaluation, given the concrete shapes of the output and
        the inputs: the profiler reports GFLOP/s for ops that count them (GEMMs, convolutions)
        and GB/s for the rest (None)."""
        return None

    def specialize(self, inputs: Sequence[Node], training: bool) -> Specialized:
        """For a mode-dependent op: the node computing it in this mode from `inputs` (built with
        other ops), and the state-buffer updates the mode makes (batch norm's running statistics)."""
        raise NotImplementedError(f"op '{self.name}' does not depend on the mode")

    def reduced_axes(self, in_shape: Shape) -> tuple[int, ...]:
        """For a reduction (`combine` set): the input axes it reduces."""
        raise NotImplementedError(f"op '{self.name}' is not a reduction")

    @property
    def keeps_reduced_axes(self) -> bool:
        """For a reduction: whether the output keeps the reduced axes (as size 1, aligned with
        the trailing axes of the input) or drops them."""
        return False

    def output_types(self) -> list[TensorType]:
        """For a multi-output op: the type of each result."""
        raise NotImplementedError(f"op '{self.name}' has a single result")

    @property
    def result_index(self) -> int | None:
        """For an op that picks result k of a multi-output input: k. Such a node computes
        nothing; the multi-output op's kernel writes its buffer."""
        return None

    def params(self) -> dict[str, Any]:
        return dict(vars(self))

    def key(self) -> tuple:
        """Identity for common-subexpression elimination and in-process caches: the class object
        itself (two classes of one name, such as two made by one factory function, are two ops)
        and its parameters. Its repr (class names, parameters) is the same in every process, which
        on-disk caches rely on; what their code generates is keyed there (a backend's business)."""
        params = self.params()
        return (type(self), *sorted((k, _hashable(v)) for k, v in params.items())) if params else (type(self),)

    def __call__(self, *inputs: Any) -> Node:
        return apply(self, *inputs)

    def __repr__(self) -> str:
        attrs = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if not isinstance(v, np.ndarray))
        return f"{self.name}({attrs})" if attrs else self.name


_ATOMS = frozenset({int, float, str, bool, type(None)})


def _hashable(value: Any) -> Any:
    if type(value) in _ATOMS:  # most parameters: no conversion
        return value
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, np.dtype):
        return value.str
    return value


NUMERIC_DTYPES = FLOAT_DTYPES + INT_DTYPES  # what arithmetic accepts (bool does not add)


def same_dtype(types: Sequence[TensorType], allowed: Sequence[np.dtype] = DTYPES, kind: str = "") -> np.dtype:
    """The one dtype all `types` share, which must be among `allowed` (`kind` names them in the
    message); DTypeError for mixed dtypes or one not allowed."""
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise DTypeError(f"mixed dtypes {sorted(str(d) for d in dtypes)}; cast explicitly (dg.cast, node.astype)")
    dtype = dtypes.pop()
    if dtype not in allowed:
        raise DTypeError(f"needs {kind or ' or '.join(map(str, allowed))} inputs, got {dtype}")
    return dtype


def same_float_dtype(op_name: str, types: Sequence[TensorType]) -> np.dtype:
    """The one float dtype all `types` share; DTypeError for mixed or non-float dtypes."""
    return same_dtype(types, FLOAT_DTYPES, "float")


def registered_for(table: dict[type, T], op: Op | type[Op]) -> T | None:
    """What `table` (a backend's rules, keyed by op class) holds for `op` (an op or an op class),
    found along its class's MRO: a subclass runs like its parent unless it registers its own."""
    for cls in (op if isinstance(op, type) else type(op)).__mro__:
        if cls in table:
            return table[cls]
    return None

"""Layers: callables that own named parameters and build graph ops, so autodiff and fusion see
through them. A layer creates its parameters on its first call (sizes come from the input) and
reuses them on every later call: an RNN cell applied T times trains one set of weights.

    dense = dg.layers.Dense(256, activation="relu", name="fc1")  # parameters fc1/w, fc1/b
    h = dense(x)

Parameters start as PyTorch's layers start them (Dense and Conv2D: U(±1/sqrt(fan_in)) for weight
and bias; Embedding: N(0, 1); recurrent cells: U(±1/sqrt(hidden)); BatchNorm: scale 1, bias 0),
unless `init=` (weights) or `bias_init=` say otherwise.
"""

from __future__ import annotations

import functools
import itertools
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .compiler.scan import scan as scan_loop
from .core import initializers
from .core.errors import GraphError, ShapeError
from .core.graph import Graph
from .core.node import Call, Node, building_internally, recording
from .core.types import format_shape
from .ops import (
    attention,
    avg_pool2d,
    batch_norm,
    concat,
    conv2d,
    dropout,
    elu,
    embedding,
    gelu,
    layer_norm,
    leaky_relu,
    max_pool2d,
    relu,
    reshape,
    rms_norm,
    sigmoid,
    silu,
    tanh,
    transpose,
)  # fmt: skip
from .ops.attention import attention_packed

Activation = str | Callable[[Node], Node] | None
# a parameter's init: a name ("xavier", "he_normal", ...), an initializer (dg.initializers), an array, or None for
# the layer's PyTorch-like default
Init = str | np.ndarray | initializers.Initializer | None
ACTIVATIONS: dict[str, Callable[[Node], Node]] = {"relu": relu, "sigmoid": sigmoid, "tanh": tanh}
ACTIVATIONS |= {
    "gelu": gelu,
    "gelu_tanh": lambda x: gelu(x, "tanh"),
    "silu": silu,
    "elu": elu,
    "leaky_relu": leaky_relu,
}
_counters: weakref.WeakKeyDictionary[Graph, dict[str, itertools.count]] = weakref.WeakKeyDictionary()


def activation_name(activation: Activation) -> str | None:
    """How `repr` shows an activation: its name, or a function's name."""
    if activation is None or isinstance(activation, str):
        return activation
    return getattr(activation, "__name__", repr(activation))


def activation_fn(activation: Activation) -> Callable[[Node], Node]:
    if activation is None or activation == "linear":
        return lambda x: x
    if callable(activation):
        return activation
    if activation not in ACTIVATIONS:
        raise GraphError(f"unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)}, None or a function")
    return ACTIVATIONS[activation]


def layer_call(method: Callable) -> Callable:
    """Record the nodes a layer method makes as one call of the layer (for summaries, pictures
    and error messages), named after the layer once its first call has named it."""

    @functools.wraps(method)
    def wrapper(self: Layer, *args, **kwargs):
        if building_internally():  # inside another call (or the compiler): that one owns the nodes
            return method(self, *args, **kwargs)
        call = Call(self.name or self.kind, type(self).__name__)
        with recording(call):
            out = method(self, *args, **kwargs)
        call.name = self.name or call.name
        call.finish(out)
        return out

    return wrapper


class Layer:
    """The base of every layer: owns parameters named `<name>/<role>` (`fc1/w`), created on the
    first call and reused by every later one. `name` defaults to `<kind><n>` (`dense1`, `gru2`),
    unique per graph. `summary()`, `to_dot()`, profiles and error messages name the layer.

    Attributes:
        name: The layer's name (set on the first call if not given).
        params: Its parameter nodes by role ("w", "b", ...).
    """

    kind = "layer"

    def __init__(self, name: str | None = None):
        self.name = name
        self.graph: Graph | None = None
        self.params: dict[str, Node] = {}

    @property
    def parameters(self) -> list[Node]:
        """The layer's parameter nodes (empty until its first call), e.g. for `compile(params=...)`."""
        return list(self.params.values())

    def config(self) -> list[str]:
        """The constructor arguments that differ from the defaults, as `repr` shows them."""
        return []

    def __repr__(self) -> str:
        args = ", ".join(self.config() + ([f"name={self.name!r}"] if self.name else []))
        head = f"{type(self).__name__}({args})"
        if not self.params:
            return f"{head} (not built yet)"
        shapes = ", ".join(f"{p.name} {format_shape(p.shape)}" for p in self.params.values())
        total = sum(math.prod(p.shape) for p in self.params.values())
        return f"{head}: {shapes}; {total:,} parameters"

    def _bind(self, x: Node) -> bool:
        """Attach to x's graph; True on the first call, when parameters must be created."""
        if not isinstance(x, Node):
            raise GraphError(f"{self.kind} layer '{self.name}': expects a graph node, got {type(x).__name__}")
        if self.graph is None:
            self.graph = x.graph
            if self.name is None:
                self.name = _fresh_name(x.graph, self.kind)
            return True
        if x.graph is not self.graph:
            raise GraphError(f"{self.kind} layer '{self.name}': called on a node of another graph")
        return False

    def _param(self, role: str, shape: Sequence[int], init="xavier") -> Node:
        node = self.graph.parameter(f"{self.name}/{role}", shape, init=init)
        self.params[role] = node
        return node

    def _expect(self, x: Node, axis: int, size: int, what: str) -> None:
        if x.ndim <= abs(axis) - (axis < 0) or x.shape[axis] != size:
            raise ShapeError(
                f"{self.kind} layer '{self.name}': input {x.describe()} must have {what} {size} on axis {axis} "
                f"(the size its parameters were created for)"
            )


def _either(chosen: Init, default: Init) -> Init:
    """The user's initializer, else the layer's default."""
    return default if chosen is None else chosen


def _inits(init: Init, bias_init: Init) -> list[str]:
    """The init arguments `repr` shows (those given)."""
    return [f"{k}={v!r}" for k, v in (("init", init), ("bias_init", bias_init)) if v is not None]


def _fresh_name(graph: Graph, kind: str) -> str:
    """`<kind><n>` with the next n whose parameter prefix no node of the graph uses yet."""
    counter = _counters.setdefault(graph, {}).setdefault(kind, itertools.count(1))
    for i in counter:
        if not any(name.startswith(f"{kind}{i}/") for name in graph._named):
            return f"{kind}{i}"
    raise AssertionError("unreachable")


class Dense(Layer):
    """A fully connected layer: `activation(x @ w + b)` over the last axis.

    Args:
        units: Output features.
        activation: "relu", "sigmoid", "tanh", None (linear) or a function of a node.
        bias: Add a bias `b`.
        init: The weight's init (see `Graph.parameter`); default PyTorch's, U(±1/sqrt(in)).
        bias_init: The bias's init; default PyTorch's, U(±1/sqrt(in)).
        name: Parameter prefix (default `dense<n>`).

    Call it on x (..., in_features) to get (..., units); the parameters are `<name>/w` (in, units)
    and `<name>/b` (units,).

    Raises:
        ShapeError: (at a call) x's last axis differs from the one the weights were made for.
        GraphError: An unknown activation, or a call on a node of another graph.

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 784))
        >>> fc1 = dg.layers.Dense(256, activation="relu", name="fc1")
        >>> fc1(x).shape, sorted(g.params)
        ((None, 256), ['fc1/b', 'fc1/w'])
    """

    kind = "dense"

    def __init__(
        self,
        units: int,
        activation: Activation = None,
        bias: bool = True,
        init: Init = None,
        bias_init: Init = None,
        name: str | None = None,
    ):
        super().__init__(name)
        self.units, self.bias, self.init, self.bias_init = int(units), bias, init, bias_init
        self.activation = activation_fn(activation)
        self._activation = activation_name(activation)

    def config(self) -> list[str]:
        out = [str(self.units)]
        out += [f"activation={self._activation!r}"] if self._activation is not None else []
        out += ["bias=False"] if not self.bias else []
        return out + _inits(self.init, self.bias_init)

    @layer_call
    def __call__(self, x: Node) -> Node:
        if self._bind(x):
            weight, bias = initializers.torch_default(x.shape[-1])
            self._param("w", (x.shape[-1], self.units), _either(self.init, weight))
            if self.bias:
                self._param("b", (self.units,), _either(self.bias_init, bias))
        self._expect(x, -1, self.params["w"].shape[0], "features")
        y = x @ self.params["w"]
        return self.activation(y + self.params["b"] if self.bias else y)


class Conv2D(Layer):
    """Convolution + bias + activation on NCHW input with an OIHW kernel (see `dg.conv2d`).

    Args:
        filters: Output channels.
        kernel_size: The kernel's height and width (one int or a pair).
        stride: Step between windows (one int or a pair).
        padding: "valid", "same", an int or a pair (see `dg.conv2d`).
        pad_mode: "zeros", "replicate" or "reflect".
        activation: "relu", "sigmoid", "tanh", None or a function of a node.
        bias: Add one bias per filter.
        dilation: Spacing of the kernel's taps (one int or a pair).
        groups: Channel groups (groups = C: depthwise).
        init: The kernel's init; default PyTorch's, U(±1/sqrt(fan_in)), fan_in = C / groups * KH * KW.
        bias_init: The bias's init; default PyTorch's, U(±1/sqrt(fan_in)).
        name: Parameter prefix (default `conv<n>`).

    Call it on x (N, C, H, W) to get (N, filters, OH, OW); the parameters are `<name>/w`
    (filters, C / groups, KH, KW) and `<name>/b` (filters,).

    Raises:
        ShapeError: (at a call) x is not 4-D, or its channels differ from the first call's.

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> images = g.input("images", (None, 1, 28, 28))
        >>> conv = dg.layers.Conv2D(16, 3, padding="same", activation="relu")
        >>> conv(images).shape
        (None, 16, 28, 28)
    """

    kind = "conv"

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str = "valid",
        pad_mode: str = "zeros",
        activation: Activation = None,
        bias: bool = True,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        init: Init = None,
        bias_init: Init = None,
        name: str | None = None,
    ):
        super().__init__(name)
        k = kernel_size if isinstance(kernel_size, tuple) else (kernel_size, kernel_size)
        self.filters, self.kernel_size, self.bias = int(filters), k, bias
        self.stride, self.padding, self.pad_mode = stride, padding, pad_mode
        self.dilation, self.groups, self.init, self.bias_init = dilation, int(groups), init, bias_init
        self.activation = activation_fn(activation)
        self._activation = activation_name(activation)

    def config(self) -> list[str]:
        out = [str(self.filters), f"kernel_size={self.kernel_size}"]
        out += [f"stride={self.stride}"] if self.stride != 1 else []
        out += [f"padding={self.padding!r}"] if self.padding != "valid" else []
        out += [f"pad_mode={self.pad_mode!r}"] if self.pad_mode != "zeros" else []
        out += [f"activation={self._activation!r}"] if self._activation is not None else []
        out += ["bias=False"] if not self.bias else []
        out += [f"dilation={self.dilation}"] if self.dilation != 1 else []
        out += [f"groups={self.groups}"] if self.groups != 1 else []
        return out + _inits(self.init, self.bias_init)

    @layer_call
    def __call__(self, x: Node) -> Node:
        if x.ndim != 4:
            raise ShapeError(f"conv layer '{self.name}': input {x.describe()} must be NCHW (4-D)")
        if self._bind(x):
            if x.shape[1] % self.groups:
                raise ShapeError(f"conv layer '{self.name}': groups={self.groups} does not divide the input's "
                                 f"{x.shape[1]} channels")  # fmt: skip
            shape = (self.filters, x.shape[1] // self.groups, *self.kernel_size)
            weight, bias = initializers.torch_default(math.prod(shape[1:]))
            self._param("w", shape, _either(self.init, weight))
            if self.bias:
                self._param("b", (self.filters,), _either(self.bias_init, bias))
        self._expect(x, 1, self.params["w"].shape[1] * self.groups, "channels")
        y = conv2d(x, self.params["w"], self.stride, self.padding, self.pad_mode, self.dilation, self.groups)
        if self.bias:
            y = y + reshape(self.params["b"], (self.filters, 1, 1))
        return self.activation(y)


class BatchNorm(Layer):
    """Batch normalization over a channel axis with a learned scale and bias (see `dg.batch_norm`),
    PyTorch's BatchNorm1d/2d conventions: a train step normalizes with the batch's mean and biased
    variance and moves the running statistics towards them (momentum is the weight of the new
    batch, the running variance unbiased); inference uses the running statistics.

    Args:
        momentum: Weight of the batch's statistics in the running ones.
        eps: Added to the variance.
        axis: The channel axis (1 for NCHW and for (N, C)).
        name: Prefix (default `batch_norm<n>`) of the parameters `<name>/scale` (ones) and
            `<name>/bias` (zeros) and of the state buffers `<name>/running_mean` (zeros) and
            `<name>/running_var` (ones) in `graph.state` and checkpoints.

    Raises:
        ShapeError: (at a call) no static channel axis, or other channels than the first call's.

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 16, 14, 14))
        >>> dg.layers.BatchNorm(name="bn1")(x).shape, sorted(g.state)
        ((None, 16, 14, 14), ['bn1/running_mean', 'bn1/running_var'])
    """

    kind = "batch_norm"

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, axis: int = 1, name: str | None = None):
        super().__init__(name)
        self.momentum, self.eps, self.axis = float(momentum), float(eps), int(axis)
        self.buffers: dict[str, Node] = {}

    def config(self) -> list[str]:
        out = [f"momentum={self.momentum!r}"] if self.momentum != 0.1 else []
        out += [f"eps={self.eps!r}"] if self.eps != 1e-5 else []
        return out + ([f"axis={self.axis}"] if self.axis != 1 else [])

    @layer_call
    def __call__(self, x: Node) -> Node:
        if self._bind(x):
            if not -x.ndim <= self.axis < x.ndim or x.shape[self.axis] is None:
                raise ShapeError(f"batch norm layer '{self.name}': axis {self.axis} of {x.describe()} is not a "
                                 "static channel axis")  # fmt: skip
            channels = x.shape[self.axis]
            self._param("scale", (channels,), "ones")
            self._param("bias", (channels,), "zeros")
            for role, start in (("running_mean", 0.0), ("running_var", 1.0)):
                value = np.full(channels, start)
                self.buffers[role] = self.graph.buffer(f"{self.name}/{role}", value, dtype=str(x.dtype))
        self._expect(x, self.axis, self.params["scale"].shape[0], "channels")
        return batch_norm(x, self.params["scale"], self.params["bias"], self.axis, self.momentum, self.eps,
                          self.buffers["running_mean"], self.buffers["running_var"])  # fmt: skip


class _Pool(Layer):
    """A pooling function as a layer (no parameters)."""

    def __init__(self, kernel_size=2, stride=None, padding=0, name: str | None = None):
        super().__init__(name)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def config(self) -> list[str]:
        out = [repr(self.kernel_size)]
        out += [f"stride={self.stride!r}"] if self.stride is not None else []
        return out + ([f"padding={self.padding!r}"] if self.padding else [])


class MaxPool2D(_Pool):
    """`dg.max_pool2d` as a layer: the max over kernel_size windows, `stride` apart (default the
    kernel size), after padding each side by `padding`.

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> dg.layers.MaxPool2D(3, stride=2, padding=1)(g.input("x", (None, 16, 28, 28))).shape
        (None, 16, 14, 14)
    """

    kind = "max_pool"

    @layer_call
    def __call__(self, x: Node) -> Node:
        self._bind(x)
        return max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2D(_Pool):
    """`dg.avg_pool2d` as a layer; `count_include_pad` as there.

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> dg.layers.AvgPool2D(2)(g.input("x", (None, 8, 6, 6))).shape
        (None, 8, 3, 3)
    """

    kind = "avg_pool"

    def __init__(self, kernel_size=2, stride=None, padding=0, count_include_pad: bool = True, name: str | None = None):
        super().__init__(kernel_size, stride, padding, name)
        self.count_include_pad = count_include_pad

    @layer_call
    def __call__(self, x: Node) -> Node:
        self._bind(x)
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.count_include_pad)


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...): every axis but the first in one (a view).

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> dg.layers.Flatten()(g.input("x", (None, 64, 4, 4))).shape
        (None, 1024)
    """

    kind = "flatten"

    @layer_call
    def __call__(self, x: Node) -> Node:
        self._bind(x)
        if x.ndim < 2 or None in x.shape[1:]:
            raise ShapeError(f"flatten layer '{self.name}': input {x.describe()} needs static axes after the first")
        return reshape(x, (x.shape[0], math.prod(x.shape[1:])))


class Embedding(Layer):
    """A lookup table: integer ids of any shape -> ids.shape + (dim,) (see `dg.embedding`).

    Args:
        vocab: The number of ids (rows of the table).
        dim: The vector size.
        init: The table's init (see `Graph.parameter`); default PyTorch's, N(0, 1).
        name: Parameter prefix (default `embedding<n>`); the table is `<name>/table`.

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> ids = g.input("ids", (None, 32), dtype="int32")
        >>> dg.layers.Embedding(50, 16)(ids).shape
        (None, 32, 16)
    """

    kind = "embedding"

    def __init__(self, vocab: int, dim: int, init: Init = None, name: str | None = None):
        super().__init__(name)
        self.vocab, self.dim, self.init = int(vocab), int(dim), init

    def config(self) -> list[str]:
        return [str(self.vocab), str(self.dim)] + _inits(self.init, None)

    @layer_call
    def __call__(self, ids: Node) -> Node:
        if self._bind(ids):
            self._param("table", (self.vocab, self.dim), _either(self.init, initializers.normal(1.0)))
        return embedding(ids, self.params["table"])


class _Recurrent(Layer):
    """A cell `h' = cell(x, h)` whose input projections of a whole sequence take one matmul."""

    gates: tuple[str, ...] = ()

    def __init__(self, hidden: int, init: Init = None, bias_init: Init = None, name: str | None = None):
        super().__init__(name)
        self.hidden, self.init, self.bias_init = int(hidden), init, bias_init

    def config(self) -> list[str]:
        return [str(self.hidden)] + _inits(self.init, self.bias_init)

    def _build(self, x: Node) -> None:
        if self._bind(x):
            h = self.hidden
            bound = 1.0 / math.sqrt(h)  # PyTorch's RNN/GRU: every weight and bias U(±1/sqrt(hidden))
            default = initializers.uniform(-bound, bound)
            for gate in self.gates:
                self._param(f"w_{gate}", (x.shape[-1], h), _either(self.init, default))
            for gate in self.gates:
                self._param(f"u_{gate}", (h, h), _either(self.init, default))
            for gate in self.gates:
                self._param(f"b_{gate}", (h,), _either(self.bias_init, default))
            # gates side by side: one matmul per step for all of them (built once, shared by every step)
            self.w, self.u, self.b = (self._joined(role) for role in ("w", "u", "b"))
        self._expect(x, -1, self.w.shape[0], "features")

    def _joined(self, role: str) -> Node:
        parts = [self.params[f"{role}_{gate}"] for gate in self.gates]
        return parts[0] if len(parts) == 1 else concat(parts, axis=-1)

    def project(self, x: Node) -> Node:
        """x @ w + b for every gate at once; x is (..., in) -> (..., gates * hidden)."""
        self._build(x)
        return x @ self.w + self.b

    @layer_call
    def __call__(self, x: Node, h: Node | None = None) -> Node:
        """One step: x (batch, in), h (batch, hidden) or None (the zero state) -> the new state."""
        return self.step(self.project(x), h)

    def step(self, projected: Node, h: Node | None) -> Node:
        raise NotImplementedError

    @layer_call
    def sequence(self, xs: Node, h0: Node | tuple[Node, Node] | None = None, scan: bool = False) -> tuple[Node, Any]:
        """Run the cell over axis 1 of `xs`, with the input projections of all steps in one GEMM.

        Args:
            xs: A float node (batch, T, in).
            h0: The initial state (batch, hidden) (an LSTM's: the pair (h, c)); None is zeros.
            scan: Compile one native loop (`dg.scan`) instead of unrolling the T steps (less
                code to compile for long sequences).

        Returns:
            (states (batch, T, hidden), last state (batch, hidden); an LSTM's last state is (h, c)).

        Raises:
            ShapeError: xs is not 3-D, T is 0, or its features differ from the weights'.
        """
        if xs.ndim != 3:
            raise ShapeError(f"{self.kind} layer '{self.name}': sequence input {xs.describe()} must be (batch, T, in)")
        projected = self.project(xs)  # all time steps in one matmul
        if scan:
            state = h0 if h0 is not None else self.zero_state(projected[:, 0, : self.hidden] * 0.0)

            def body(state, p: Node):
                state = self.step(p, state)
                return state, self.output(state)

            last, states = scan_loop(body, state, transpose(projected, (1, 0, 2)))  # over (T, batch, ...)
            return transpose(states, (1, 0, 2)), last
        state, states = h0, []
        for t in range(xs.shape[1]):
            state = self.step(projected[:, t, :], state)
            states.append(reshape(self.output(state), (None, 1, self.hidden)))
        if not states:
            raise ShapeError(f"{self.kind} layer '{self.name}': empty sequence {format_shape(xs.shape)}")
        return concat(states, axis=1), state

    def zero_state(self, zeros: Node):
        """The zero state, from a (batch, hidden) node of zeros."""
        return zeros

    def output(self, state) -> Node:
        """What the cell emits at each step: its state (an LSTM's h)."""
        return state


class RNNCell(_Recurrent):
    """An Elman cell: `h' = activation(x @ w_x + h @ u_x + b_x)`.

    Args:
        hidden: The state size.
        activation: "tanh" (default), "relu", "sigmoid", None or a function of a node.
        init: The weights' init; default PyTorch's, U(±1/sqrt(hidden)).
        bias_init: The biases' init; default PyTorch's, U(±1/sqrt(hidden)).
        name: Parameter prefix (default `rnn<n>`).

    `cell(x, h)` is one step ((batch, in), (batch, hidden) -> (batch, hidden); `h=None` is the
    zero state); `cell.sequence(xs, h0)` runs a whole sequence.

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> xs = g.input("xs", (None, 10, 8))        # (batch, time, features)
        >>> states, last = dg.layers.RNNCell(32).sequence(xs)
        >>> states.shape, last.shape
        ((None, 10, 32), (None, 32))
    """

    kind = "rnn"
    gates = ("x",)

    def __init__(
        self,
        hidden: int,
        activation: Activation = "tanh",
        init: Init = None,
        bias_init: Init = None,
        name: str | None = None,
    ):
        super().__init__(hidden, init, bias_init, name)
        self.activation = activation_fn(activation)
        self._activation = activation_name(activation)

    def config(self) -> list[str]:
        return super().config() + ([f"activation={self._activation!r}"] if self._activation != "tanh" else [])

    def step(self, projected: Node, h: Node | None) -> Node:
        return self.activation(projected if h is None else projected + h @ self.u)


class GRUCell(_Recurrent):
    """A gated recurrent unit with PyTorch's formula (Cho et al. 2014, reset gate after the matmul):
    r = σ(x w_r + h u_r + b_r), z = σ(x w_z + h u_z + b_z), n = tanh(x w_n + r ⊙ (h u_n) + b_n),
    h' = (1 - z) ⊙ n + z ⊙ h.

    Args:
        hidden: The state size.
        init: The weights' init; default PyTorch's, U(±1/sqrt(hidden)).
        bias_init: The biases' init; default PyTorch's, U(±1/sqrt(hidden)).
        name: Parameter prefix (default `gru<n>`); the parameters are `w_r`, `w_z`, `w_n`,
            `u_r`, `u_z`, `u_n`, `b_r`, `b_z`, `b_n`.

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 8))
        >>> cell = dg.layers.GRUCell(16, name="gru")
        >>> h1 = cell(x)          # the zero state
        >>> h2 = cell(x, h1)      # the same weights again
        >>> h2.shape, len(cell.parameters)
        ((None, 16), 9)
    """

    kind = "gru"
    gates = ("r", "z", "n")

    def step(self, projected: Node, h: Node | None) -> Node:
        H = self.hidden
        pr, pz, pn = projected[..., :H], projected[..., H : 2 * H], projected[..., 2 * H :]
        if h is None:  # zero state: every h term vanishes
            z = sigmoid(pz)
            return (1.0 - z) * tanh(pn)
        hu = h @ self.u
        r = sigmoid(pr + hu[..., :H])
        z = sigmoid(pz + hu[..., H : 2 * H])
        n = tanh(pn + r * hu[..., 2 * H :])
        return (1.0 - z) * n + z * h


class LSTMCell(_Recurrent):
    """Long short-term memory with PyTorch's formula and gate order (i, f, g, o):
    `i = σ(x w_i + h u_i + b_i)`, `f = σ(x w_f + h u_f + b_f)`, `g = tanh(x w_g + h u_g + b_g)`,
    `o = σ(x w_o + h u_o + b_o)`, `c' = f ⊙ c + i ⊙ g`, `h' = o ⊙ tanh(c')`; one bias per gate
    (PyTorch's b_ih + b_hh). The state is the pair (h, c).

    Args:
        hidden: The state size.
        name: Parameter prefix (default `lstm<n>`).

    `cell(x, (h, c))` is one step and returns the new (h, c) (`None` is the zero state);
    `cell.sequence(xs, (h0, c0), scan=...)` runs a sequence and returns (all h, last (h, c)).

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> xs = g.input("xs", (None, 20, 8))
        >>> states, (h, c) = dg.layers.LSTMCell(16, name="lstm").sequence(xs, scan=True)
        >>> states.shape, h.shape, c.shape
        ((None, 20, 16), (None, 16), (None, 16))
    """

    kind = "lstm"
    gates = ("i", "f", "g", "o")

    @layer_call
    def __call__(self, x: Node, state: tuple[Node, Node] | None = None) -> tuple[Node, Node]:
        """One step: x (batch, in) and the state (h, c) (None: zeros) -> the new (h, c)."""
        return self.step(self.project(x), state)

    def step(self, projected: Node, state: tuple[Node, Node] | None) -> tuple[Node, Node]:
        H = self.hidden
        if state is not None:
            h, c = state
            projected = projected + h @ self.u
        i, f = sigmoid(projected[..., :H]), sigmoid(projected[..., H : 2 * H])
        g, o = tanh(projected[..., 2 * H : 3 * H]), sigmoid(projected[..., 3 * H :])
        c_next = i * g if state is None else f * c + i * g  # the zero state has c = 0
        return o * tanh(c_next), c_next

    def zero_state(self, zeros: Node) -> tuple[Node, Node]:
        return zeros, zeros

    def output(self, state: tuple[Node, Node]) -> Node:
        return state[0]


# Transformer layers: normalization, dropout, attention, positions and the pre-norm block.


class LayerNorm(Layer):
    """`dg.layer_norm` over the last axis, then a learned scale (ones at first) and bias (zeros).

    Args:
        eps: Added to the variance.
        name: Parameter prefix (default `layernorm<n>`): `<name>/scale`, `<name>/bias`.

    Raises:
        ShapeError: (at a call) the last axis differs from the one the parameters were made for.

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 10, 32))
        >>> dg.layers.LayerNorm(name="ln")(x).shape, sorted(g.params)
        ((None, 10, 32), ['ln/bias', 'ln/scale'])
    """

    kind = "layernorm"

    def __init__(self, eps: float = 1e-5, name: str | None = None):
        super().__init__(name)
        self.eps = float(eps)

    def config(self) -> list[str]:
        return [f"eps={self.eps}"] if self.eps != 1e-5 else []

    @layer_call
    def __call__(self, x: Node) -> Node:
        if self._bind(x):
            self._param("scale", (x.shape[-1],), "ones")
            self._param("bias", (x.shape[-1],), "zeros")
        self._expect(x, -1, self.params["scale"].shape[0], "features")
        return layer_norm(x, -1, self.eps) * self.params["scale"] + self.params["bias"]


class RMSNorm(Layer):
    """`dg.rms_norm` over the last axis, then a learned scale (ones at first).

    Args:
        eps: Added to the mean square.
        name: Parameter prefix (default `rmsnorm<n>`): `<name>/scale`.

    Raises:
        ShapeError: (at a call) the last axis differs from the one the parameter was made for.

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> dg.layers.RMSNorm(name="norm")(g.input("x", (None, 32))).shape, sorted(g.params)
        ((None, 32), ['norm/scale'])
    """

    kind = "rmsnorm"

    def __init__(self, eps: float = 1e-6, name: str | None = None):
        super().__init__(name)
        self.eps = float(eps)

    def config(self) -> list[str]:
        return [f"eps={self.eps}"] if self.eps != 1e-6 else []

    @layer_call
    def __call__(self, x: Node) -> Node:
        if self._bind(x):
            self._param("scale", (x.shape[-1],), "ones")
        self._expect(x, -1, self.params["scale"].shape[0], "features")
        return rms_norm(x, -1, self.eps) * self.params["scale"]


class Dropout(Layer):
    """`dg.dropout` with a fixed rate: active in train steps, the identity in predictors.

    Args:
        rate: The probability of dropping an element, in [0, 1) (0: the layer is the identity).
        name: The layer's name (it has no parameters).

    Raises:
        GraphError: A rate outside [0, 1).

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 32))
        >>> dg.layers.Dropout(0.1)(x).shape
        (None, 32)
    """

    kind = "dropout"

    def __init__(self, rate: float, name: str | None = None):
        super().__init__(name)
        if not 0.0 <= float(rate) < 1.0:
            raise GraphError(f"dropout layer: rate must be in [0, 1), got {rate}")
        self.rate = float(rate)

    def config(self) -> list[str]:
        return [str(self.rate)]

    @layer_call
    def __call__(self, x: Node) -> Node:
        self._bind(x)
        return x if self.rate == 0.0 else dropout(x, self.rate)


class MultiHeadAttention(Layer):
    """Multi-head attention over x (batch, T, d) and a context (batch, S, d_c) (x itself by
    default): `q = x w_q + b_q`, k and v likewise from the context, `dg.attention` per head in
    the projections' own (batch, T, heads, d/heads) layout (no transposes), then
    `out = a w_o + b_o`.

    Args:
        heads: The number of heads (d must be a multiple).
        causal: Mask key j > query i.
        dropout: Dropout on the output (in train steps).
        name: Parameter prefix (default `mha<n>`): `<name>/w_q`, `w_k`, `w_v`, `w_o` and `b_*`.

    `mha(x, context=None, mask=None)`; `mask` as in `dg.attention`.

    Raises:
        ShapeError: (at a call) inputs that are not (batch, T, features), d not a multiple of
            heads, or features that differ from the parameters'.

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 10, 32))
        >>> dg.layers.MultiHeadAttention(4, causal=True, name="attn")(x).shape
        (None, 10, 32)
    """

    kind = "mha"

    def __init__(self, heads: int, causal: bool = False, dropout: float = 0.0, name: str | None = None):
        super().__init__(name)
        self.heads, self.causal, self.rate = int(heads), bool(causal), float(dropout)
        self.drop = Dropout(dropout) if dropout else None

    def config(self) -> list[str]:
        return (
            [str(self.heads)]
            + (["causal=True"] if self.causal else [])
            + ([f"dropout={self.rate}"] if self.rate else [])
        )

    @layer_call
    def __call__(self, x: Node, context: Node | None = None, mask: Node | None = None) -> Node:
        context = x if context is None else context
        if x.ndim != 3 or context.ndim != 3:
            raise ShapeError(f"mha layer '{self.name}': inputs {x.describe()} must be (batch, T, features)")
        d = x.shape[-1]
        if self._bind(x):
            if d % self.heads:
                raise ShapeError(f"mha layer '{self.name}': {d} features do not split into {self.heads} heads")
            for role in ("q", "k", "v", "o"):
                self._param(f"w_{role}", (context.shape[-1] if role in ("k", "v") else d, d))
            for role in ("q", "k", "v", "o"):
                self._param(f"b_{role}", (d,), "zeros")
        self._expect(x, -1, self.params["w_q"].shape[0], "features")
        self._expect(context, -1, self.params["w_k"].shape[0], "features")
        p, dh = self.params, d // self.heads
        if context is x:  # one projection for q, k and v, which attention reads in place
            w = concat([p["w_q"], p["w_k"], p["w_v"]], axis=1)
            qkv = x @ w + concat([p["b_q"], p["b_k"], p["b_v"]], axis=0)
            a = attention_packed(reshape(qkv, (x.shape[0], x.shape[1], 3, self.heads, dh)), mask, self.causal)
        else:

            def heads(t: Node, role: str) -> Node:
                return reshape(t @ p[f"w_{role}"] + p[f"b_{role}"], (t.shape[0], t.shape[1], self.heads, dh))

            a = attention(heads(x, "q"), heads(context, "k"), heads(context, "v"), mask, self.causal, layout="bthd")
        out = reshape(a, (x.shape[0], x.shape[1], d)) @ p["w_o"] + p["b_o"]
        return self.drop(out) if self.drop is not None else out


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
    """The (length, dim) table of "Attention is all you need": sin(pos / 10000^(2i/dim)) in even
    columns, cos in odd ones.

    Args:
        length: Positions.
        dim: Features.

    Returns:
        A float64 array (length, dim).

    Example:
        >>> import drug as dg
        >>> dg.layers.sinusoidal_positions(4, 2)[:, 0].round(3)
        array([0.   , 0.841, 0.909, 0.141])
    """
    position = np.arange(length)[:, None]
    frequency = np.exp(-np.log(10000.0) * np.arange(0, dim, 2) / dim)
    table = np.zeros((length, dim))
    table[:, 0::2] = np.sin(position * frequency)
    table[:, 1::2] = np.cos(position * frequency)[:, : dim // 2]
    return table


class PositionalEmbedding(Layer):
    """Adds a position vector to each step of x (batch, T, d), T <= max_len: a learned (max_len, d)
    parameter, or the fixed sinusoidal table (a constant).

    Args:
        max_len: The longest sequence.
        kind: "learned" or "sinusoidal".
        init: The learned table's init (see `Graph.parameter`).
        name: Parameter prefix (default `positions<n>`): `<name>/table`.

    Raises:
        GraphError: An unknown kind.
        ShapeError: (at a call) x is not (batch, T <= max_len, d).

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 10, 32))
        >>> dg.layers.PositionalEmbedding(64, name="pos")(x).shape, g.params["pos/table"].shape
        ((None, 10, 32), (64, 32))
    """

    kind = "positions"

    def __init__(self, max_len: int, kind: str = "learned", init: Init = "normal", name: str | None = None):
        super().__init__(name)
        if kind not in ("learned", "sinusoidal"):
            raise GraphError(f"positional embedding kind must be 'learned' or 'sinusoidal', got {kind!r}")
        self.max_len, self.kind_, self.init = int(max_len), kind, init
        self.table: Node | None = None

    def config(self) -> list[str]:
        return [str(self.max_len)] + ([f"kind={self.kind_!r}"] if self.kind_ != "learned" else [])

    @layer_call
    def __call__(self, x: Node) -> Node:
        if x.ndim != 3 or x.shape[1] is None or x.shape[1] > self.max_len:
            raise ShapeError(
                f"positions layer '{self.name}': input {x.describe()} must be (batch, T <= {self.max_len}, d)"
            )
        if self._bind(x):
            d = x.shape[-1]
            if self.kind_ == "learned":
                self.table = self._param("table", (self.max_len, d), self.init)
            else:
                self.table = x.graph.constant(sinusoidal_positions(self.max_len, d), name=f"{self.name}/table")
        self._expect(x, -1, self.table.shape[1], "features")
        t = x.shape[1]
        return x + (self.table if t == self.max_len else self.table[:t])


class TransformerBlock(Layer):
    """A pre-norm transformer block: `x + drop(attn(ln1(x), mask))`, then `+ drop(mlp(ln2(x)))`
    with the MLP d -> mlp_ratio * d (activation) -> d.

    Args:
        heads: Attention heads.
        mlp_ratio: The MLP's hidden width over d.
        dropout: Dropout after the attention and after the MLP (in train steps).
        causal: Mask key j > query i (a decoder).
        activation: The MLP's activation ("gelu" by default; see `Dense`).
        eps: The layer norms' eps.
        name: Parameter prefix (default `block<n>`): `<name>/ln1/scale`, `<name>/attn/w_q`, ...

    `block(x, mask=None)` with x (batch, T, d).

    Raises:
        ShapeError: (at a call) x is not (batch, T, d) or d is not a multiple of heads.

    Example:
        >>> import drug as dg
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 10, 32))
        >>> block = dg.layers.TransformerBlock(4, causal=True, dropout=0.1, name="block")
        >>> block(x).shape, len(block.params)
        ((None, 10, 32), 16)
    """

    kind = "block"

    def __init__(
        self,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        causal: bool = False,
        activation: Activation = "gelu",
        eps: float = 1e-5,
        name: str | None = None,
    ):
        super().__init__(name)
        self.heads, self.mlp_ratio, self.rate, self.causal = int(heads), mlp_ratio, float(dropout), causal
        self.activation, self.eps = activation, eps
        self.layers: dict[str, Layer] = {}

    def config(self) -> list[str]:
        out = [str(self.heads)] + ([f"mlp_ratio={self.mlp_ratio}"] if self.mlp_ratio != 4.0 else [])
        out += [f"dropout={self.rate}"] if self.rate else []
        return out + (["causal=True"] if self.causal else [])

    @layer_call
    def __call__(self, x: Node, mask: Node | None = None) -> Node:
        if x.ndim != 3:
            raise ShapeError(f"block layer '{self.name}': input {x.describe()} must be (batch, T, features)")
        if self._bind(x):
            d, n = x.shape[-1], self.name
            self.layers = {
                "ln1": LayerNorm(self.eps, name=f"{n}/ln1"),
                "attn": MultiHeadAttention(self.heads, self.causal, name=f"{n}/attn"),
                "ln2": LayerNorm(self.eps, name=f"{n}/ln2"),
                "fc1": Dense(int(self.mlp_ratio * d), activation=self.activation, name=f"{n}/fc1"),
                "fc2": Dense(d, name=f"{n}/fc2"),
                "drop": Dropout(self.rate, name=f"{n}/drop"),
            }
        layer = self.layers
        x = x + layer["drop"](layer["attn"](layer["ln1"](x), mask=mask))
        x = x + layer["drop"](layer["fc2"](layer["fc1"](layer["ln2"](x))))
        for sub in layer.values():
            self.params |= {f"{sub.name}/{role}": node for role, node in sub.params.items()}
        return x

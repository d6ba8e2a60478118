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

import itertools
import math
import weakref
from collections.abc import Callable, Sequence

import numpy as np

from .compiler.scan import scan as scan_loop
from .core import initializers
from .core.errors import GraphError, ShapeError
from .core.graph import Graph
from .core.node import Node
from .core.types import format_shape
from .ops import avg_pool2d, batch_norm, concat, conv2d, embedding, max_pool2d, relu, reshape, sigmoid, tanh, transpose

Activation = str | Callable[[Node], Node] | None
ACTIVATIONS: dict[str, Callable[[Node], Node]] = {"relu": relu, "sigmoid": sigmoid, "tanh": tanh}
_counters: weakref.WeakKeyDictionary[Graph, dict[str, itertools.count]] = weakref.WeakKeyDictionary()


def activation_fn(activation: Activation) -> Callable[[Node], Node]:
    if activation is None or activation == "linear":
        return lambda x: x
    if callable(activation):
        return activation
    if activation not in ACTIVATIONS:
        raise GraphError(f"unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)}, None or a function")
    return ACTIVATIONS[activation]


class Layer:
    """Owns parameters named `<name>/<role>`; `name` defaults to `<kind><n>`, unique per graph."""

    kind = "layer"

    def __init__(self, name: str | None = None):
        self.name = name
        self.graph: Graph | None = None
        self.params: dict[str, Node] = {}

    @property
    def parameters(self) -> list[Node]:
        """The layer's parameter nodes (empty until its first call), e.g. for `compile(params=...)`."""
        return list(self.params.values())

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

    def _param(self, role: str, shape: Sequence[int], init) -> Node:
        node = self.graph.parameter(f"{self.name}/{role}", shape, init=init)
        self.params[role] = node
        return node

    def _expect(self, x: Node, axis: int, size: int, what: str) -> None:
        if x.ndim <= abs(axis) - (axis < 0) or x.shape[axis] != size:
            raise ShapeError(
                f"{self.kind} layer '{self.name}': input {x.describe()} must have {what} {size} on axis {axis} "
                f"(the size its parameters were created for)"
            )


def _either(chosen, default):
    """The user's initializer (a name, an initializer or an array), else the layer's default."""
    return default if chosen is None else chosen


def _fresh_name(graph: Graph, kind: str) -> str:
    """`<kind><n>` with the next n whose parameter prefix no node of the graph uses yet."""
    counter = _counters.setdefault(graph, {}).setdefault(kind, itertools.count(1))
    for i in counter:
        if not any(name.startswith(f"{kind}{i}/") for name in graph._named):
            return f"{kind}{i}"
    raise AssertionError("unreachable")


class Dense(Layer):
    """`activation(x @ w + b)` over the last axis; x is (..., in_features)."""

    kind = "dense"

    def __init__(
        self, units: int, activation: Activation = None, bias: bool = True, init=None, bias_init=None, name=None
    ):
        super().__init__(name)
        self.units, self.bias, self.init, self.bias_init = int(units), bias, init, bias_init
        self.activation = activation_fn(activation)

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
    """Convolution + bias + activation on NCHW input with an OIHW kernel (see dg.conv2d for stride,
    padding, dilation and groups)."""

    kind = "conv"

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple = "valid",
        pad_mode: str = "zeros",
        activation: Activation = None,
        bias: bool = True,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        init=None,
        bias_init=None,
        name: str | None = None,
    ):
        super().__init__(name)
        k = kernel_size if isinstance(kernel_size, tuple) else (kernel_size, kernel_size)
        self.filters, self.kernel_size, self.bias = int(filters), k, bias
        self.stride, self.padding, self.pad_mode = stride, padding, pad_mode
        self.dilation, self.groups, self.init, self.bias_init = dilation, int(groups), init, bias_init
        self.activation = activation_fn(activation)

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
    """Batch normalization over the channel `axis` (1: NCHW or (N, C)) with a learned scale (ones)
    and bias (zeros), and running statistics kept as the graph's state buffers
    `<name>/running_mean` and `<name>/running_var` (PyTorch's BatchNorm1d/2d conventions: momentum
    is the weight of the new batch statistics, the running variance is unbiased)."""

    kind = "batch_norm"

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, axis: int = 1, name: str | None = None):
        super().__init__(name)
        self.momentum, self.eps, self.axis = float(momentum), float(eps), int(axis)
        self.buffers: dict[str, Node] = {}

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


class MaxPool2D(Layer):
    """dg.max_pool2d as a layer (no parameters)."""

    kind = "max_pool"

    def __init__(self, kernel_size=2, stride=None, padding=0, name: str | None = None):
        super().__init__(name)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def __call__(self, x: Node) -> Node:
        self._bind(x)
        return max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2D(Layer):
    """dg.avg_pool2d as a layer (no parameters)."""

    kind = "avg_pool"

    def __init__(self, kernel_size=2, stride=None, padding=0, count_include_pad: bool = True, name=None):
        super().__init__(name)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.count_include_pad = count_include_pad

    def __call__(self, x: Node) -> Node:
        self._bind(x)
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.count_include_pad)


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...): everything but the first axis in one (a view)."""

    kind = "flatten"

    def __call__(self, x: Node) -> Node:
        self._bind(x)
        if x.ndim < 2 or None in x.shape[1:]:
            raise ShapeError(f"flatten layer '{self.name}': input {x.describe()} needs static axes after the first")
        return reshape(x, (x.shape[0], math.prod(x.shape[1:])))


class Embedding(Layer):
    """A lookup table: integer ids of any shape -> ids.shape + (dim,)."""

    kind = "embedding"

    def __init__(self, vocab: int, dim: int, init=None, name: str | None = None):
        super().__init__(name)
        self.vocab, self.dim, self.init = int(vocab), int(dim), init

    def __call__(self, ids: Node) -> Node:
        if self._bind(ids):
            self._param("table", (self.vocab, self.dim), _either(self.init, initializers.normal(1.0)))
        return embedding(ids, self.params["table"])


class _Recurrent(Layer):
    """A cell `h' = cell(x, h)` whose input projections of a whole sequence take one matmul."""

    gates: tuple[str, ...] = ()

    def __init__(self, hidden: int, init=None, bias_init=None, name: str | None = None):
        super().__init__(name)
        self.hidden, self.init, self.bias_init = int(hidden), init, bias_init

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

    def __call__(self, x: Node, h: Node | None = None) -> Node:
        """One step. `h=None` is the zero state."""
        return self.step(self.project(x), h)

    def step(self, projected: Node, h: Node | None) -> Node:
        raise NotImplementedError

    def sequence(self, xs: Node, h0: Node | None = None, scan: bool = False) -> tuple[Node, Node]:
        """Run over axis 1 of xs (batch, T, in): returns (states (batch, T, hidden), last state).
        `scan=True` compiles one native loop (`dg.scan`) instead of unrolling T steps."""
        if xs.ndim != 3:
            raise ShapeError(f"{self.kind} layer '{self.name}': sequence input {xs.describe()} must be (batch, T, in)")
        projected = self.project(xs)  # all time steps in one matmul
        if scan:
            if h0 is None:  # the zero state, with the batch's size
                h0 = projected[:, 0, : self.hidden] * 0.0

            def body(h: Node, p: Node) -> tuple[Node, Node]:
                h = self.step(p, h)
                return h, h

            last, states = scan_loop(body, h0, transpose(projected, (1, 0, 2)))  # over (T, batch, ...)
            return transpose(states, (1, 0, 2)), last
        h, states = h0, []
        for t in range(xs.shape[1]):
            h = self.step(projected[:, t, :], h)
            states.append(reshape(h, (None, 1, self.hidden)))
        if not states:
            raise ShapeError(f"{self.kind} layer '{self.name}': empty sequence {format_shape(xs.shape)}")
        return concat(states, axis=1), h


class RNNCell(_Recurrent):
    """Elman cell: h' = activation(x @ w_x + h @ u_x + b_x)."""

    kind = "rnn"
    gates = ("x",)

    def __init__(self, hidden: int, activation: Activation = "tanh", init=None, bias_init=None, name=None):
        super().__init__(hidden, init, bias_init, name)
        self.activation = activation_fn(activation)

    def step(self, projected: Node, h: Node | None) -> Node:
        return self.activation(projected if h is None else projected + h @ self.u)


class GRUCell(_Recurrent):
    """Gated recurrent unit with PyTorch's formula (Cho et al. 2014, reset gate after the matmul):
    r = σ(x w_r + h u_r + b_r), z = σ(x w_z + h u_z + b_z), n = tanh(x w_n + r ⊙ (h u_n) + b_n),
    h' = (1 - z) ⊙ n + z ⊙ h."""

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

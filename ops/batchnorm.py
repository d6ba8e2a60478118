"""Batch normalization with PyTorch's conventions: a train step normalizes with the batch's mean
and biased variance and moves the running statistics towards them (momentum is the weight of the
new batch; the running variance is unbiased); inference normalizes with the running statistics.

`BatchNorm` is mode-dependent: the `modes` pass replaces it by plain ops before autodiff. In
training that is one `batch_moments` kernel (the per-channel mean and variance) and elementwise
code, so autodiff derives the backward from small rules and fusion makes it one pass of
reductions and one elementwise pass; the running statistics are graph state buffers updated in
place by the step."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..core.errors import ShapeError
from ..core.node import Node, apply, user_call
from ..core.op import Example, Op, Specialized, same_float_dtype
from ..core.types import TensorType, format_shape, normalize_axes
from .elementwise import add, div, mul, sqrt, sub
from .reduce import Count
from .shape import broadcast_like, reshape


def _reduced_axes(ndim: int, axis: int) -> tuple[int, ...]:
    return tuple(a for a in range(ndim) if a != axis)


class BatchMoments(Op):
    """Per channel (`axis`), the mean and the biased variance over every other axis: (2, C).
    Training batch norm divides by M - 1 for the running variance, so a channel with a single
    value (M = 1) is refused; `owner` names the batch norm in that message."""

    name = "batch_moments"
    arity = 1
    may_fail = True  # a batch with one value per channel

    def __init__(self, axis: int, owner: str = "batch_moments"):
        self.axis = axis
        self.owner = owner

    def infer(self, x):
        same_float_dtype(self.name, [x])
        if not 0 <= self.axis < x.ndim or x.shape[self.axis] is None:
            raise ShapeError(f"channel axis {self.axis} of {format_shape(x.shape)} must be a static axis")
        return TensorType((2, x.shape[self.axis]), x.dtype)

    def values_per_channel(self, shape: Sequence[int]) -> int:
        return math.prod(shape[a] for a in _reduced_axes(len(shape), self.axis))

    def ref(self, x):
        if self.values_per_channel(x.shape) < 2:
            raise ShapeError(
                f"batch norm '{self.owner}' in training needs more than one value per channel to estimate the "
                f"variance, got input {x.shape} (one value per channel); train with batches of two or more"
            )
        axes = _reduced_axes(x.ndim, self.axis)
        mean = np.mean(x, axis=axes, keepdims=True)
        var = np.mean((x - mean) ** 2, axis=axes)
        return np.stack([mean.reshape(-1), var]).astype(x.dtype)

    def grad(self, g, out, x):
        """d mean / dx = 1 / M, d var / dx = 2 (x - mean) / M, per channel."""
        channel = tuple(x.shape[self.axis] if a == self.axis else 1 for a in range(x.ndim))
        d_mean, d_var = (reshape(g[i], channel) for i in (0, 1))
        mean = reshape(out[0], channel)
        count = apply(Count(_reduced_axes(x.ndim, self.axis)), x)
        total = add(broadcast_like(d_mean, x), mul(broadcast_like(mul(d_var, 2.0), x), sub(x, mean)))
        return [div(total, count)]

    @classmethod
    def example(cls, rng, dims):
        x = rng.standard_normal((dims[0] + 1, 3, dims[1], 2)) * 2 + 1
        return cls(1), Example([x], [True], {0: 0})


class BatchNorm(Op):
    """batch_norm(x, scale, bias, running_mean, running_var) over channel `axis`; what it computes
    depends on the mode (see the module docstring)."""

    name = "batch_norm"
    arity = 5
    mode_dependent = True

    def __init__(self, axis: int, momentum: float, eps: float):
        self.axis = axis
        self.momentum = float(momentum)
        self.eps = float(eps)

    def infer(self, x, scale, bias, running_mean, running_var):
        same_float_dtype(self.name, [x, scale, bias, running_mean, running_var])
        if not 0 <= self.axis < x.ndim or x.shape[self.axis] is None:
            raise ShapeError(f"channel axis {self.axis} of {format_shape(x.shape)} must be a static axis")
        channels = (x.shape[self.axis],)
        for what, t in (("scale", scale), ("bias", bias), ("running mean", running_mean), ("running var", running_var)):
            if t.shape != channels:
                raise ShapeError(f"{what} {format_shape(t.shape)} must have one value per channel: {channels}")
        return x

    def specialize(self, inputs, training):
        x, scale, bias, running_mean, running_var = inputs
        channel = tuple(x.shape[self.axis] if a == self.axis else 1 for a in range(x.ndim))
        if not training:
            return Specialized(self._normalize(x, scale, bias, running_mean, running_var, channel))
        moments = apply(BatchMoments(self.axis, running_mean.label.removesuffix("/running_mean")), x)
        mean, var = moments[0], moments[1]
        count = apply(Count(_reduced_axes(x.ndim, self.axis)), x)
        unbiased = mul(var, div(count, sub(count, 1.0)))
        m = self.momentum
        updates = (
            (running_mean, add(mul(running_mean, 1.0 - m), mul(mean, m))),
            (running_var, add(mul(running_var, 1.0 - m), mul(unbiased, m))),
        )
        return Specialized(self._normalize(x, scale, bias, mean, var, channel), updates)

    def _normalize(self, x: Node, scale, bias, mean, var, channel) -> Node:
        """(x - mean) * scale / sqrt(var + eps) + bias, the per-channel factors computed once."""
        factor = reshape(div(scale, sqrt(add(var, self.eps))), channel)
        return add(mul(sub(x, reshape(mean, channel)), factor), reshape(bias, channel))


@user_call()
def batch_norm(
    x: Node,
    scale: Node,
    bias: Node,
    axis: int = 1,
    momentum: float = 0.1,
    eps: float = 1e-5,
    running_mean: Node | None = None,
    running_var: Node | None = None,
    name: str | None = None,
) -> Node:
    """Batch normalization with PyTorch's conventions: in a train step x is normalized with the
    batch's mean and biased variance over every axis but `axis`, and the running statistics move
    towards them (`running = (1 - momentum) * running + momentum * batch`, the variance unbiased);
    in inference (a predictor, or `compile(training=False)`) the running statistics are used.
    `dg.layers.BatchNorm` makes the parameters and buffers for you.

    Args:
        x: A float node; its `axis` is the channel axis (static).
        scale: Per-channel scale (C,), usually a parameter of ones.
        bias: Per-channel shift (C,), usually a parameter of zeros.
        axis: The channel axis (1 for NCHW and for (N, C)).
        momentum: Weight of the batch's statistics in the running ones.
        eps: Added to the variance.
        running_mean: A state buffer (C,) (`g.buffer`); None creates `<name>/running_mean` (zeros).
        running_var: A state buffer (C,); None creates `<name>/running_var` (ones).
        name: Prefix of the buffers created (default: the next free `batch_norm<n>`).

    Returns:
        A node of x's shape and dtype.

    Raises:
        ShapeError: scale, bias or the buffers are not (C,), the channel axis is not static, or
            momentum / eps are out of range; in a train step, a channel with a single value
            (a batch of one for (N, C) input), with nothing updated.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph(dtype="float64")
        >>> x = g.input("x", (None, 2))
        >>> y = dg.batch_norm(x, g.parameter("s", (2,), init="ones"), g.parameter("b", (2,), init="zeros"))
        >>> step = g.compile(outputs=y, training=True)
        >>> step(x=np.array([[1.0, 0.0], [3.0, 4.0]])).round(3)
        array([[-1., -1.],
               [ 1.,  1.]])
        >>> g.state["batch_norm1/running_mean"]
        array([0.2, 0.2])
    """
    if not isinstance(x, Node):
        raise ShapeError(f"batch_norm expects a graph node, got {type(x).__name__}")
    (axis,) = normalize_axes(axis, x.ndim)
    if not 0.0 <= momentum <= 1.0 or eps <= 0:
        raise ShapeError(f"batch_norm needs 0 <= momentum <= 1 and eps > 0, got momentum={momentum}, eps={eps}")
    if (running_mean is None) != (running_var is None):
        raise ShapeError("batch_norm: pass both running_mean and running_var, or neither")
    if running_mean is None:
        channels = x.shape[axis]
        if channels is None:
            raise ShapeError(f"batch_norm: the channel axis {axis} of {x.describe()} must be static")
        graph = x.graph
        name = name or _fresh(graph)
        running_mean = graph.buffer(f"{name}/running_mean", np.zeros(channels), dtype=str(x.dtype))
        running_var = graph.buffer(f"{name}/running_var", np.ones(channels), dtype=str(x.dtype))
    return apply(BatchNorm(axis, momentum, eps), x, scale, bias, running_mean, running_var)


def _fresh(graph) -> str:
    n = 1
    while f"batch_norm{n}/running_mean" in graph:
        n += 1
    return f"batch_norm{n}"

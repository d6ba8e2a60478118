"""Leaves of a graph: fed inputs, trained parameters, baked constants and optimizer state."""

from __future__ import annotations

import math

import numpy as np

from .errors import GraphError
from .op import Op
from .types import Shape


class Leaf(Op):
    arity = 0


class InputOp(Leaf):
    name = "input"


class ParameterOp(Leaf):
    name = "parameter"


class BufferOp(Leaf):
    """A state buffer of the graph (Graph.buffer): read by steps, updated in place by them, not
    trained; its value lives in `graph.state` and in checkpoints."""

    name = "buffer"


class StateOp(Leaf):
    """Optimizer state (moments, beta powers): owned by a compiled step, saved in checkpoints."""

    name = "state"

    def __init__(self, key: str, init: float):
        self.key_name = key
        self.init = float(init)


class ConstantOp(Leaf):
    name = "constant"

    def __init__(self, value: np.ndarray):
        self.value = value

    def ref(self) -> np.ndarray:
        return self.value

    def __repr__(self) -> str:
        v = self.value
        return f"constant({v.item()!r})" if v.size == 1 else f"constant(shape={v.shape})"


def fans(shape: Shape) -> tuple[int, int]:
    """Fan-in and fan-out as Glorot defines them: (in, out) matrices, OIHW conv kernels."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def initial_value(name: str, shape: Shape, dtype: np.dtype, init, rng: np.random.Generator) -> np.ndarray:
    fan_in, fan_out = fans(shape)
    if isinstance(init, str):
        if init in ("xavier", "glorot"):
            limit = math.sqrt(6.0 / max(fan_in + fan_out, 1))
            return rng.uniform(-limit, limit, size=shape).astype(dtype)
        if init == "normal":
            return (rng.standard_normal(size=shape) * math.sqrt(2.0 / max(fan_in + fan_out, 1))).astype(dtype)
        if init == "zeros":
            return np.zeros(shape, dtype)
        if init == "ones":
            return np.ones(shape, dtype)
        raise GraphError(f"parameter '{name}': unknown init {init!r}; use xavier, normal, zeros, ones or an array")
    value = np.asarray(init)
    if value.shape != shape:
        raise GraphError(f"parameter '{name}': init array has shape {value.shape}, expected {shape}")
    return value.astype(dtype, copy=True)

"""Leaves of a graph: fed inputs, trained parameters, baked constants and optimizer state."""

from __future__ import annotations

import numpy as np

from . import initializers
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


def initial_value(name: str, shape: Shape, dtype: np.dtype, init, rng: np.random.Generator) -> np.ndarray:
    """A new parameter's value: `init` is a named initializer, an initializer (core/initializers.py)
    or an array of the parameter's shape."""
    if isinstance(init, str):
        if init not in initializers.NAMED:
            raise GraphError(
                f"parameter '{name}': unknown init {init!r}; use one of {sorted(initializers.NAMED)}, "
                "an initializer from dg.initializers or an array"
            )
        init = initializers.NAMED[init]
    if callable(init):
        try:
            value = np.asarray(init(shape, dtype, rng))
        except ValueError as error:
            raise GraphError(f"parameter '{name}': {error}") from None
        if value.shape != shape:
            raise GraphError(f"parameter '{name}': initializer gave shape {value.shape}, expected {shape}")
        return value.astype(dtype, copy=False)
    value = np.asarray(init)
    if value.shape != shape:
        raise GraphError(f"parameter '{name}': init array has shape {value.shape}, expected {shape}")
    return value.astype(dtype, copy=True)

"""Optimizers as update rules written in graph ops, so the compiler fuses them like any other
elementwise code. One rule with two betas covers SGD, momentum, RMSProp and Adam."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from ..core.errors import GraphError
from ..core.leaves import StateOp
from ..core.node import Node
from ..core.types import TensorType
from ..ops.elementwise import add, div, mul, sqrt, sub

LR_KEY = "hyper/lr"


@dataclass(frozen=True)
class Optimizer:
    """`m` (first moment) and `v` (second moment) are state buffers; a zero beta disables one."""

    lr: float
    beta_momentum: float = 0.0
    beta_magnitude: float = 0.0
    epsilon: float = 1e-8
    momentum_is_average: bool = True  # m = b*m + (1-b)*g (Adam) vs m = b*m + g (SGD momentum)
    uses_magnitude: bool = True  # divide by sqrt(v) + eps
    bias_correction: bool = False  # Adam's 1 - beta**t

    def __post_init__(self):
        for field in ("beta_momentum", "beta_magnitude"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
                raise GraphError(f"{type(self).__name__}: {field} must be in [0, 1), got {value!r}")
        for field in ("lr", "epsilon"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
                raise GraphError(f"{type(self).__name__}: {field} must be a finite non-negative number, got {value!r}")

    def updates(self, params: Sequence[Node], grads: Sequence[Node]) -> list[tuple[Node, Node]]:
        """(leaf, new value) pairs for every parameter and state buffer."""
        out: list[tuple[Node, Node]] = []
        b1, b2 = self.beta_momentum, self.beta_magnitude
        first = params[0]
        lr = _state(first, LR_KEY, (), self.lr)  # a state buffer, so schedules can change it between steps
        correction_m = correction_v = None
        if self.bias_correction and b1 > 0:
            power = _state(first, "step/beta_momentum_power", (), 1.0)
            out.append((power, mul(power, b1)))
            correction_m = sub(1.0, out[-1][1])
        if self.bias_correction and b2 > 0 and self.uses_magnitude:
            power = _state(first, "step/beta_magnitude_power", (), 1.0)
            out.append((power, mul(power, b2)))
            correction_v = sub(1.0, out[-1][1])
        for w, g in zip(params, grads):
            step = g
            if b1 > 0:
                m = _state(w, f"{w.name}/momentum", w.shape, 0.0)
                step = add(mul(m, b1), mul(g, 1.0 - b1) if self.momentum_is_average else g)
                out.append((m, step))
                if correction_m is not None:
                    step = div(step, correction_m)
            if self.uses_magnitude:
                v_new = mul(g, g)
                if b2 > 0:
                    v = _state(w, f"{w.name}/magnitude", w.shape, 0.0)
                    v_new = add(mul(v, b2), mul(v_new, 1.0 - b2))
                    out.append((v, v_new))
                if correction_v is not None:
                    v_new = div(v_new, correction_v)
                step = div(step, add(sqrt(v_new), self.epsilon))
            out.append((w, sub(w, mul(step, lr))))
        return out


def _state(like: Node, key: str, shape, init: float) -> Node:
    return like.graph._leaf(StateOp(key, init), TensorType(tuple(shape), like.dtype), None)


def SGD(lr: float, momentum: float = 0.0) -> Optimizer:
    """PyTorch's SGD: v = momentum*v + g; w -= lr*v."""
    return Optimizer(lr, beta_momentum=momentum, momentum_is_average=False, uses_magnitude=False)


def RMSProp(lr: float, beta: float = 0.9, epsilon: float = 1e-8) -> Optimizer:
    """s = beta*s + (1-beta)*g*g; w -= lr*g/(sqrt(s)+eps)."""
    return Optimizer(lr, beta_magnitude=beta, epsilon=epsilon)


def Adam(
    lr: float = 1e-3, beta_momentum: float = 0.9, beta_magnitude: float = 0.999, epsilon: float = 1e-8
) -> Optimizer:
    """Adam with bias correction 1 - beta**t (Kingma & Ba; PyTorch's epsilon placement)."""
    return Optimizer(lr, beta_momentum, beta_magnitude, epsilon, bias_correction=True)

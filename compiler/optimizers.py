"""Optimizers as update rules written in graph ops, so the compiler fuses them like any other
elementwise code. One rule with two betas covers SGD, momentum, RMSProp and Adam."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..core.leaves import StateOp
from ..core.node import Call, Node, recording
from ..core.types import TensorType
from ..ops.elementwise import add, div, mul, sqrt, sub

LR_KEY = "hyper/lr"


@dataclass(frozen=True)
class Optimizer:
    """The update rule every optimizer is a case of: `m` (first moment) and `v` (second moment)
    are state buffers, and a zero beta disables one. Use `SGD`, `RMSProp` or `Adam`; build an
    `Optimizer` directly only for a combination they do not cover.

    Args:
        lr: Learning rate (change it between steps with `train.lr = ...`).
        beta_momentum: Decay of the first moment `m`; 0 keeps no `m`.
        beta_magnitude: Decay of the second moment `v`; 0 keeps no `v` (but still divides by
            `sqrt(g*g) + epsilon` when `uses_magnitude`).
        epsilon: Added to `sqrt(v)` before dividing.
        momentum_is_average: `m = b*m + (1-b)*g` (Adam) instead of `m = b*m + g` (SGD momentum).
        uses_magnitude: Divide the step by `sqrt(v) + epsilon`.
        bias_correction: Divide the moments by `1 - beta**t` (Adam).

    Raises:
        ValueError: A beta outside [0, 1), or a negative lr or epsilon.

    Example:
        >>> import drug as dg
        >>> adam_without_correction = dg.Optimizer(1e-3, 0.9, 0.999)
        >>> adam_without_correction.bias_correction
        False
    """

    lr: float
    beta_momentum: float = 0.0
    beta_magnitude: float = 0.0
    epsilon: float = 1e-8
    momentum_is_average: bool = True
    uses_magnitude: bool = True
    bias_correction: bool = False

    def __post_init__(self):
        for field in ("beta_momentum", "beta_magnitude"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ValueError(f"{type(self).__name__}: {field} must be in [0, 1), got {getattr(self, field)}")
        if self.lr < 0 or self.epsilon < 0:
            raise ValueError(f"{type(self).__name__}: lr and epsilon must be non-negative")

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
            with recording(Call(f"update of {w.label}", "update"), force=True):  # named in profiles
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


class SGD(Optimizer):
    """Stochastic gradient descent, PyTorch's convention: `v = momentum*v + g; w -= lr*v`.

    Args:
        lr: Learning rate.
        momentum: Decay of the velocity `v`; 0 (the default) keeps no state: `w -= lr*g`.

    Example:
        >>> import drug as dg
        >>> dg.SGD(0.1, momentum=0.9)
        SGD(lr=0.1, momentum=0.9)
    """

    def __init__(self, lr: float, momentum: float = 0.0):
        super().__init__(lr, beta_momentum=momentum, momentum_is_average=False, uses_magnitude=False)

    def __repr__(self) -> str:
        return f"SGD(lr={self.lr!r}, momentum={self.beta_momentum!r})"


class RMSProp(Optimizer):
    """RMSProp: `s = beta*s + (1-beta)*g*g; w -= lr*g/(sqrt(s)+epsilon)`.

    Args:
        lr: Learning rate.
        beta: Decay of the mean square `s`.
        epsilon: Added to `sqrt(s)` before dividing.

    Example:
        >>> import drug as dg
        >>> dg.RMSProp(1e-3)
        RMSProp(lr=0.001, beta=0.9, epsilon=1e-08)
    """

    def __init__(self, lr: float, beta: float = 0.9, epsilon: float = 1e-8):
        super().__init__(lr, beta_magnitude=beta, epsilon=epsilon)

    def __repr__(self) -> str:
        return f"RMSProp(lr={self.lr!r}, beta={self.beta_magnitude!r}, epsilon={self.epsilon!r})"


class Adam(Optimizer):
    """Adam with bias correction `1 - beta**t` (Kingma & Ba), epsilon placed as PyTorch does:
    `m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g; w -= lr * m_hat / (sqrt(v_hat) + epsilon)`.

    Args:
        lr: Learning rate.
        beta_momentum: Decay of the first moment (PyTorch's beta1); 0 disables it.
        beta_magnitude: Decay of the second moment (beta2); 0 disables it.
        epsilon: Added to `sqrt(v_hat)` before dividing.

    Example:
        >>> import drug as dg
        >>> dg.Adam(lr=3e-3)
        Adam(lr=0.003, beta_momentum=0.9, beta_magnitude=0.999, epsilon=1e-08)
    """

    def __init__(
        self, lr: float = 1e-3, beta_momentum: float = 0.9, beta_magnitude: float = 0.999, epsilon: float = 1e-8
    ):
        super().__init__(lr, beta_momentum, beta_magnitude, epsilon, bias_correction=True)

    def __repr__(self) -> str:
        return (
            f"Adam(lr={self.lr!r}, beta_momentum={self.beta_momentum!r}, "
            f"beta_magnitude={self.beta_magnitude!r}, epsilon={self.epsilon!r})"
        )

"""Optimizers as update rules written in graph ops, so the compiler fuses them like any other
elementwise code. One rule with two betas covers SGD, momentum, RMSProp and Adam; on top of it:
weight decay (added to the gradient, or decoupled as in AdamW), parameter groups (per-parameter
learning-rate multipliers and weight decay), global-norm gradient clipping and learning-rate
schedules evaluated from a step counter, all inside the compiled step."""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..core.errors import GraphError
from ..core.leaves import StateOp
from ..core.node import Call, Node, apply, recording
from ..core.types import TensorType
from ..ops.elementwise import add, div, mul, sqrt, sub
from ..ops.reduce import SumOfSquares
from .schedules import Schedule
from .traced import elementwise

LR_KEY = "hyper/lr"  # the learning rate without a schedule (set it between steps)
STEP_KEY = "step/count"  # steps taken, from which a schedule computes the learning rate
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: max_norm / (total_norm + 1e-6)

Selector = str | Sequence[str | Node] | Callable[[Node], bool]


def is_vector(param: Node) -> bool:
    """Parameters of at most one axis: biases and normalization scales and shifts."""
    return param.ndim <= 1


def _non_negative(owner: str, field: str, value, allow_none: bool = False, otherwise: str = "") -> None:
    """GraphError unless `value` is a finite non-negative number (or None if allowed); `otherwise`
    names what else the field takes."""
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
        raise GraphError(f"{owner}: {field} must be a finite non-negative number{otherwise}, got {value!r}")


@dataclass(frozen=True, eq=False)
class ParamGroup:
    """Parameters trained with their own settings (PyTorch's param_groups, optax's masks). A
    parameter takes the first group of the optimizer's `groups` that selects it.

    Args:
        select: Which parameters: a glob over their names (`"*/bias"`), a list of names or
            parameter nodes, or a predicate on the parameter node.
        lr_scale: Multiplies the learning rate (a number or a schedule's value) for them.
        weight_decay: Replaces the optimizer's weight decay for them (None: keep it).

    Example:
        >>> import drug as dg
        >>> opt = dg.AdamW(1e-3, weight_decay=0.05, groups=[dg.ParamGroup("head/*", lr_scale=0.1)])
        >>> opt.groups[0].lr_scale
        0.1
    """

    select: Selector
    lr_scale: float = 1.0
    weight_decay: float | None = None

    def __post_init__(self):
        _non_negative("ParamGroup", "lr_scale", self.lr_scale)
        _non_negative("ParamGroup", "weight_decay", self.weight_decay, allow_none=True)

    def selects(self, param: Node) -> bool:
        """Whether this group holds the parameter node `param`."""
        if isinstance(self.select, str):
            return fnmatch.fnmatchcase(param.name or "", self.select)
        if callable(self.select):
            return bool(self.select(param))
        return any(param is s if isinstance(s, Node) else param.name == s for s in self.select)


def no_decay(select: Selector = is_vector) -> ParamGroup:
    """A group without weight decay, by default for biases and normalization scales and shifts
    (every parameter with fewer than two axes), the usual mask for AdamW.

    Example:
        >>> import drug as dg
        >>> dg.no_decay().weight_decay
        0.0
    """
    return ParamGroup(select, weight_decay=0.0)


@elementwise
def _clip_factor(total_squares, max_norm):
    """min(1, max_norm / (||g|| + 1e-6)), as torch.nn.utils.clip_grad_norm_ scales gradients."""
    factor = max_norm / (math.sqrt(total_squares) + CLIP_EPS)
    return 1.0 if factor > 1.0 else factor


@dataclass(frozen=True)
class Optimizer:
    """The update rule every optimizer is a case of: `m` (first moment) and `v` (second moment)
    are state buffers, and a zero beta disables one. Use `SGD`, `RMSProp`, `Adam` or `AdamW`;
    build an `Optimizer` directly only for a combination they do not cover.

    Args:
        lr: Learning rate: a number (change it between steps with `train.lr = ...`) or a
            schedule from `dg.schedules`, computed in the step from its step counter.
        beta_momentum: Decay of the first moment `m`; 0 keeps no `m`.
        beta_magnitude: Decay of the second moment `v`; 0 keeps no `v` (but still divides by
            `sqrt(g*g) + epsilon` when `uses_magnitude`).
        epsilon: Added to `sqrt(v)` before dividing.
        momentum_is_average: `m = b*m + (1-b)*g` (Adam) instead of `m = b*m + g` (SGD momentum).
        uses_magnitude: Divide the step by `sqrt(v) + epsilon`.
        bias_correction: Divide the moments by `1 - beta**t` (Adam).
        weight_decay: `g += weight_decay * w` before the rule (PyTorch's for SGD, RMSProp and Adam),
            or with `decoupled_decay` `w -= lr * weight_decay * w` beside it (AdamW).
        decoupled_decay: See `weight_decay`.
        clip_norm: Scale all gradients by `min(1, clip_norm / (||g|| + 1e-6))`, ||g|| the global L2
            norm over every trained parameter (torch.nn.utils.clip_grad_norm_); None: no clipping.
        groups: `ParamGroup`s with their own learning-rate multiplier and weight decay.

    Raises:
        GraphError: A beta outside [0, 1), a negative or non-finite lr, epsilon, weight decay or
            clip norm, or groups that are not `ParamGroup`s.

    Example:
        >>> import drug as dg
        >>> adam_without_correction = dg.Optimizer(1e-3, 0.9, 0.999)
        >>> adam_without_correction.bias_correction
        False
    """

    lr: float | Schedule
    beta_momentum: float = 0.0
    beta_magnitude: float = 0.0
    epsilon: float = 1e-8
    momentum_is_average: bool = True
    uses_magnitude: bool = True
    bias_correction: bool = False
    weight_decay: float = 0.0
    decoupled_decay: bool = False
    clip_norm: float | None = None
    groups: tuple[ParamGroup, ...] = ()

    def __post_init__(self):
        name = type(self).__name__
        for field in ("beta_momentum", "beta_magnitude"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
                raise GraphError(f"{name}: {field} must be in [0, 1), got {value!r}")
        if not isinstance(self.lr, Schedule):
            _non_negative(name, "lr", self.lr, otherwise=" or a schedule (dg.schedules)")
        _non_negative(name, "epsilon", self.epsilon)
        _non_negative(name, "weight_decay", self.weight_decay)
        _non_negative(name, "clip_norm", self.clip_norm, allow_none=True)
        if self.clip_norm is not None and self.clip_norm == 0:
            raise GraphError(f"{name}: clip_norm must be positive (or None), got {self.clip_norm!r}")
        object.__setattr__(self, "groups", tuple(self.groups))
        if not all(isinstance(g, ParamGroup) for g in self.groups):
            raise GraphError(f"{name}: groups must be dg.ParamGroup objects, got {self.groups!r}")

    def group_of(self, param: Node) -> ParamGroup | None:
        """The first of `groups` that selects the parameter node, or None."""
        return next((group for group in self.groups if group.selects(param)), None)

    def updates(self, params: Sequence[Node], grads: Sequence[Node]) -> list[tuple[Node, Node]]:
        """(leaf, new value) pairs for every parameter and state buffer."""
        out: list[tuple[Node, Node]] = []
        b1, b2 = self.beta_momentum, self.beta_magnitude
        first = params[0]
        lr = self._learning_rate(first, out)
        grads = self._clipped(grads)
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
                out += self._update(w, g, lr, correction_m, correction_v)
        return out

    def _update(self, w: Node, g: Node, lr: Node, correction_m, correction_v) -> list[tuple[Node, Node]]:
        """The updates of parameter `w` (and its moments) from its gradient `g`."""
        out: list[tuple[Node, Node]] = []
        b1, b2 = self.beta_momentum, self.beta_magnitude
        group = self.group_of(w)
        decay = self.weight_decay if group is None or group.weight_decay is None else group.weight_decay
        rate = lr if group is None or group.lr_scale == 1.0 else mul(lr, group.lr_scale)
        if decay and not self.decoupled_decay:
            g = add(g, mul(w, decay))  # L2 regularization: PyTorch's weight_decay for SGD/Adam/RMSProp
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
        kept = w
        if decay and self.decoupled_decay:  # AdamW: w * (1 - lr * wd), then the Adam step
            kept = mul(w, sub(1.0, mul(rate, decay)))
        out.append((w, sub(kept, mul(step, rate))))
        return out

    def _learning_rate(self, first: Node, out: list) -> Node:
        """This step's learning rate: the LR_KEY buffer, or the schedule at the step counter
        (STEP_KEY, advanced by the step)."""
        if not isinstance(self.lr, Schedule):
            return _state(first, LR_KEY, (), self.lr)  # a state buffer, so callers can change it between steps
        count = _state(first, STEP_KEY, (), 0.0)
        out.append((count, add(count, 1.0)))
        return self.lr.node(count)

    def _clipped(self, grads: Sequence[Node]) -> Sequence[Node]:
        """The gradients scaled by min(1, clip_norm / (global norm + 1e-6)): one reduction over all
        of them (a single kernel), the scaling fused into the updates."""
        if self.clip_norm is None:
            return grads
        factor = _clip_factor(apply(SumOfSquares(), *grads), float(self.clip_norm))
        return [mul(g, factor) for g in grads]

    def _extras(self) -> str:
        """The repr's part for the options every optimizer takes, where they are set."""
        parts = [f"weight_decay={self.weight_decay!r}"] if self.weight_decay and not self.decoupled_decay else []
        parts += [f"clip_norm={self.clip_norm!r}"] if self.clip_norm is not None else []
        parts += [f"groups={list(self.groups)!r}"] if self.groups else []
        return "".join(f", {p}" for p in parts)


def _state(like: Node, key: str, shape, init: float) -> Node:
    return like.graph._leaf(StateOp(key, init), TensorType(tuple(shape), like.dtype), None)


def _options(weight_decay: float, clip_norm: float | None, groups: Sequence[ParamGroup]) -> dict:
    return dict(weight_decay=weight_decay, clip_norm=clip_norm, groups=tuple(groups))


class SGD(Optimizer):
    """Stochastic gradient descent, PyTorch's convention: `v = momentum*v + g; w -= lr*v`.

    Args:
        lr: Learning rate, a number or a schedule.
        momentum: Decay of the velocity `v`; 0 (the default) keeps no state: `w -= lr*g`.
        weight_decay: Added to the gradient as `weight_decay * w` (PyTorch's).
        clip_norm: Global gradient-norm limit (see `Optimizer`).
        groups: `ParamGroup`s (see `Optimizer`).

    Example:
        >>> import drug as dg
        >>> dg.SGD(0.1, momentum=0.9)
        SGD(lr=0.1, momentum=0.9)
    """

    def __init__(
        self,
        lr: float | Schedule,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
        groups: Sequence[ParamGroup] = (),
    ):
        super().__init__(lr, beta_momentum=momentum, momentum_is_average=False, uses_magnitude=False,
                         **_options(weight_decay, clip_norm, groups))  # fmt: skip

    def __repr__(self) -> str:
        return f"SGD(lr={self.lr!r}, momentum={self.beta_momentum!r}{self._extras()})"


class RMSProp(Optimizer):
    """RMSProp: `s = beta*s + (1-beta)*g*g; w -= lr*g/(sqrt(s)+epsilon)`.

    Args:
        lr: Learning rate, a number or a schedule.
        beta: Decay of the mean square `s`.
        epsilon: Added to `sqrt(s)` before dividing.
        weight_decay: Added to the gradient as `weight_decay * w` (PyTorch's).
        clip_norm: Global gradient-norm limit (see `Optimizer`).
        groups: `ParamGroup`s (see `Optimizer`).

    Example:
        >>> import drug as dg
        >>> dg.RMSProp(1e-3)
        RMSProp(lr=0.001, beta=0.9, epsilon=1e-08)
    """

    def __init__(
        self,
        lr: float | Schedule,
        beta: float = 0.9,
        epsilon: float = 1e-8,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
        groups: Sequence[ParamGroup] = (),
    ):
        super().__init__(lr, beta_magnitude=beta, epsilon=epsilon, **_options(weight_decay, clip_norm, groups))

    def __repr__(self) -> str:
        return f"RMSProp(lr={self.lr!r}, beta={self.beta_magnitude!r}, epsilon={self.epsilon!r}{self._extras()})"


class Adam(Optimizer):
    """Adam with bias correction `1 - beta**t` (Kingma & Ba), epsilon placed as PyTorch does:
    `m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g; w -= lr * m_hat / (sqrt(v_hat) + epsilon)`.

    Args:
        lr: Learning rate, a number or a schedule.
        beta_momentum: Decay of the first moment (PyTorch's beta1); 0 disables it.
        beta_magnitude: Decay of the second moment (beta2); 0 disables it.
        epsilon: Added to `sqrt(v_hat)` before dividing.
        weight_decay: Added to the gradient as `weight_decay * w`, as PyTorch's Adam does (see
            `AdamW` for the decoupled kind).
        clip_norm: Global gradient-norm limit (see `Optimizer`).
        groups: `ParamGroup`s (see `Optimizer`).

    Example:
        >>> import drug as dg
        >>> dg.Adam(lr=3e-3)
        Adam(lr=0.003, beta_momentum=0.9, beta_magnitude=0.999, epsilon=1e-08)
    """

    def __init__(
        self,
        lr: float | Schedule = 1e-3,
        beta_momentum: float = 0.9,
        beta_magnitude: float = 0.999,
        epsilon: float = 1e-8,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
        groups: Sequence[ParamGroup] = (),
    ):
        super().__init__(lr, beta_momentum, beta_magnitude, epsilon, bias_correction=True,
                         **_options(weight_decay, clip_norm, groups))  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"Adam(lr={self.lr!r}, beta_momentum={self.beta_momentum!r}, "
            f"beta_magnitude={self.beta_magnitude!r}, epsilon={self.epsilon!r}{self._extras()})"
        )


class AdamW(Optimizer):
    """PyTorch's AdamW (Loshchilov & Hutter): `w -= lr * weight_decay * w` beside the Adam step,
    not through the moments.

    Args:
        lr: Learning rate, a number or a schedule.
        weight_decay: Decoupled weight decay (per group with `ParamGroup`, e.g. `dg.no_decay()`).
        beta_momentum: Decay of the first moment (beta1).
        beta_magnitude: Decay of the second moment (beta2).
        epsilon: Added to `sqrt(v_hat)` before dividing.
        clip_norm: Global gradient-norm limit (see `Optimizer`).
        groups: `ParamGroup`s (see `Optimizer`).

    Example:
        >>> import drug as dg
        >>> dg.AdamW(3e-3, weight_decay=0.05, clip_norm=1.0)
        AdamW(lr=0.003, weight_decay=0.05, beta_momentum=0.9, beta_magnitude=0.999, epsilon=1e-08, clip_norm=1.0)
    """

    def __init__(
        self,
        lr: float | Schedule = 1e-3,
        weight_decay: float = 1e-2,
        beta_momentum: float = 0.9,
        beta_magnitude: float = 0.999,
        epsilon: float = 1e-8,
        clip_norm: float | None = None,
        groups: Sequence[ParamGroup] = (),
    ):
        super().__init__(lr, beta_momentum, beta_magnitude, epsilon, bias_correction=True, decoupled_decay=True,
                         **_options(weight_decay, clip_norm, groups))  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"AdamW(lr={self.lr!r}, weight_decay={self.weight_decay!r}, beta_momentum={self.beta_momentum!r}, "
            f"beta_magnitude={self.beta_magnitude!r}, epsilon={self.epsilon!r}{self._extras()})"
        )

"""Optimizers as update rules written in graph ops, so the compiler fuses them like any other
elementwise code. One rule with two betas covers SGD, momentum, RMSProp and Adam; on top of it:
weight decay (added to the gradient, or decoupled as in AdamW), parameter groups (per-parameter
learning-rate multipliers and weight decay), global-norm gradient clipping and learning-rate
schedules evaluated from a step counter, all inside the compiled step."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..core.leaves import StateOp
from ..core.node import Node, apply
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


@dataclass(frozen=True, eq=False)
class ParamGroup:
    """Parameters trained with their own settings (PyTorch's param_groups, optax's masks).
    `select` picks them: a glob over parameter names ("*/bias"), a list of names or parameter
    nodes, or a predicate on the parameter node. `lr_scale` multiplies the learning rate;
    `weight_decay` (None: the optimizer's) replaces the decay. A parameter takes the first group
    that selects it."""

    select: Selector
    lr_scale: float = 1.0
    weight_decay: float | None = None

    def __post_init__(self):
        if self.lr_scale < 0 or (self.weight_decay is not None and self.weight_decay < 0):
            raise ValueError(f"ParamGroup: lr_scale and weight_decay must be non-negative, got {self}")

    def selects(self, param: Node) -> bool:
        if isinstance(self.select, str):
            return fnmatch.fnmatchcase(param.name or "", self.select)
        if callable(self.select):
            return bool(self.select(param))
        return any(param is s or param.name == s for s in self.select)


def no_decay(select: Selector = is_vector) -> ParamGroup:
    """A group without weight decay, by default for biases and normalization scales (every
    parameter with fewer than two axes)."""
    return ParamGroup(select, weight_decay=0.0)


@elementwise
def _clip_factor(total_squares, max_norm):
    """min(1, max_norm / (||g|| + 1e-6)), as torch.nn.utils.clip_grad_norm_ scales gradients."""
    factor = max_norm / (math.sqrt(total_squares) + CLIP_EPS)
    return 1.0 if factor > 1.0 else factor


@dataclass(frozen=True, eq=False)
class Optimizer:
    """`m` (first moment) and `v` (second moment) are state buffers; a zero beta disables one.
    `lr` is a number or a schedule (dg.schedules)."""

    lr: float | Schedule
    beta_momentum: float = 0.0
    beta_magnitude: float = 0.0
    epsilon: float = 1e-8
    momentum_is_average: bool = True  # m = b*m + (1-b)*g (Adam) vs m = b*m + g (SGD momentum)
    uses_magnitude: bool = True  # divide by sqrt(v) + eps
    bias_correction: bool = False  # Adam's 1 - beta**t
    weight_decay: float = 0.0
    decoupled_decay: bool = False  # AdamW: w -= lr * wd * w, beside the update (else g += wd * w)
    clip_norm: float | None = None  # scale all gradients so that their global L2 norm is at most this
    groups: tuple[ParamGroup, ...] = ()

    def __post_init__(self):
        name = type(self).__name__
        for field in ("beta_momentum", "beta_magnitude"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ValueError(f"{name}: {field} must be in [0, 1), got {getattr(self, field)}")
        if not isinstance(self.lr, Schedule) and (not isinstance(self.lr, (int, float)) or self.lr < 0):
            raise ValueError(f"{name}: lr must be a non-negative number or a schedule, got {self.lr!r}")
        if self.epsilon < 0 or self.weight_decay < 0:
            raise ValueError(f"{name}: epsilon and weight_decay must be non-negative")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"{name}: clip_norm must be positive (or None), got {self.clip_norm}")
        object.__setattr__(self, "groups", tuple(self.groups))
        if not all(isinstance(g, ParamGroup) for g in self.groups):
            raise ValueError(f"{name}: groups must be dg.ParamGroup objects, got {self.groups!r}")

    def group_of(self, param: Node) -> ParamGroup | None:
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


def _state(like: Node, key: str, shape, init: float) -> Node:
    return like.graph._leaf(StateOp(key, init), TensorType(tuple(shape), like.dtype), None)


def _common(weight_decay: float, clip_norm: float | None, groups: Sequence[ParamGroup]) -> dict:
    return dict(weight_decay=weight_decay, clip_norm=clip_norm, groups=tuple(groups))


def SGD(
    lr: float | Schedule,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
    groups: Sequence[ParamGroup] = (),
) -> Optimizer:
    """PyTorch's SGD: g += weight_decay*w; v = momentum*v + g; w -= lr*v."""
    return Optimizer(lr, beta_momentum=momentum, momentum_is_average=False, uses_magnitude=False,
                     **_common(weight_decay, clip_norm, groups))  # fmt: skip


def RMSProp(
    lr: float | Schedule,
    beta: float = 0.9,
    epsilon: float = 1e-8,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
    groups: Sequence[ParamGroup] = (),
) -> Optimizer:
    """g += weight_decay*w; s = beta*s + (1-beta)*g*g; w -= lr*g/(sqrt(s)+eps)."""
    return Optimizer(lr, beta_magnitude=beta, epsilon=epsilon, **_common(weight_decay, clip_norm, groups))


def Adam(
    lr: float | Schedule = 1e-3,
    beta_momentum: float = 0.9,
    beta_magnitude: float = 0.999,
    epsilon: float = 1e-8,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
    groups: Sequence[ParamGroup] = (),
) -> Optimizer:
    """Adam with bias correction 1 - beta**t (Kingma & Ba; PyTorch's epsilon placement); weight
    decay is added to the gradient, as PyTorch's Adam does (see AdamW for the decoupled kind)."""
    return Optimizer(lr, beta_momentum, beta_magnitude, epsilon, bias_correction=True,
                     **_common(weight_decay, clip_norm, groups))  # fmt: skip


def AdamW(
    lr: float | Schedule = 1e-3,
    weight_decay: float = 1e-2,
    beta_momentum: float = 0.9,
    beta_magnitude: float = 0.999,
    epsilon: float = 1e-8,
    clip_norm: float | None = None,
    groups: Sequence[ParamGroup] = (),
) -> Optimizer:
    """PyTorch's AdamW (Loshchilov & Hutter): w -= lr * weight_decay * w, then the Adam step."""
    return Optimizer(lr, beta_momentum, beta_magnitude, epsilon, bias_correction=True, decoupled_decay=True,
                     **_common(weight_decay, clip_norm, groups))  # fmt: skip

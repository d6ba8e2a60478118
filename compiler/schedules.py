"""Learning-rate schedules, evaluated inside the compiled step from its step counter.

A schedule is a function of the step (counted from 0: the first train step uses `schedule(0)`),
written once with comparisons and math.cos/floor so that it runs three ways: on Python numbers
(`schedule(100)`), traced into an elementwise op the train step computes natively from the
optimizer's step counter (`compiler/tracing.py`), and in NumPy on the reference backend. The
counter is optimizer state, so a checkpoint resumes the schedule where it was.

    lr = dg.schedules.join([dg.schedules.linear_warmup(1e-3, 500), dg.schedules.cosine_decay(1e-3, 9500)], [500])
    train = g.compile(loss=loss, optimizer=dg.AdamW(lr, weight_decay=0.05))

The formulas follow PyTorch's schedulers and optax's schedules (each docstring says which); past
their last step they hold their final value."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..core.node import Node, apply
from . import tracing
from .traced import Traced

_cos = tracing.MATH["cos"]
_floor = tracing.MATH["floor"]


class Schedule:
    """Base class: subclasses define `value(step)`, using only arithmetic, comparisons (also
    min/max) and the `_cos`/`_floor` of this module, so that it traces."""

    def value(self, step):
        raise NotImplementedError

    def __call__(self, step):
        """The learning rate at `step` (a number; inside tracing, a traced value)."""
        return self.value(step)

    @functools.cached_property
    def op(self) -> Traced:
        """The elementwise op computing the schedule from a step value."""
        return Traced(tracing.linearize(tracing.trace(lambda step: self.value(step), 1)), repr(self))

    def node(self, step: Node) -> Node:
        """The learning rate as a graph node computed from the step counter `step`."""
        return apply(self.op, step)

    def __mul__(self, other: Schedule | float) -> Schedule:
        return Product(self, other if isinstance(other, Schedule) else constant(float(other)))

    __rmul__ = __mul__


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True, eq=False)
class constant(Schedule):  # noqa: N801 - named like the function users call
    """The same rate at every step."""

    rate: float

    def value(self, step):
        return self.rate + 0.0 * step


@dataclass(frozen=True, eq=False)
class linear_warmup(Schedule):  # noqa: N801
    """From `start` to `peak` linearly over `warmup_steps`, then `peak` (optax.linear_schedule;
    PyTorch's LinearLR with start_factor=start/peak, total_iters=warmup_steps)."""

    peak: float
    warmup_steps: int
    start: float = 0.0

    def __post_init__(self):
        _check(self.warmup_steps > 0, f"linear_warmup needs warmup_steps > 0, got {self.warmup_steps}")

    def value(self, step):
        t = min(step, float(self.warmup_steps))
        return self.start + (self.peak - self.start) * (t / self.warmup_steps)


@dataclass(frozen=True, eq=False)
class cosine_decay(Schedule):  # noqa: N801
    """From `peak` to `final` along half a cosine over `decay_steps`, then `final`:
    final + (peak - final) * (1 + cos(pi * step / decay_steps)) / 2 (PyTorch's CosineAnnealingLR
    with T_max=decay_steps, eta_min=final; optax.cosine_decay_schedule with alpha=final/peak)."""

    peak: float
    decay_steps: int
    final: float = 0.0

    def __post_init__(self):
        _check(self.decay_steps > 0, f"cosine_decay needs decay_steps > 0, got {self.decay_steps}")

    def value(self, step):
        t = min(step, float(self.decay_steps))
        return self.final + (self.peak - self.final) * 0.5 * (1.0 + _cos(math.pi * t / self.decay_steps))


@dataclass(frozen=True, eq=False)
class step_decay(Schedule):  # noqa: N801
    """peak * gamma ** floor(step / step_size) (PyTorch's StepLR)."""

    peak: float
    step_size: int
    gamma: float = 0.1

    def __post_init__(self):
        _check(self.step_size > 0 and self.gamma > 0, f"step_decay needs step_size > 0 and gamma > 0, got {self}")

    def value(self, step):
        return self.peak * self.gamma ** _floor(step / self.step_size)


@dataclass(frozen=True, eq=False)
class one_cycle(Schedule):  # noqa: N801
    """PyTorch's OneCycleLR (two phases, cosine annealing; its momentum cycling is not part of a
    learning-rate schedule): from peak / div_factor up to `peak` until step pct_start * total - 1,
    then down to peak / div_factor / final_div_factor at step total - 1."""

    peak: float
    total_steps: int
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4

    def __post_init__(self):
        _check(self.total_steps > 1 and 0 < self.pct_start < 1, f"one_cycle needs total_steps > 1 and 0 < "
               f"pct_start < 1, got {self.total_steps}, {self.pct_start}")  # fmt: skip

    def value(self, step):
        initial = self.peak / self.div_factor
        lowest = initial / self.final_div_factor
        up_end = self.pct_start * self.total_steps - 1.0
        down_end = self.total_steps - 1.0
        t = min(step, down_end)
        if t <= up_end:
            start, end, pct = initial, self.peak, t / up_end
        else:
            start, end, pct = self.peak, lowest, (t - up_end) / (down_end - up_end)
        return end + (start - end) * 0.5 * (_cos(math.pi * pct) + 1.0)


@dataclass(frozen=True, eq=False)
class join(Schedule):  # noqa: N801
    """schedules[0] until boundaries[0], then schedules[1] with its step counted from that
    boundary, and so on (optax.join_schedules): warmup then decay is
    join([linear_warmup(peak, w), cosine_decay(peak, total - w)], [w])."""

    schedules: Sequence[Schedule]
    boundaries: Sequence[int]

    def __post_init__(self):
        _check(len(self.schedules) == len(self.boundaries) + 1, "join needs one boundary fewer than schedules")
        _check(list(self.boundaries) == sorted(self.boundaries), f"join's boundaries must increase: {self.boundaries}")

    def value(self, step):
        for boundary, schedule in zip(reversed(self.boundaries), reversed(self.schedules[1:])):
            if step >= boundary:
                return schedule(step - boundary)
        return self.schedules[0](step)


@dataclass(frozen=True, eq=False)
class Product(Schedule):
    """Two schedules multiplied step by step (`schedule * 0.5`, `warmup * decay`)."""

    first: Schedule
    second: Schedule = field(default_factory=lambda: constant(1.0))

    def value(self, step):
        return self.first(step) * self.second(step)


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int, final: float = 0.0) -> Schedule:
    """Linear warmup from 0 to `peak`, then cosine decay to `final` at `total_steps`."""
    _check(total_steps > warmup_steps, f"warmup_cosine needs total_steps > warmup_steps, got {total_steps}")
    return join([linear_warmup(peak, warmup_steps), cosine_decay(peak, total_steps - warmup_steps, final)],
                [warmup_steps])  # fmt: skip

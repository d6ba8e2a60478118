"""Compiled functions as users call them: feeds in, outputs out, state kept between calls."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backends import Backend, get_backend
from ..compiler.build import build_program
from ..compiler.optimizers import LR_KEY, STEP_KEY
from ..compiler.passes import Pass
from ..compiler.schedules import Schedule
from ..core import memory
from ..core.errors import GraphError, ShapeError
from ..core.graph import Graph
from ..core.leaves import BufferOp, InputOp, ParameterOp
from ..core.node import Node
from ..core.program import Program
from ..core.types import concrete_shape
from . import checkpoint
from .feeds import bind_feeds
from .locks import graph_lock

_POOL_SIZE = 3  # output arrays kept per output: the caller usually holds the previous one
_POOL_REFS = 3  # sys.getrefcount of a pooled array nobody else holds: pool list, comprehension, argument
DEFAULT_BACKEND = os.environ.get("DRUG_BACKEND", "llvm")


class CompiledFunction:
    """One compiled graph function. Training calls return the loss as a float and update the
    graph's parameters in place; inference calls return the outputs (a tuple if several)."""

    def __init__(self, program: Program, backend: Backend, check_finite: bool):
        self.program = program
        self.backend = backend.name
        self.check_finite = check_finite
        self.inputs = program.leaves(InputOp)
        self.step_count = 0
        self.state: dict[str, np.ndarray] = program.initial_state()
        self._n_user_outputs = len(program.outputs) - (program.loss is not None)
        self._lock = graph_lock(program.graph)  # the graph's compiled functions share its parameters
        self._output_pool: dict[int, list[np.ndarray]] = {}
        self._fits: set[int] = set()  # batch sizes whose memory was checked
        self._executor = backend.executor(program, self.state)

    @property
    def trains(self) -> bool:
        return bool(self.program.updates)

    @property
    def params(self) -> list[str]:
        return [n.name for n in self.program.leaves(ParameterOp)]

    @property
    def lr(self) -> float:
        """The learning rate the next step uses: the optimizer's (assign to change it), or its
        schedule's value at the step counter."""
        schedule = self._schedule()
        if schedule is not None:
            return float(schedule(float(self.state[STEP_KEY])))
        return float(self._lr_buffer())

    @lr.setter
    def lr(self, value: float) -> None:
        if self._schedule() is not None:
            raise GraphError("the learning rate follows a schedule (dg.schedules); it cannot be assigned")
        self._lr_buffer()[...] = value

    def _schedule(self) -> Schedule | None:
        rate = self.program.optimizer.lr if self.program.optimizer is not None else None
        return rate if isinstance(rate, Schedule) else None

    def _lr_buffer(self) -> np.ndarray:
        if LR_KEY not in self.state:
            raise GraphError("this compiled function has no optimizer, so no learning rate")
        return self.state[LR_KEY]

    def __call__(self, feeds: dict[str, Any] | None = None, /, *, out: Any = None, **named: Any):
        """Run one step. Feeds go by input name (or in a dict, e.g. for an input called "out");
        `out` takes an array (or a tuple of arrays) that receives the outputs without allocating."""
        arrays, batch = bind_feeds(self.inputs, {**(feeds or {}), **named}, self.check_finite)
        first = 1 if self.program.loss is not None else 0
        targets = None if out is None else [out] if isinstance(out, np.ndarray) else list(out)
        if self.trains and batch == 0:
            raise ShapeError("a train step needs at least one example, got a batch of size 0; nothing was updated")
        self._check_before_running(batch, first, targets)
        with self._lock:  # compiled functions of one graph take turns (see locks.py)
            if self._executor.fills_outputs:
                if targets is None:
                    targets = direct = self._recycled_outputs(batch, first)
                else:
                    direct = self._unaliased(targets, arrays)
                results = self._executor.run(arrays, batch, [None] * first + direct)
            else:
                results = self._executor.run(arrays, batch)
            if self.trains:
                self.step_count += 1
            values = self._deliver(results[first:], targets)
            loss = float(results[0]) if first else None
        if loss is None:
            return values[0] if len(values) == 1 else tuple(values)
        return (loss, *values) if self._n_user_outputs else loss

    def _check_before_running(self, batch: int | None, first: int, targets: list | None) -> None:
        """Refuse `out=` arrays that cannot take the outputs and batches too big for the machine
        now, before the step changes anything."""
        if targets is None and (batch is None or batch in self._fits):
            return
        outputs = self.program.outputs[first:]
        shapes = [concrete_shape(n.shape, batch or 0) for n in outputs]
        if targets is not None:
            if len(targets) != len(outputs):
                raise GraphError(f"out= has {len(targets)} arrays for {len(outputs)} outputs; nothing was run")
            for target, node, shape in zip(targets, outputs, shapes):
                if not isinstance(target, np.ndarray) or target.shape != shape or target.dtype != node.dtype:
                    got = f"{target.shape} {target.dtype}" if isinstance(target, np.ndarray) else type(target).__name__
                    raise ShapeError(f"out= array is {got}, the output is {shape} {node.dtype}; nothing was run")
                if not target.flags.writeable:
                    raise ShapeError("out= array is read-only; nothing was run")
        if batch is not None and batch not in self._fits:
            needed = sum(math.prod(s) * n.dtype.itemsize for s, n in zip(shapes, outputs))
            values = self._executor.bytes_needed(batch)
            memory.check(needed + values, f"the outputs{' and values' if values else ''} of batch size {batch}")
            self._fits.add(batch)

    def _unaliased(self, targets: list[np.ndarray], feeds: dict[int, np.ndarray]) -> list[np.ndarray | None]:
        """The `out=` arrays native kernels may write directly; None for one that overlaps a feed, a
        parameter, optimizer state or an earlier `out=` array (kernels would read what they are
        overwriting): it receives a copy after the step instead, as with the reference backend."""
        graph = self.program.graph
        read = list(feeds.values()) + [graph.params[name] for name in self.params] + list(self.state.values())
        direct: list[np.ndarray | None] = []
        for i, target in enumerate(targets):
            others = read + targets[:i]
            direct.append(None if any(np.may_share_memory(target, other) for other in others) else target)
        return direct

    def _recycled_outputs(self, batch: int | None, first: int) -> list[np.ndarray]:
        """Fresh-looking output arrays for this call. An array returned earlier is reused once
        nothing outside this pool refers to it any more (its reference count says so): new memory
        costs a page fault per 4 KiB, which for large outputs costs more than computing them."""
        targets = []
        for i, node in enumerate(self.program.outputs[first:]):
            shape = concrete_shape(node.shape, batch or 0)
            pool = self._output_pool.setdefault(i, [])
            free = [a for a in pool if a.shape == shape and sys.getrefcount(a) <= _POOL_REFS]
            if free:
                targets.append(free[0])
                continue
            array = np.empty(shape, node.dtype)
            pool[:] = pool[-(_POOL_SIZE - 1) :] + [array]
            targets.append(array)
        return targets

    def _deliver(self, results: list[np.ndarray], targets: list | None) -> list[np.ndarray]:
        """Copies of the outputs (the executor's arrays are reused by the next call), or the
        caller's `out` arrays, filled (the native executor may have written them directly)."""
        if targets is None:
            return [np.array(r, copy=True) for r in results]
        if len(targets) != len(results):
            raise GraphError(f"out= has {len(targets)} arrays for {len(results)} outputs")
        for target, result in zip(targets, results):
            if target.shape != result.shape or target.dtype != result.dtype:
                raise ShapeError(
                    f"out= array is {target.shape} {target.dtype}, the output is {result.shape} {result.dtype}"
                )
            if result is not target:
                np.copyto(target, result)
        return targets

    @property
    def kernel_count(self) -> int:
        """Native kernels in the compiled step (0 for the reference backend)."""
        return len(self.program.schedule.kernels) if self.program.schedule else 0

    def ir(self) -> str:
        """The LLVM IR of the whole step (native backend)."""
        return self._executor.ir()

    def asm(self) -> str:
        """The optimized machine code of the whole step, as assembly text (native backend)."""
        return self._executor.asm()

    @property
    def buffers(self) -> list[str]:
        """The graph's state buffers this function reads or updates."""
        return [n.name for n in self.program.leaves(BufferOp)]

    def save(self, path: str | os.PathLike) -> None:
        """Parameters, state buffers, optimizer state and step count, written atomically (never mid-step)."""
        graph = self.program.graph
        with self._lock:
            params = {name: graph.params[name] for name in self.params}
            buffers = {name: graph.state[name] for name in self.buffers}
            checkpoint.save(path, params, self.state, self.step_count, buffers)

    def load(self, path: str | os.PathLike) -> None:
        """Restore a checkpoint; on any mismatch raise and change nothing."""
        loaded = checkpoint.read(path)
        graph = self.program.graph
        params = {name: graph.params[name] for name in self.params}
        buffers = {name: graph.state[name] for name in self.buffers}
        checkpoint.check_compatible("parameter", params, _only(loaded.params, params, self.trains), path)
        checkpoint.check_compatible("state buffer", buffers, _only(loaded.buffers, buffers, self.trains), path)
        if self.trains:
            checkpoint.check_compatible("optimizer state", self.state, loaded.state, path)
        with self._lock:  # never mid-step
            for current, stored in ((params, loaded.params), (buffers, loaded.buffers)):
                for name, value in current.items():
                    np.copyto(value, stored[name])
            if self.trains:
                for key, value in self.state.items():
                    np.copyto(value, loaded.state[key])
                self.step_count = loaded.step


def _only(loaded: dict, current: dict, strict: bool) -> dict:
    """A predictor may load a bigger training checkpoint; a train step must match exactly."""
    return loaded if strict else {k: v for k, v in loaded.items() if k in current}


def compile_step(
    graph: Graph,
    loss: Node | None = None,
    outputs: Node | Sequence[Node] | None = None,
    optimizer: Any = None,
    params: Sequence[Node | str] | None = None,
    backend: str | None = None,
    check_finite: bool = False,
    gradient_passes: Sequence[tuple[str, Pass]] = (),
    training: bool | None = None,
) -> CompiledFunction:
    """A compiled function on the named backend (default: DRUG_BACKEND, else "llvm");
    `gradient_passes` as in compiler.build.build_program."""
    chosen = get_backend(backend or DEFAULT_BACKEND)
    program = build_program(graph, loss, outputs, optimizer, params, training, chosen.passes(), gradient_passes)
    return CompiledFunction(program, chosen, check_finite)

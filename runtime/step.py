"""Compiled functions as users call them: feeds in, outputs out, state kept between calls."""

from __future__ import annotations

import atexit
import math
import os
import sys
import time
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backends import Backend, get_backend
from ..compiler.build import build_program
from ..compiler.interpret import live_array
from ..compiler.optimizers import LR_KEY
from ..compiler.passes import Pass
from ..core import memory
from ..core.errors import GraphError, ShapeError
from ..core.graph import Graph
from ..core.leaves import BufferOp, InputOp, ParameterOp
from ..core.node import Node
from ..core.program import Program
from ..core.types import concrete_shape, format_shape
from . import checkpoint, visualize
from .feeds import bind_feeds
from .locks import graph_lock
from .profile import Profile, build_profile

_POOL_SIZE = 3  # output arrays kept per output: the caller usually holds the previous one
_POOL_REFS = 3  # sys.getrefcount of a pooled array nobody else holds: pool list, comprehension, argument
DEFAULT_BACKEND = os.environ.get("DRUG_BACKEND", "llvm")
PROFILE_ENV = "DRUG_PROFILE"  # 1: profile every native step, print the tables at exit; *.json: also a trace


class CompiledFunction:
    """One compiled graph function, made by `Graph.compile`. Training calls return the loss as a
    float and update the graph's parameters in place; inference calls return the outputs (a
    tuple if several).

    Attributes:
        program: The compiled program (nodes, kernels, schedule) after every pass.
        backend: The backend's name ("llvm" or "numpy").
        inputs: The input nodes a call must feed, by name.
        step_count: Train steps taken (saved in checkpoints).
        state: Optimizer state buffers (moments, bias-correction powers, the learning rate) by key.
    """

    def __init__(self, program: Program, backend: Backend, check_finite: bool, debug_numerics: bool = False):
        self.program = program
        self.backend = backend.name
        self.check_finite = check_finite
        self.debug_numerics = debug_numerics
        self.inputs = program.leaves(InputOp)
        self.step_count = 0
        self.state: dict[str, np.ndarray] = program.initial_state()
        self._n_user_outputs = len(program.outputs) - (program.loss is not None)
        self._lock = graph_lock(program.graph)  # the graph's compiled functions share its parameters
        self._output_pool: dict[int, list[np.ndarray]] = {}
        self._fits: set[int] = set()  # batch sizes whose memory was checked
        self._backend = backend
        self._lr = program.optimizer.lr if program.optimizer is not None else None  # as the user gave it
        self._profiler = None  # the profiling executor, built on the first profile()
        if debug_numerics:
            self._executor = backend.instrumented_executor(program, self.state, "numerics")
        elif os.environ.get(PROFILE_ENV, "0") not in ("", "0") and backend.name == "llvm":
            self._executor = self._profiler = backend.instrumented_executor(program, self.state, "profile")
            _profiled_at_exit.add(self)
        else:
            self._executor = backend.executor(program, self.state)

    @property
    def kind(self) -> str:
        """ "train step" (loss and optimizer), "evaluator" (a loss, no optimizer) or "predictor"."""
        if self.trains:
            return "train step"
        return "evaluator" if self.program.loss is not None else "predictor"

    def __repr__(self) -> str:
        inputs = ", ".join(f"{n.name} {format_shape(n.shape)} {n.dtype}" for n in self.inputs)
        outputs = ", ".join(f"{n.label} {format_shape(n.shape)}" for n in self.program.outputs)
        parts = [f"backend={self.backend!r}", f"inputs=[{inputs}]", f"outputs=[{outputs}]"]
        if self.program.optimizer is not None:
            parts.append(f"optimizer={self.program.optimizer!r}")
            parts.append(f"trains={len(self.program.wrt)} parameters")
        if self.program.schedule is not None:
            parts.append(f"kernels={self.kernel_count}")
        if self.debug_numerics:
            parts.append("debug_numerics=True")
        return f"<CompiledFunction {self.kind}: {', '.join(parts)}>"

    @property
    def trains(self) -> bool:
        """Whether a call updates parameters (a train step)."""
        return bool(self.program.updates)

    @property
    def params(self) -> list[str]:
        """The names of the parameters the function reads (and a train step updates)."""
        return [n.name for n in self.program.leaves(ParameterOp)]

    @property
    def lr(self) -> float:
        """The optimizer's learning rate: the value last set (the step computes with it rounded to
        the graph's dtype); assign to it between steps to follow a schedule.

        Raises:
            GraphError: The function has no optimizer.
        """
        buffer = self._lr_buffer()
        if self._lr is not None and buffer == buffer.dtype.type(self._lr):
            return self._lr
        return float(buffer)  # changed behind our back (a checkpoint was loaded)

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr_buffer()[...] = value
        self._lr = float(value)

    def _lr_buffer(self) -> np.ndarray:
        if LR_KEY not in self.state:
            raise GraphError("this compiled function has no optimizer, so no learning rate")
        return self.state[LR_KEY]

    def __call__(self, feeds: dict[str, Any] | None = None, /, *, out: Any = None, **named: Any) -> Any:
        """Run one step: a train step returns the loss (a float) after updating the parameters,
        an evaluator the loss, a predictor its output array (a tuple if several).

        Args:
            feeds: Arrays by input name, as a dict (for inputs named like keywords, e.g. "out").
            out: An array, or a tuple of arrays, that receives the outputs without allocating
                (its shape and dtype must match).
            **named: Arrays by input name: `train(x=images, y=labels)`. Shapes and dtypes must
                match the inputs; the batch (None) dimension must be the same in every feed.

        Returns:
            The loss as a float (train step, evaluator; `(loss, *outputs)` when `outputs` were
                compiled too), else the output array or a tuple of them.

        Raises:
            GraphError: Unknown or missing feeds; NaN/Inf in a feed with `check_finite=True`.
            ShapeError: A feed of the wrong shape, a label or id out of range (nothing is updated).
            DTypeError: A feed of the wrong dtype.
            NonFiniteError: With `debug_numerics=True`, a node produced NaN or Inf (nothing is updated).

        Example:
            ```python
            loss = train(x=images[:128], y=labels[:128])   # one train step
            logits = predict(x=images[:10])                # (10, 10)
            predict(x=images[:10], out=buffer)             # into your own array
            ```
        """
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

    def to_dot(self) -> str:
        """Graphviz source (DOT) of the compiled program: one cluster per native kernel, holding
        the nodes fused into it, the backward pass and optimizer update included. Render it with
        `dg.render_dot(source, "step.svg")` (needs the `graphviz` package and program)."""
        return visualize.program_dot(self.program, title=f"{self.kind} ({self.backend})")

    def profile(
        self,
        n_steps: int = 20,
        feeds: dict[str, Any] | None = None,
        /,
        *,
        warmup: int = 2,
        trace: str | os.PathLike | None = None,
        **named: Any,
    ) -> Profile:
        """Time each native kernel over `n_steps` calls with these feeds, in a profiling build
        of the same step (a clock read around each kernel call). Parameters, optimizer state and
        the step count are restored afterwards: profiling does not train.

        Args:
            n_steps: Calls to time (after `warmup` untimed ones).
            feeds: Arrays by input name, as for a call.
            warmup: Calls before timing starts.
            trace: Also write a Chrome / Perfetto trace (JSON) of the timed steps to this path.
            **named: Arrays by input name.

        Returns:
            A `Profile`: `print(profile)` shows the kernels, slowest first, with what made them
                (layers, gradients, updates), median time, share and GFLOP/s (GEMMs, convolutions)
                or GB/s.

        Raises:
            GraphError: The backend cannot profile (the "numpy" reference backend).

        Example:
            ```python
            print(train.profile(20, x=images[:128], y=labels[:128]))
            ```
        """
        if n_steps < 1:
            raise GraphError(f"profile needs at least one step, got n_steps={n_steps}")
        arrays, batch = bind_feeds(self.inputs, {**(feeds or {}), **named}, self.check_finite)
        if self.trains and batch == 0:
            raise ShapeError("a train step needs at least one example, got a batch of size 0")
        self._check_before_running(batch, 1 if self.program.loss is not None else 0, None)
        if self._profiler is None:
            self._profiler = self._backend.instrumented_executor(self.program, self.state, "profile")
        profiler = self._profiler
        walls = []
        with self._lock:
            saved = self._updated_buffers()
            copies = [array.copy() for array in saved]
            try:
                for _ in range(warmup + n_steps):
                    start = time.perf_counter()
                    profiler.run(arrays, batch)
                    walls.append(time.perf_counter() - start)
            finally:
                for array, copy in zip(saved, copies):
                    np.copyto(array, copy)
            spans = profiler.spans[-n_steps:]
            del profiler.spans[-(warmup + n_steps) :]  # not training steps: DRUG_PROFILE's report skips them
        result = build_profile(f"profile of {self.kind}", self.program, spans, batch, float(np.median(walls[warmup:])))
        if trace is not None:
            result.write_trace(trace)
        return result

    def _updated_buffers(self) -> list[np.ndarray]:
        """The parameter, state-buffer and optimizer-state arrays a step writes."""
        return [live_array(self.program, self.state, leaf) for leaf, _ in self.program.updates]

    def asm(self) -> str:
        """The optimized machine code of the whole step, as assembly text (native backend)."""
        return self._executor.asm()

    @property
    def buffers(self) -> list[str]:
        """The graph's state buffers this function reads or updates."""
        return [n.name for n in self.program.leaves(BufferOp)]

    def save(self, path: str | os.PathLike) -> None:
        """Write the parameters, the state buffers, the optimizer state and the step count to
        `path` (an .npz), atomically: a crash mid-save leaves the previous file loadable; never
        mid-step.

        Args:
            path: The file to write (replaced if it exists).

        Example:
            ```python
            train.save("mnist.npz")
            train.load("mnist.npz")     # the same or a freshly compiled step of the same graph
            predict.load("mnist.npz")   # a predictor takes the parameters only
            ```
        """
        graph = self.program.graph
        with self._lock:
            params = {name: graph.params[name] for name in self.params}
            buffers = {name: graph.state[name] for name in self.buffers}
            checkpoint.save(path, params, self.state, self.step_count, buffers)

    def load(self, path: str | os.PathLike) -> None:
        """Restore a checkpoint written by `save` (or by an AOT library); on any mismatch raise
        and change nothing. A predictor takes the parameters of a train step's checkpoint.

        Args:
            path: The .npz file.

        Raises:
            FileNotFoundError: There is no file at `path`.
            GraphError: The file is damaged or not a checkpoint, or its parameters or optimizer
                state do not fit this function (the message names each difference).

        Example:
            ```python
            train.load("mnist.npz")     # parameters, optimizer state, step count
            ```
        """
        loaded = checkpoint.read(path)
        graph = self.program.graph
        params = {name: graph.params[name] for name in self.params}
        buffers = {name: graph.state[name] for name in self.buffers}
        checkpoint.check_compatible("parameter", params, _only(loaded.params, params, self.trains), path)
        checkpoint.check_compatible("state buffer", buffers, _only(loaded.buffers, buffers, self.trains), path)
        if self.trains:
            _check_optimizer(self.program.optimizer, self.state, loaded.state, path)
            checkpoint.check_compatible("optimizer state", self.state, loaded.state, path)
        with self._lock:  # never mid-step
            for current, stored in ((params, loaded.params), (buffers, loaded.buffers)):
                for name, value in current.items():
                    np.copyto(value, stored[name])
            if self.trains:
                for key, value in self.state.items():
                    np.copyto(value, loaded.state[key])
                self.step_count = loaded.step


def _state_roles(state: dict) -> set[str]:
    """What kinds of optimizer state a set of buffers holds ("momentum", "magnitude", ...)."""
    return {key.rsplit("/", 1)[-1] for key in state if key != LR_KEY}


def _check_optimizer(optimizer: Any, current: dict, loaded: dict, path) -> None:
    """A checkpoint of another optimizer (Adam's moments loaded into an SGD step) is refused
    with what differs, before the buffer-by-buffer comparison lists every key."""
    have, want = _state_roles(loaded), _state_roles(current)
    if have == want:
        return
    kept = ", ".join(sorted(have)) or "no state"
    needed = ", ".join(sorted(want)) or "no state"
    missing = ", ".join(sorted(want - have))
    extra = ", ".join(sorted(have - want))
    diff = "; ".join(p for p in (f"missing {missing}" if missing else "", f"extra {extra}" if extra else "") if p)
    raise GraphError(
        f"checkpoint {path} was saved by a step with another optimizer: the file holds optimizer state "
        f"{kept}, this step's {optimizer!r} keeps {needed} ({diff}); nothing was loaded. Compile with the "
        "optimizer the checkpoint was trained with, or load it into a predictor (parameters only)"
    )


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
    *,
    debug_numerics: bool = False,
) -> CompiledFunction:
    """A compiled function on the named backend (default: DRUG_BACKEND, else "llvm");
    `gradient_passes` as in compiler.build.build_program."""
    chosen = get_backend(backend or DEFAULT_BACKEND)
    program = build_program(graph, loss, outputs, optimizer, params, training, chosen.passes(), gradient_passes)
    return CompiledFunction(program, chosen, check_finite, debug_numerics)


# DRUG_PROFILE=1: the compiled functions whose every step is profiled, reported at exit.
_profiled_at_exit: weakref.WeakSet[CompiledFunction] = weakref.WeakSet()


@atexit.register
def _report_profiles() -> None:
    setting = os.environ.get(PROFILE_ENV, "")
    for number, function in enumerate(list(_profiled_at_exit)):
        profiler = function._profiler
        if profiler is None or not profiler.spans:
            continue
        title = f"DRUG_PROFILE: {function.kind}"
        result = build_profile(title, function.program, profiler.spans, profiler.last_batch)
        print(result.table(top=15), file=sys.stderr)
        if setting.endswith(".json"):
            path = setting if number == 0 else setting[: -len(".json")] + f".{number}.json"
            result.write_trace(path)
            print(f"DRUG_PROFILE: trace written to {path}", file=sys.stderr)

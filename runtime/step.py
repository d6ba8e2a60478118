"""Compiled functions as users call them: feeds in, outputs out, state kept between calls."""

from __future__ import annotations

import atexit
import math
import numbers
import os
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..backends import Backend, get_backend
from ..compiler.build import build_program
from ..compiler.freeze import frozen
from ..compiler.interpret import live_array
from ..compiler.optimizers import LR_KEY, STEP_KEY
from ..compiler.passes import Pass
from ..compiler.schedules import Schedule
from ..core import memory
from ..core.arrays import HostArrays
from ..core.errors import GraphError, ShapeError
from ..core.graph import Graph
from ..core.leaves import BufferOp, InputOp, ParameterOp, StateOp
from ..core.node import Node
from ..core.program import Program
from ..core.types import concrete_shape, format_shape
from . import checkpoint, visualize
from .feeds import FeedBinder, bind_feeds
from .interrupts import deferred_interrupts
from .locks import graph_lock
from .profile import Profile, build_profile

_POOL_SIZE = 3  # output arrays kept per output: the caller usually holds the previous one
_POOL_REFS = 3  # sys.getrefcount of a pooled array nobody else holds: pool list, loop variable, argument
_POOL_BATCHES = 16  # batch sizes whose output shapes are kept
_POOL_MIN_BYTES = 1 << 16  # smaller outputs are fresh copies: allocating them costs no page faults
DEFAULT_BACKEND = os.environ.get("DRUG_BACKEND", "llvm")
PROFILE_ENV = "DRUG_PROFILE"  # 1: profile every native step, print the tables at exit; *.json: also a trace


class CompiledFunction:
    """One compiled graph function, made by `Graph.compile`. Training calls return the loss as a
    float and update the graph's parameters in place; inference calls return the outputs (a
    tuple if several).

    Attributes:
        program: The compiled program (nodes, kernels, schedule) after every pass.
        backend: The backend's name ("llvm", "numpy" or "opencl").
        device: What the steps run on: the backend's name, or for "opencl" also the device's.
        inputs: The input nodes a call must feed, by name.
        step_count: Train steps taken (saved in checkpoints).
        state: Optimizer state buffers (moments, bias-correction powers, the learning rate) by key.
    """

    def __init__(
        self, program: Program, backend: Backend, check_finite: bool, debug_numerics: bool = False, frozen: bool = False
    ):
        self.program = program
        self.backend = backend.name
        self.device = backend.label  # what the steps run on (a device backend names its device)
        self.check_finite = check_finite
        self.debug_numerics = debug_numerics
        self.frozen = frozen  # a predictor of a snapshot of the parameters (compile(freeze=True))
        self.inputs = program.leaves(InputOp)
        self._bind_feeds = FeedBinder(self.inputs)
        self.step_count = 0
        # optimizer state: on a device backend its newest values live on the device (core/arrays.py)
        self.state = HostArrays(program.initial_state())
        # the named host arrays a step reads and those it writes: the executor keeps them current
        graph, updated = program.graph, [leaf for leaf, _ in program.updates]
        reads = [(graph.params, self.params), (graph.state, self.buffers), (self.state, list(self.state))]
        writes = [
            (graph.params, [leaf.name for leaf in updated if isinstance(leaf.op, ParameterOp)]),
            (graph.state, [leaf.name for leaf in updated if isinstance(leaf.op, BufferOp)]),
            (self.state, [leaf.op.key_name for leaf in updated if isinstance(leaf.op, StateOp)]),
        ]
        self._reads = [(arrays, names) for arrays, names in reads if names]
        self._writes = [(arrays, names) for arrays, names in writes if names]
        self._first = 1 if program.loss is not None else 0  # the loss comes first among the results
        self._trains = self.trains
        self._n_user_outputs = len(program.outputs) - (program.loss is not None)
        self._output_pool: dict[int, list[np.ndarray]] = {}
        self._output_shapes: dict[int | None, list[tuple[int, ...] | None]] = {}  # None: not pooled
        self._fits: set[int] = set()  # batch sizes whose memory was checked
        self._backend = backend
        self._lr = program.optimizer.lr if program.optimizer is not None else None  # as the user gave it
        self._profiler = None  # the profiling executor, built on the first profile()
        self._undefined_when_empty = _reductions_without_identity(program)
        if debug_numerics:
            self._executor = backend.instrumented_executor(program, self.state, "numerics")
        elif os.environ.get(PROFILE_ENV, "0") not in ("", "0") and backend.name == "llvm":
            self._executor = self._profiler = backend.instrumented_executor(program, self.state, "profile")
            _profiled_at_exit.add(self)
        else:
            self._executor = backend.executor(program, self.state)
        lock = graph_lock(program.graph)  # the graph's compiled functions share its parameters
        self._turn = lock.turn(self._executor.runs_python)
        self._quiet_turn = lock.turn(False)  # save and load run no step

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
        the graph's dtype; assign to it between steps to change it), or with a schedule
        (dg.schedules) the rate the next step uses, the schedule's value at the step counter.

        Raises:
            GraphError: The function has no optimizer; (assigning) the rate follows a schedule.
        """
        schedule = self._schedule()
        if schedule is not None:
            return float(schedule(float(self.state.current(STEP_KEY))))
        self._check_lr()
        buffer = self.state.current(LR_KEY)
        if self._lr is not None and buffer == buffer.dtype.type(self._lr):
            return self._lr
        return float(buffer)  # changed behind our back (a checkpoint was loaded)

    @lr.setter
    def lr(self, value: float) -> None:
        if self._schedule() is not None:
            raise GraphError("the learning rate follows a schedule (dg.schedules); it cannot be assigned")
        self._check_lr()
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
            raise GraphError(f"the learning rate must be a finite non-negative number, got {value!r}")
        dtype = self.state.current(LR_KEY).dtype
        with np.errstate(over="ignore"):
            fits = np.isfinite(dtype.type(value))
        if not fits:
            raise GraphError(f"the learning rate {value!r} does not fit in {dtype}")
        with self._quiet_turn:  # not in the middle of a step
            self.state[LR_KEY][...] = value  # the host copy, which becomes the newest
        self._lr = value

    def _schedule(self) -> Schedule | None:
        rate = self.program.optimizer.lr if self.program.optimizer is not None else None
        return rate if isinstance(rate, Schedule) else None

    def _check_lr(self) -> None:
        if LR_KEY not in self.state:
            raise GraphError("this compiled function has no optimizer, so no learning rate")

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
        feeds = {**feeds, **named} if feeds and named else feeds or named
        if out is None and self._executor.runs_plain and not self.check_finite:
            with self._turn:  # compiled functions of one graph take turns (see locks.py)
                results = self._step(self._executor.run_plain, feeds)
                if results is not None:
                    return self._returned(results, None)
        arrays, batch = self._bind_feeds(feeds, self.check_finite)
        first, executor = self._first, self._executor
        targets = None if out is None else [out] if isinstance(out, np.ndarray) else list(out)
        if self._trains and batch == 0:
            raise ShapeError("a train step needs at least one example, got a batch of size 0; nothing was updated")
        self._check_before_running(batch, first, targets)
        with self._turn:
            if executor.fills_outputs:
                if targets is None:
                    targets = direct = self._recycled_outputs(batch, first)
                else:
                    direct = self._unaliased(targets, arrays)
                out = [None] * first + direct if first else direct
            else:
                out = None
            return self._returned(self._step(executor.run, arrays, batch, out), targets)

    def _step(self, run: Callable[..., list[np.ndarray] | None], *args: Any) -> list[np.ndarray] | None:
        """`run(*args)` (an executor's run, or its plain run, which may decline: None) between the
        executor's bookkeeping of what the step reads and writes; a train step's is all or nothing:
        a Ctrl-C waits until the step is applied and counted."""
        executor = self._executor
        executor.before_step(self._reads)
        if not self._trains:
            results = run(*args)
            if results is not None:
                executor.after_step(self._writes)
            return results
        with deferred_interrupts():
            results = run(*args)
            if results is not None:
                executor.after_step(self._writes)
                self.step_count += 1
            return results

    def _returned(self, results: list[np.ndarray], targets: list | None) -> Any:
        """What a call returns: the loss as a float, the outputs (in `targets` if given), or both."""
        first = self._first
        values = self._deliver(results[first:] if first else results, targets)
        if not first:
            return values[0] if len(values) == 1 else tuple(values)
        loss = float(results[0])
        return (loss, *values) if self._n_user_outputs else loss

    def _check_before_running(self, batch: int | None, first: int, targets: list | None) -> None:
        """Refuse `out=` arrays that cannot take the outputs and batches too big for the machine
        now, before the step changes anything."""
        if batch == 0 and self._undefined_when_empty:
            node = self._undefined_when_empty[0]
            raise ShapeError(
                f"node {node.label} (op '{node.op.name}') reduces over the batch axis, which is empty (batch "
                f"size 0): the {node.op.name} of no values is undefined; nothing was run"
            )
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
        parameter, a state buffer, optimizer state or an earlier `out=` array (kernels would read what
        they are overwriting): it receives a copy after the step instead, as with the reference backend."""
        read = list(feeds.values()) + [arrays.storage(name) for arrays, names in self._reads for name in names]
        direct: list[np.ndarray | None] = []
        for i, target in enumerate(targets):
            others = read + targets[:i]
            direct.append(None if any(np.may_share_memory(target, other) for other in others) else target)
        return direct

    def _recycled_outputs(self, batch: int | None, first: int) -> list[np.ndarray | None]:
        """Fresh-looking arrays for this call's large outputs (None for a small one: a copy made
        after the step costs less). An array returned earlier is reused once nothing outside this
        pool refers to it any more (its reference count says so): new memory costs a page fault
        per 4 KiB, which for large outputs costs more than computing them."""
        shapes = self._output_shapes.get(batch)
        if shapes is None:
            if len(self._output_shapes) >= _POOL_BATCHES:
                self._output_shapes.clear()
            outputs = self.program.outputs[first:]
            shapes = [concrete_shape(n.shape, batch or 0) for n in outputs]
            big = [math.prod(s) * n.dtype.itemsize >= _POOL_MIN_BYTES for s, n in zip(shapes, outputs)]
            shapes = [s if pooled else None for s, pooled in zip(shapes, big)]
            self._output_shapes[batch] = shapes
        targets: list[np.ndarray | None] = []
        for i, shape in enumerate(shapes):
            if shape is None:
                targets.append(None)
                continue
            pool = self._output_pool.setdefault(i, [])
            for array in pool:
                if array.shape == shape and sys.getrefcount(array) <= _POOL_REFS:
                    targets.append(array)
                    break
            else:
                array = np.empty(shape, self.program.outputs[first + i].dtype)
                pool[:] = pool[-(_POOL_SIZE - 1) :] + [array]
                targets.append(array)
        return targets

    def _deliver(self, results: list[np.ndarray], targets: list | None) -> list[np.ndarray]:
        """The outputs in the `targets` arrays (the caller's `out`, or recycled ones), filled unless
        the native executor wrote them directly; copies of the others (the executor's arrays are
        reused by the next call)."""
        if targets is None:
            targets = [None] * len(results)
        elif len(targets) != len(results):
            raise GraphError(f"out= has {len(targets)} arrays for {len(results)} outputs")
        values = []
        for target, result in zip(targets, results):
            if target is None:
                values.append(result.copy())
                continue
            if target.shape != result.shape or target.dtype != result.dtype:
                raise ShapeError(
                    f"out= array is {target.shape} {target.dtype}, the output is {result.shape} {result.dtype}"
                )
            if result is not target:
                np.copyto(target, result)
            values.append(target)
        return values

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
        with self._turn:  # a step: it takes its turn like a call
            profiler.before_step(self._reads)  # a device backend may hold newer values
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
                profiler.after_step(self._writes)
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
        self._refuse_if_frozen("save")
        graph = self.program.graph
        with self._quiet_turn:
            params = {name: graph.params.current(name) for name in self.params}
            buffers = {name: graph.state.current(name) for name in self.buffers}
            state = {key: self.state.current(key) for key in self.state}
            checkpoint.save(path, params, state, self.step_count, buffers)

    def _refuse_if_frozen(self, what: str) -> None:
        """A frozen predictor's parameters are constants of its program: a checkpoint of it would
        hold nothing, and loading one would change nothing."""
        if self.frozen:
            raise GraphError(
                f"cannot {what} a checkpoint with a frozen predictor (freeze=True): it holds the parameters as "
                "constants; use a function of the original graph compiled without freeze, then freeze again"
            )

    def load(self, path: str | os.PathLike) -> None:
        """Restore a checkpoint written by `save` (or by an AOT library); on any mismatch raise
        and change nothing. A predictor takes the parameters of a train step's checkpoint.
        Everything is read and checked first, then copied in at once (a Ctrl-C meanwhile waits
        until the copy is done).

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
        self._refuse_if_frozen("load")
        graph = self.program.graph
        wanted = {f"param/{name}": graph.params[name] for name in self.params}
        wanted |= {f"buffer/{name}": graph.state[name] for name in self.buffers}
        if self.trains:
            wanted |= {f"state/{key}": array for key, array in self.state.items()}
        optimizer = self.program.optimizer if self.trains else None
        staged, step = checkpoint.read(path, wanted, exact=self.trains, optimizer=optimizer)
        with self._quiet_turn, deferred_interrupts():  # never mid-step, never half-loaded
            for key, value in staged.items():
                np.copyto(wanted[key], value)
            if self.trains:
                self.step_count = step


def _reductions_without_identity(program: Program) -> list[Node]:
    """Nodes taking the max or min over an axis that is the batch: undefined for a batch of 0."""
    found = []
    for node in program.nodes:
        if node.op.combine in ("max", "min") and node.inputs:
            shape = node.inputs[0].shape
            if any(shape[axis] is None for axis in node.op.reduced_axes(shape)):
                found.append(node)
    return found


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
    freeze: bool = False,
) -> CompiledFunction:
    """A compiled function on the named backend (default: DRUG_BACKEND, else "llvm");
    `gradient_passes` as in compiler.build.build_program; `freeze`: a predictor of a snapshot of
    the parameters (compiler/freeze.py)."""
    chosen = get_backend(backend or DEFAULT_BACKEND)
    if freeze:
        if loss is not None or optimizer is not None or training:
            raise GraphError(
                "freeze=True compiles a predictor in inference mode (outputs only): it reads the parameters' values "
                "of now as constants, which a loss, an optimizer or training-mode ops would not see change"
            )
        if outputs is not None:
            graph, copies = frozen(graph, [outputs] if isinstance(outputs, Node) else list(outputs))
            outputs = copies[0] if isinstance(outputs, Node) else copies
    program = build_program(
        graph, loss, outputs, optimizer, params, training, chosen.passes(), gradient_passes, chosen.program_cache()
    )
    return CompiledFunction(program, chosen, check_finite, debug_numerics, frozen=freeze)


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

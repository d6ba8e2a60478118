"""A train step replicated on every rank of an MPI communicator (drug.distributed.compile).

The compiled step already averages gradients across ranks (compiler/allreduce.py); this wrapper
keeps the replicas interchangeable around it: checkpoints are written and read by rank 0 alone
and broadcast, and an error in one rank's step ends the whole job instead of leaving the other
ranks waiting forever in an allreduce that rank will never join."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from ..core.errors import GraphError
from ..ops.collective import AllreduceSum
from .step import CompiledFunction


class DataParallelStep:
    """Call it like the CompiledFunction it wraps; it returns this rank's local loss
    (`world.average(loss)` is the mean over ranks). Other attributes (`ir()`, `program`,
    `kernel_count`, ...) are the wrapped step's."""

    def __init__(self, step: CompiledFunction, world: Any):
        self.step = step
        self.world = world

    def __call__(self, feeds: dict[str, Any] | None = None, /, **named: Any):
        try:
            return self.step(feeds, **named)
        except Exception as error:
            if self.world.size == 1:
                raise
            # the other ranks are (or soon will be) inside this step's allreduce: no rank can go on
            self.world.abort("in a train step", error)
            raise  # not reached: MPI_Abort does not return

    def __getattr__(self, name: str) -> Any:
        return getattr(self.step, name)

    def __repr__(self) -> str:
        return f"<DataParallelStep rank {self.world.rank} of {self.world.size}: {self.step!r}>"

    @property
    def lr(self) -> float:
        return self.step.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.step.lr = value

    @property
    def step_count(self) -> int:
        return self.step.step_count

    @step_count.setter
    def step_count(self, value: int) -> None:
        self.step.step_count = value

    def save(self, path: str | os.PathLike) -> None:
        """Rank 0 writes the checkpoint; every rank must call this (collective) and returns once
        the file is complete, or raises the same error as rank 0 if writing failed there."""
        self._on_root(lambda: self.step.save(path), f"save checkpoint {path}")

    def load(self, path: str | os.PathLike) -> None:
        """Rank 0 reads and checks the checkpoint and broadcasts it (the file need not exist on
        the other ranks' machines); every rank must call this. On any mismatch all ranks raise
        and nothing changes."""
        self._on_root(lambda: self.step.load(path), f"load checkpoint {path}")
        comm = self.world.comm
        for array in self._replicated_arrays():
            comm.Bcast(array, root=0)
        self.step.step_count = comm.bcast(self.step.step_count, root=0)

    def _replicated_arrays(self) -> list[np.ndarray]:
        graph = self.step.program.graph
        params = [graph.params[name] for name in sorted(self.step.params)]
        buffers = [graph.state[name] for name in sorted(self.step.buffers)]
        return params + buffers + [self.step.state[key] for key in sorted(self.step.state)]

    def _on_root(self, action: Callable[[], None], what: str) -> None:
        error: Exception | None = None
        if self.world.rank == 0:
            try:
                action()
            except Exception as caught:  # noqa: BLE001 - every rank re-raises it below
                error = caught
        message = self.world.comm.bcast(None if error is None else f"{type(error).__name__}: {error}", root=0)
        if error is not None:
            raise error
        if message is not None:
            raise GraphError(f"rank 0 could not {what}: {message}")


def broadcast_parameters(graph: Any, comm: Any) -> None:
    """Rank 0's parameter values into every rank's `graph.params` arrays, in place (the live
    buffers every compiled function of the graph reads)."""
    for name in sorted(graph.params):
        array = graph.params[name]
        if not array.flags.c_contiguous or not array.flags.writeable:
            raise GraphError(f"parameter '{name}' is not a writable contiguous array; cannot broadcast it")
        comm.Bcast(array, root=0)


def signature(graph: Any, step: CompiledFunction) -> dict[str, Any]:
    """What must be equal on every rank: the parameters and the sequence of allreduces the step
    runs (sizes and dtypes, in execution order). Ranks running different sequences would pair
    unrelated buffers in their allreduces or wait forever."""
    params = {name: (graph.params[name].shape, str(graph.params[name].dtype)) for name in sorted(graph.params)}
    program = step.program
    if program.schedule is not None:
        nodes = [n for kernel in program.schedule.kernels for n in kernel.nodes]
    else:
        nodes = list(program.nodes)
    collectives = [(n.shape, str(n.dtype)) for n in nodes if isinstance(n.op, AllreduceSum)]
    return {"parameter": params, "allreduce": dict(enumerate(collectives))}


def check_same_everywhere(comm: Any, value: dict[str, dict], what: str) -> None:
    """Raise on every rank (never on some only, which would hang the others) unless all ranks
    hold the same `value`: {kind: {name: description}}; the error names the first difference."""
    values = comm.allgather(value)
    for rank, other in enumerate(values):
        if other != values[0]:
            raise GraphError(f"rank {rank} and rank 0 differ in their {what}: {_difference(values[0], other, rank)}")


def _difference(root: dict[str, dict], other: dict[str, dict], rank: int) -> str:
    for kind in root:
        mine, theirs = root[kind], other.get(kind, {})
        for name in sorted(set(mine) | set(theirs), key=str):
            here, there = mine.get(name, "missing"), theirs.get(name, "missing")
            if here != there:
                return f"{kind} {name!r} is {there} on rank {rank}, {here} on rank 0"
    return "(different structure)"


def report_and_abort(comm: Any, where: str, error: BaseException | None) -> None:
    """Print the error's traceback and a line naming this rank, then MPI_Abort: mpirun ends
    every rank and exits with code 1."""
    rank, size = comm.Get_rank(), comm.Get_size()
    if error is not None:
        print("".join(traceback.format_exception(error)), end="", file=sys.stderr)
    what = f": {type(error).__name__}: {error}" if error is not None else ""
    print(f"drug.distributed: rank {rank} of {size} failed {where}{what}", file=sys.stderr)
    print(f"drug.distributed: aborting all {size} ranks (MPI_Abort)", file=sys.stderr, flush=True)
    sys.stdout.flush()
    comm.Abort(1)

"""Data-parallel training over MPI (mpi4py), in the manner of Horovod and PyTorch DDP.

    dist = dg.distributed.init()                 # rank, size, comm; a failing rank ends the job
    train = dg.distributed.compile(g, loss=loss, optimizer=dg.Adam(1e-3))
    for epoch in range(epochs):
        for idx in dist.minibatches(len(x), global_batch, seed=0, epoch=epoch):
            loss_here = train(x=x[idx], y=y[idx])   # this rank's loss; dist.average(...) for the mean
    train.save("ckpt.npz")                       # rank 0 writes, the others wait for it

Run it with `mpirun -np N python script.py`; without mpirun it is one rank (size 1).

Every rank holds a replica of the compiled step. `compile` broadcasts rank 0's parameters into
every rank's `g.params` and inserts, between autodiff and the optimizer, a pass that replaces
each gradient by its mean over the ranks (one MPI allreduce per bucket of gradients, run inside
the native step). The optimizer update then runs on every rank with the same averaged gradient,
so parameters and optimizer state stay equal without ever being sent again. N ranks with batch B
each follow the trajectory of one process with batch N*B (up to float rounding)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .compiler.allreduce import DEFAULT_BUCKET_BYTES, AllreduceGradients
from .core.errors import GraphError
from .core.graph import Graph
from .core.node import Node
from .runtime.data_parallel import (
    DataParallelStep,
    broadcast_parameters,
    check_same_everywhere,
    report_and_abort,
    signature,
)
from .runtime.step import compile_step

# set by mpirun/mpiexec (Open MPI, MPICH/Hydra, PMIx): this process is one of several ranks
_LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
_world: World | None = None


@dataclass(frozen=True)
class World:
    """The ranks of one MPI communicator, with the helpers a training loop needs."""

    comm: Any

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def size(self) -> int:
        return self.comm.Get_size()

    @property
    def is_root(self) -> bool:
        """Rank 0: the rank that prints, evaluates and writes checkpoints."""
        return self.rank == 0

    def average(self, value: float) -> float:
        """The mean of a scalar (a loss, an accuracy) over all ranks; every rank must call it."""
        return float(self.comm.allreduce(float(value))) / self.size

    def barrier(self) -> None:
        self.comm.Barrier()

    def split(self, indices: np.ndarray) -> np.ndarray:
        """This rank's equal share of one global batch of sample indices (contiguous parts;
        the last len % size indices are left out, so every rank gets the same batch size)."""
        part = len(indices) // self.size
        return indices[self.rank * part : (self.rank + 1) * part]

    def minibatches(self, n_samples: int, global_batch: int, seed: int, epoch: int = 0) -> Iterator[np.ndarray]:
        """This rank's sample indices, batch by batch, for one epoch. All ranks shuffle with the
        same (seed, epoch), cut the order into global batches and take their share of each, so
        the ranks' samples are disjoint, every rank takes the same number of steps and the
        ranks together see the batches one process with `global_batch` would."""
        if global_batch % self.size:
            raise ValueError(f"global batch {global_batch} is not a multiple of the {self.size} ranks")
        order = np.random.default_rng((seed, epoch)).permutation(n_samples)
        for start in range(0, n_samples - self.size + 1, global_batch):
            yield self.split(order[start : start + global_batch])

    def abort(self, where: str, error: BaseException | None = None) -> None:
        """Print the error and where it happened, naming this rank, then end every rank (MPI_Abort)."""
        report_and_abort(self.comm, where, error)


def init(comm: Any = None) -> World:
    """Start MPI (through mpi4py) and return the world of `comm` (MPI.COMM_WORLD by default).

    With more than one rank it installs an excepthook: an exception nobody catches on any rank
    prints its traceback with the rank and calls MPI_Abort, so mpirun ends the job with exit
    code 1 instead of the other ranks hanging in their next allreduce (`python -m mpi4py
    script.py` does the same)."""
    global _world
    MPI = _mpi()
    world = World(MPI.COMM_WORLD if comm is None else comm)
    if comm is None:
        if _world is not None:
            return _world
        _world = world
    if world.size > 1:
        _install_excepthook(world)
    return world


def compile(
    graph: Graph,
    loss: Node,
    optimizer: Any,
    *,
    outputs: Node | Sequence[Node] | None = None,
    params: Sequence[Node | str] | None = None,
    backend: str | None = None,
    check_finite: bool = False,
    comm: Any = None,
    bucket_mb: float = DEFAULT_BUCKET_BYTES / 2**20,
) -> DataParallelStep:
    """`graph.compile(loss=..., optimizer=...)` for data-parallel training; every rank calls it.

    Rank 0's parameters are broadcast into every rank's `graph.params`; the step averages the
    gradients over the ranks of `comm` (default: the world of `init()`) before the update, in
    buckets of at most `bucket_mb` MiB (0: one allreduce per gradient). With one rank it is
    exactly `graph.compile`. Raises the same GraphError on every rank if the ranks built
    different graphs."""
    if loss is None or optimizer is None:
        raise GraphError("dg.distributed.compile compiles train steps: give it a loss and an optimizer")
    world = init(comm)
    passes = []
    if world.size > 1:
        passes.append(("allreduce", AllreduceGradients(world.comm, int(bucket_mb * 2**20))))
    step = compile_step(graph, loss, outputs, optimizer, params, backend, check_finite, passes)
    check_same_everywhere(world.comm, signature(graph, step), "graphs (did every rank build the same one?)")
    broadcast_parameters(graph, world.comm)
    return DataParallelStep(step, world)


def shard(n_samples: int, rank: int, size: int) -> range:
    """A fixed contiguous slice of `n_samples` for `rank`: disjoint, n_samples // size each
    (the last n_samples % size are left out so every rank takes the same number of steps)."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in [0, {size})")
    part = n_samples // size
    return range(rank * part, (rank + 1) * part)


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as error:
        launched = [f"{v}={os.environ[v]}" for v in _LAUNCHER_VARIABLES if v in os.environ]
        how = f"this process was started by an MPI launcher ({', '.join(launched)}) but " if launched else ""
        raise ImportError(
            f"drug.distributed: {how}mpi4py is not importable ({error}); install MPI (e.g. apt-get install "
            "openmpi-bin libopenmpi-dev) and `pip install 'drug[mpi]'` (mpi4py>=3.1)"
        ) from None
    return MPI


def _install_excepthook(world: World) -> None:
    previous = sys.excepthook
    if getattr(previous, "drug_distributed", False):
        return

    def abort_all_ranks(kind, value, tb) -> None:
        if issubclass(kind, KeyboardInterrupt):  # mpirun forwards Ctrl-C to every rank itself
            previous(kind, value, tb)
            return
        world.abort("with an uncaught exception", value.with_traceback(tb))

    abort_all_ranks.drug_distributed = True  # type: ignore[attr-defined]
    sys.excepthook = abort_all_ranks

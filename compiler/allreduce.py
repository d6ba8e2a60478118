"""The data-parallel gradient pass: every gradient becomes its mean over the ranks of an MPI
communicator, before the optimizer pass turns gradients into updates. Every rank then applies
the same averaged gradient to the same parameters, so parameters and optimizer state stay equal.

Gradients are packed into buckets (flattened, concatenated, one allreduce, sliced back), so a
model with many small parameters makes few MPI calls: each call costs a latency of microseconds
in shared memory and tens of microseconds over a network, against two copies for packing."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..core.leaves import InputOp
from ..core.node import Node
from ..core.program import Program, ancestors
from ..ops.collective import allreduce_mean, allreduce_sum
from ..ops.elementwise import OnesLike
from ..ops.shape import concat, getitem, reshape

DEFAULT_BUCKET_BYTES = 25 * 2**20  # PyTorch DDP's default bucket_cap_mb


@dataclass(frozen=True)
class AllreduceGradients:
    """A pass (Program -> Program) averaging `program.grads` over `comm`'s ranks.

    `bucket_bytes` caps the bytes of one bucket; 0 allreduces every gradient on its own.
    A gradient that depends on no input (hence on no rank's data) is already equal on every
    rank and is left alone."""

    comm: Any
    bucket_bytes: int = DEFAULT_BUCKET_BYTES

    def __call__(self, program: Program) -> Program:
        if not program.grads:
            return program
        data = _data_dependent(program.grads)
        reduced: dict[int, Node] = {}
        for bucket in buckets([g for g in program.grads if g.id in data], self.bucket_bytes):
            reduced.update(zip((g.id for g in bucket), _allreduce_bucket(bucket, self.comm)))
        return program.with_(grads=tuple(reduced.get(g.id, g) for g in program.grads))


def buckets(grads: list[Node], bucket_bytes: int) -> list[list[Node]]:
    """Gradients grouped by dtype, last parameter first (its gradient is ready first, as in
    DDP), each group cut into runs of at most `bucket_bytes` (a bigger gradient is alone)."""
    out: list[list[Node]] = []
    open_bucket: dict[str, tuple[list[Node], int]] = {}
    for g in reversed(grads):
        nbytes = math.prod(g.shape) * g.dtype.itemsize
        members, used = open_bucket.get(g.dtype.str, ([], 0))
        if members and used + nbytes > bucket_bytes:
            out.append(members)
            members, used = [], 0
        open_bucket[g.dtype.str] = (members + [g], used + nbytes)
    out += [members for members, _ in open_bucket.values()]
    return out


def _allreduce_bucket(bucket: list[Node], comm: Any) -> list[Node]:
    """Each gradient's mean over the ranks; the 1/size multiply is applied per gradient after
    unpacking, so it fuses into the optimizer's update loop."""
    if len(bucket) == 1:
        return [allreduce_mean(bucket[0], comm)]
    sizes = [math.prod(g.shape) for g in bucket]
    packed = allreduce_sum(concat([reshape(g, (size,)) for g, size in zip(bucket, sizes)]), comm)
    scale = 1.0 / comm.Get_size()
    out, start = [], 0
    for g, size in zip(bucket, sizes):
        out.append(reshape(getitem(packed, slice(start, start + size)), g.shape) * scale)
        start += size
    return out


def _data_dependent(grads: tuple[Node, ...]) -> set[int]:
    """Ids of the nodes (among the gradients' ancestors) whose value may differ between ranks:
    those that read an input, except the autodiff seed ones_like(loss), always 1 (a static
    shape). Anything else reading the batch (its size, say) counts as data."""
    found: set[int] = set()
    for node in ancestors(list(grads)):  # topological order: inputs before their readers
        constant = isinstance(node.op, OnesLike) and None not in node.shape
        if isinstance(node.op, InputOp) or (not constant and any(i.id in found for i in node.inputs)):
            found.add(node.id)
    return found

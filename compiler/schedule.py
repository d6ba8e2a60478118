"""Scheduling and memory planning: kernel order, one buffer per materialized value, in-place
optimizer updates, and liveness intervals for the arena."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from ..core.leaves import BufferOp, ConstantOp, InputOp, ParameterOp, StateOp
from ..core.node import Node
from ..core.program import Program
from ..core.types import Shape
from .fusion import Kernel, folded_transposes, is_alias, storage
from .kernel_graph import lexicographic_topological_order
from .target import Target


@dataclass(slots=True)
class Buffer:
    slot: int  # index in the pointer table the native step reads
    shape: Shape
    dtype: np.dtype
    kind: str  # input | param | buffer (graph state) | state (optimizer) | const | temp
    key: object = None  # input/param name, state key, constant array
    live: tuple[int, int] = (0, 0)  # first and last kernel touching a temp

    def nbytes(self, batch: int) -> int:
        return math.prod(batch if d is None else d for d in self.shape) * self.dtype.itemsize


@dataclass
class Schedule:
    program: Program
    kernels: list[Kernel]
    buffers: list[Buffer]
    buffer_of: dict[int, int]  # node id -> slot
    copies: list[tuple[int, int]] = field(default_factory=list)  # (from slot, to slot) after all kernels
    transposed: set[int] = field(default_factory=set)  # nodes that are GEMM transpose flags
    workspaces: dict[int, int] = field(default_factory=dict)  # node id -> slot of its kernel's scratch buffer
    # [start, end) runs of kernels that may run at once (compiler/concurrency.py); None: one by one
    groups: list[tuple[int, int]] | None = None
    # `fingerprint`, when known already (a schedule loaded from a cache); not copied by dataclasses.replace
    digest: str | None = field(default=None, init=False)

    def slot(self, node: Node) -> int:
        return self.buffer_of[node.id]


def _leaf_buffer(node: Node, slot: int) -> Buffer:
    op = node.op
    if isinstance(op, InputOp):
        return Buffer(slot, node.shape, node.dtype, "input", node.name)
    if isinstance(op, ParameterOp):
        return Buffer(slot, node.shape, node.dtype, "param", node.name)
    if isinstance(op, BufferOp):
        return Buffer(slot, node.shape, node.dtype, "buffer", node.name)
    if isinstance(op, StateOp):
        return Buffer(slot, node.shape, node.dtype, "state", op.key_name)
    if isinstance(op, ConstantOp):
        return Buffer(slot, node.shape, node.dtype, "const", op.value)
    raise AssertionError(f"not a leaf: {node!r}")


@dataclass(frozen=True)
class Plan:
    """The scheduling and memory-planning pass for a target (which says what scratch memory its
    kernels need)."""

    target: Target

    def __call__(self, program: Program) -> Program:
        return program.with_(schedule=plan(program, self.target))


def plan(program: Program, target: Target) -> Schedule:
    kernels = [Kernel(k.kind, list(k.nodes), k.domain, list(k.outputs)) for k in program.kernels]
    transposed = folded_transposes(program)
    buffers: list[Buffer] = []
    buffer_of: dict[int, int] = {}

    def new_buffer(buffer: Buffer) -> int:
        buffers.append(buffer)
        return buffer.slot

    for node in program.nodes:
        if not node.inputs:
            buffer_of[node.id] = new_buffer(_leaf_buffer(node, len(buffers)))
    kernel_of = {n.id: k for k, kernel in enumerate(kernels) for n in kernel.nodes}

    # in-place updates: the kernel computing a new value writes the leaf's own buffer
    in_place: dict[int, Node] = {}  # new value's node id -> the leaf it overwrites
    copies_wanted: list[tuple[Node, Node]] = []
    for leaf, new in program.updates:
        if new is leaf:
            continue
        k = kernel_of.get(new.id)
        if (
            k is not None
            and kernels[k].kind == "loop"
            and kernels[k].domain == leaf.shape
            and any(o is new for o in kernels[k].outputs)
        ):
            in_place[new.id] = leaf
        else:
            copies_wanted.append((leaf, new))
    order = _order(program, kernels, kernel_of, in_place, transposed)
    if order is None:  # an in-place write would precede a read of the old value: copy at the end instead
        copies_wanted += [(leaf, new) for leaf, new in program.updates if new.id in in_place]
        in_place = {}
        order = _order(program, kernels, kernel_of, in_place, transposed)
    kernels = [kernels[k] for k in order]
    position = {k: i for i, k in enumerate(order)}
    kernel_of = {nid: position[k] for nid, k in kernel_of.items()}

    roots = {r.id for r in program.roots}
    for index, kernel in enumerate(kernels):
        for node in kernel.outputs:
            if node.id in in_place:
                buffer_of[node.id] = buffer_of[in_place[node.id].id]
            else:
                end = len(kernels) if node.id in roots else index
                buffer_of[node.id] = new_buffer(Buffer(len(buffers), node.shape, node.dtype, "temp", live=(index, end)))
    for node in program.nodes:  # aliases share their source's buffer
        if is_alias(node) or node.id in transposed:
            buffer_of[node.id] = buffer_of[node.inputs[0].id]
    # extend temp lifetimes to their last reader
    for node in program.nodes:
        if node.id not in kernel_of:
            continue
        for i in node.inputs:
            slot = buffer_of.get(i.id)
            if slot is not None and buffers[slot].kind == "temp":
                first, last = buffers[slot].live
                buffers[slot].live = (first, max(last, kernel_of[node.id]))
    for node in program.nodes:  # an alias read later keeps its source alive
        if is_alias(node) and node.id in roots:
            slot = buffer_of[node.id]
            if buffers[slot].kind == "temp":
                buffers[slot].live = (buffers[slot].live[0], len(kernels))
    workspaces = _workspaces(kernels, buffers, target)
    copies = [(buffer_of[new.id], buffer_of[leaf.id]) for leaf, new in copies_wanted]
    for source, _ in copies:
        if buffers[source].kind == "temp":
            buffers[source].live = (buffers[source].live[0], len(kernels))
    return Schedule(program, kernels, buffers, buffer_of, copies, transposed, workspaces)


def _workspaces(kernels: list[Kernel], buffers: list[Buffer], target: Target) -> dict[int, int]:
    """Scratch memory an op's own kernel asks for (`target.workspace(node) -> (shape, dtype) | None`,
    None in the shape = batch): a temp buffer alive only while that kernel runs."""
    out: dict[int, int] = {}
    for index, kernel in enumerate(kernels):
        node = kernel.nodes[0]
        spec = target.workspace(node) if kernel.kind == "op" else None
        if spec is not None:
            shape, dtype = spec
            out[node.id] = len(buffers)
            buffers.append(
                Buffer(len(buffers), tuple(shape), np.dtype(dtype), "temp", ("workspace", node.id), (index, index))
            )
    return out


def _order(program, kernels, kernel_of, in_place, transposed) -> list[int] | None:
    """A topological order of kernels; writes into a leaf come after every read of its old value."""
    deps: dict[int, set[int]] = {k: set() for k in range(len(kernels))}

    readers: dict[int, set[int]] = {}
    for node in program.nodes:
        k = kernel_of.get(node.id)
        if k is None:
            continue
        for i in node.inputs:
            source = storage(i, transposed)
            p = kernel_of.get(source.id)
            if p is not None and p != k:
                deps[p].add(k)
            readers.setdefault(source.id, set()).add(k)
    for new_id, leaf in in_place.items():
        writer = kernel_of[new_id]
        for reader in readers.get(leaf.id, set()) - {writer}:
            deps[reader].add(writer)
    # a kernel that may stop the step runs before every in-place update: a failed step changes nothing
    fallible = [k for k, kernel in enumerate(kernels) if kernel.kind == "callback" or may_fail(kernel)]
    for writer in {kernel_of[new_id] for new_id in in_place}:
        for k in fallible:
            if k != writer:
                deps[k].add(writer)
    first = [min(n.id for n in kernel.nodes) for kernel in kernels]
    return lexicographic_topological_order(deps, first.__getitem__)


def fingerprint(schedule: Schedule) -> str:
    """A stable text of everything code generation reads, for the compile cache key."""
    if schedule.digest is not None:
        return schedule.digest
    local = {node.id: i for i, node in enumerate(schedule.program.nodes)}
    parts = []
    for kernel in schedule.kernels:
        members = [
            (local[n.id], n.op.key(), tuple(local[i.id] for i in n.inputs), n.shape, n.dtype.str) for n in kernel.nodes
        ]
        parts.append((kernel.kind, kernel.domain, members, tuple(local[n.id] for n in kernel.outputs)))
    # leaves matter too: scalar constants are inlined into the code
    leaves = [(local[n.id], n.op.key(), n.shape, n.dtype.str) for n in schedule.program.nodes if not n.inputs]
    buffers = [(b.slot, b.shape, b.dtype.str, b.kind) for b in schedule.buffers]
    slots = sorted((local[nid], slot) for nid, slot in schedule.buffer_of.items() if nid in local)
    transposed = sorted(local[n] for n in schedule.transposed)
    text = repr((parts, leaves, buffers, slots, schedule.copies, transposed, schedule.groups))
    return hashlib.sha256(text.encode()).hexdigest()


def may_fail(kernel: Kernel) -> bool:
    return any(node.op.may_fail for node in kernel.nodes)


def pack_temps(buffers: list[Buffer], batch: int, align: int) -> tuple[dict[int, int], int]:
    """Byte offset of every temp buffer in one arena for this batch size (first fit, largest
    first, each rounded up to `align` bytes), and the arena's size; buffers alive at once never
    overlap. Each placement looks at the placed buffers alive at the same time as whole arrays:
    a plain loop over every pair is quadratic in Python and a long unrolled program has
    thousands of temps."""
    temps = sorted((b for b in buffers if b.kind == "temp"), key=lambda b: (-b.nbytes(batch), b.slot))
    count = len(temps)
    starts = np.empty(count, np.int64)  # byte ranges and live kernels of the buffers placed so far
    ends = np.empty(count, np.int64)
    first = np.array([b.live[0] for b in temps], np.int64)
    last = np.array([b.live[1] for b in temps], np.int64)
    offsets: dict[int, int] = {}
    for index, buffer in enumerate(temps):
        size = -(-max(buffer.nbytes(batch), 1) // align) * align
        alive = np.flatnonzero((last[:index] >= buffer.live[0]) & (first[:index] <= buffer.live[1]))
        offset = _first_fit(starts[alive], ends[alive], size)
        starts[index], ends[index] = offset, offset + size
        offsets[buffer.slot] = offset
    return offsets, int(ends.max()) if count else 0


def _first_fit(starts: np.ndarray, ends: np.ndarray, size: int) -> int:
    """The lowest offset at which `size` bytes fit below the first busy range that leaves room,
    scanning busy ranges by their start (what a loop keeping `offset = max(offset, end)` finds)."""
    if not len(starts):
        return 0
    order = np.lexsort((ends, starts))
    reached = np.maximum.accumulate(ends[order])  # the offset after each busy range in turn
    before = np.concatenate(([0], reached[:-1]))
    fits = np.flatnonzero(before + size <= starts[order])
    return int(before[fits[0]]) if len(fits) else int(reached[-1])

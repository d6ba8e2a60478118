"""A fused loop kernel (fusion.Kernel) laid out for a GPU: which axes of its domain become work
items, which axes each work item walks, and the element stride of every buffer access along
each axis. GPU renderers share it (OpenCL C today; LLVM IR for nvptx64 would read the same
description) and write only how an index, a load, a store and a reduction look in their code.

Sizes are known up to the batch (`Size`): a renderer writes them with the run-time batch, a
launcher evaluates them for a bound batch size."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..core.node import Node
from ..core.types import Shape
from .fusion import Kernel, is_inline, is_reduction

FEW_OUTPUTS = 1024  # reductions to fewer elements share each element's walk among a work group


@dataclass(frozen=True)
class Size:
    """coefficient * batch ** power: an extent, a stride or an element count."""

    coefficient: int = 1
    power: int = 0

    @classmethod
    def of(cls, dims: Sequence[int | None]) -> Size:
        """The product of `dims` (None: the batch)."""
        static = math.prod(d for d in dims if d is not None)
        return cls(static, sum(d is None for d in dims))

    def __mul__(self, other: Size | int) -> Size:
        other = other if isinstance(other, Size) else Size(other)
        return Size(self.coefficient * other.coefficient, self.power + other.power)

    __rmul__ = __mul__

    def at(self, batch: int) -> int:
        return self.coefficient * batch**self.power

    @property
    def is_zero(self) -> bool:
        return self.coefficient == 0

    @property
    def is_one(self) -> bool:
        return self.coefficient == 1 and self.power == 0


ZERO, ONE = Size(0), Size(1)


def row_major_strides(shape: Shape) -> list[Size]:
    """Element strides of a contiguous array of `shape`."""
    return [Size.of(shape[a + 1 :]) for a in range(len(shape))]


def read_strides(shape: Shape, domain: Shape) -> list[Size]:
    """Per domain axis, the stride reading an array of `shape` broadcast over `domain` (0: broadcast)."""
    strides = row_major_strides(shape)
    lead = len(domain) - len(shape)
    return [ZERO if a < lead or shape[a - lead] == 1 else strides[a - lead] for a in range(len(domain))]


def reduction_strides(node: Node, domain: Shape) -> list[Size]:
    """Per domain axis, the stride of the output element a reduction accumulates into (0 on the
    axes it reduces)."""
    reduced = set(node.op.reduced_axes(domain))
    strides = row_major_strides(node.shape)
    if node.op.keeps_reduced_axes:  # aligned with the domain's trailing axes
        lead = len(domain) - len(node.shape)
        return [ZERO if a in reduced or a < lead else strides[a - lead] for a in range(len(domain))]
    kept = iter(strides)
    return [ZERO if a in reduced else next(kept) for a in range(len(domain))]


@dataclass
class LoopGrid:
    """A loop kernel's layout. Axes are the domain's after merging neighbours that every access
    walks alike; `parallel` axes are spread over work items (one index each, the last axis
    varying fastest between neighbouring items), `serial` axes are walked by each work item as
    one flattened range. A reduction reduces only serial axes; one that also keeps a serial axis
    accumulates in its output buffer (`in_memory`), the others in a register each."""

    kernel: Kernel
    extents: list[Size]
    accesses: dict[int, list[Size]]  # node id -> element stride along each axis
    parallel: list[int]
    serial: list[int]
    in_memory: set[int]  # ids of reductions accumulated in memory

    @property
    def reductions(self) -> list[Node]:
        return [n for n in self.kernel.nodes if is_reduction(n)]

    @property
    def work_items(self) -> Size:
        return _product(self.extents[a] for a in self.parallel)

    @property
    def serial_size(self) -> Size:
        return _product(self.extents[a] for a in self.serial)

    def shares_walks(self, lanes: int) -> bool:
        """Whether each work item's walk is better shared by a work group of `lanes` items, which
        split it and combine their partial results (a tree in local memory): when reductions
        (in registers) leave few outputs (a loss, a bias gradient) and long walks."""
        items, walk = self.work_items, self.serial_size
        few = items.power == 0 and items.coefficient <= FEW_OUTPUTS
        return bool(self.reductions) and not self.in_memory and few and (walk.power > 0 or walk.coefficient >= lanes)


def _product(sizes) -> Size:
    out = ONE
    for s in sizes:
        out = out * s
    return out


def loop_grid(kernel: Kernel) -> LoopGrid:
    """The layout of a loop kernel (kind "loop")."""
    domain = kernel.domain
    outputs = {n.id for n in kernel.outputs}
    members = {n.id for n in kernel.nodes}
    accesses: dict[int, list[Size]] = {}
    for node in kernel.nodes:
        for pos, i in enumerate(node.inputs):
            if pos not in node.op.shape_only_inputs and i.id not in members and not is_inline(i):
                accesses[i.id] = read_strides(i.shape, domain)
        if is_reduction(node):
            accesses[node.id] = reduction_strides(node, domain)
        elif node.id in outputs:
            accesses[node.id] = read_strides(node.shape, domain)
    extents, accesses = _collapse([Size.of([d]) for d in domain], accesses)
    reductions = [n for n in kernel.nodes if is_reduction(n)]
    serial = [
        a for a in range(len(extents)) if not extents[a].is_one and any(accesses[r.id][a].is_zero for r in reductions)
    ]
    parallel = [a for a in range(len(extents)) if a not in serial]
    in_memory = {r.id for r in reductions if any(not accesses[r.id][a].is_zero for a in serial)}
    return LoopGrid(kernel, extents, accesses, parallel, serial, in_memory)


def _collapse(extents: list[Size], accesses: dict[int, list[Size]]) -> tuple[list[Size], dict[int, list[Size]]]:
    """Merge neighbouring axes that every access walks alike (all contiguous or all broadcast):
    a (batch, 512) elementwise loop becomes one flat range."""
    extents, accesses = list(extents), {k: list(v) for k, v in accesses.items()}
    for a in reversed(range(len(extents) - 1)):
        if all(s[a].is_zero == s[a + 1].is_zero for s in accesses.values()):
            extents[a + 1] = extents[a] * extents[a + 1]
            del extents[a]
            for s in accesses.values():
                del s[a]
    return extents, accesses

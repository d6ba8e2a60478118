"""Kernel formation: partition the program's nodes into kernels.

Elementwise nodes over the same iteration domain fuse into one loop (a convex group: no path
leaves the group and comes back); reductions over a group's domain may end it. Reshapes are
aliases (no kernel), transposes feeding a GEMM become its transpose flags, scalar constants
and run-time counts are inlined where they are used."""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from .graph import Node
from .program import Program


@dataclass
class Kernel:
    kind: str  # "loop" (fused elementwise/reduction), "op" (an op's own kernel), "callback"
    nodes: list[Node]  # members in execution order
    domain: tuple = ()  # iteration shape of a loop kernel
    outputs: list[Node] = field(default_factory=list)  # members whose values leave the kernel

    @property
    def name(self) -> str:
        ops = "_".join(dict.fromkeys(n.op.name for n in self.nodes))
        return f"{self.kind}_{ops}"[:60]


def is_inline(node: Node) -> bool:
    """Scalar constants: loops use them as literals."""
    from ..ops.leaves import ConstantOp

    return isinstance(node.op, ConstantOp) and node.op.value.size == 1


def is_leaf(node: Node) -> bool:
    return not node.inputs


def is_alias(node: Node) -> bool:
    from ..ops.shape import Reshape

    return isinstance(node.op, Reshape)


def loop_role(node: Node) -> str | None:
    """'map' for elementwise members, 'reduce' for reductions that can end a loop."""
    from ..ops.reduce import Reduce
    from ..ops.shape import SumTo

    if isinstance(node.op, (Reduce, SumTo)):
        return "reduce" if node.dtype.kind == "f" else None
    return "map" if hasattr(node.op, "emit") else None


def folded_transposes(program: Program) -> set[int]:
    """2-D transposes read only by matmuls, which fold them into GEMM flags."""
    from ..ops.linalg import MatMul
    from ..ops.shape import Transpose

    consumers: dict[int, list[Node]] = {}
    for node in program.nodes:
        for i in node.inputs:
            consumers.setdefault(i.id, []).append(node)
    out = set()
    roots = {r.id for r in program.roots}
    for node in program.nodes:
        if isinstance(node.op, Transpose) and node.op.perm == (1, 0) and node.id not in roots:
            users = consumers.get(node.id, [])
            if users and all(isinstance(u.op, MatMul) and u.ndim == 2 for u in users):
                out.add(node.id)
    return out


def fuse(program: Program) -> Program:
    """The fusion pass: the program with its nodes partitioned into kernels."""
    return program.with_(kernels=tuple(form_kernels(program)))


def form_kernels(program: Program) -> list[Kernel]:
    skipped = folded_transposes(program)
    group_of: dict[int, int] = {}  # node id -> kernel index
    kernels: list[Kernel] = []
    deps = nx.DiGraph()  # kernel-level dependencies, to keep groups convex

    def producer_groups(node: Node) -> set[int]:
        found, stack = set(), list(node.inputs)
        while stack:
            i = stack.pop()
            if i.id in group_of:
                found.add(group_of[i.id])
            elif is_alias(i) or i.id in skipped:
                stack.extend(i.inputs)
        return found

    for node in program.nodes:
        if is_leaf(node) or is_inline(node) or is_alias(node) or node.id in skipped:
            continue
        role = loop_role(node)
        sources = producer_groups(node)
        target = None
        if role is not None:
            domain = node.inputs[0].shape if role == "reduce" else node.shape
            for k in sorted(sources, reverse=True):
                kernel = kernels[k]
                reads_reduction = any(
                    group_of.get(i.id) == k and loop_role(i) == "reduce" for i in node.inputs
                )
                if kernel.kind != "loop" or kernel.domain != domain or reads_reduction:
                    continue
                if all(not nx.has_path(deps, k, other) for other in sources if other != k):
                    target = k
                    break
        if target is None:
            kind = "loop" if role else ("op" if has_native_kernel(node) else "callback")
            domain = (node.inputs[0].shape if role == "reduce" else node.shape) if role else ()
            kernels.append(Kernel(kind, [], domain))
            target = len(kernels) - 1
            deps.add_node(target)
        kernels[target].nodes.append(node)
        group_of[node.id] = target
        for k in sources:
            if k != target:
                deps.add_edge(k, target)
    _mark_outputs(program, kernels, group_of)
    return kernels


def has_native_kernel(node: Node) -> bool:
    return hasattr(node.op, "emit_kernel")


def _mark_outputs(program: Program, kernels: list[Kernel], group_of: dict[int, int]) -> None:
    """A member is an output if a node outside its kernel (or the program's results) reads it."""
    needed: set[int] = {r.id for r in program.roots}
    readers: dict[int, set[int]] = {}
    for node in program.nodes:
        for i in node.inputs:
            readers.setdefault(i.id, set()).add(group_of.get(node.id, -1))
    for index, kernel in enumerate(kernels):
        for node in kernel.nodes:
            outside = readers.get(node.id, set()) - {index}
            if node.id in needed or outside or kernel.kind != "loop":
                kernel.outputs.append(node)

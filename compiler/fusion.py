"""Kernel formation: partition the program's nodes into kernels.

Elementwise nodes over the same iteration domain fuse into one loop (a convex group: no path
leaves the group and comes back); reductions over a group's domain may end it. Reshapes are
aliases (no kernel), transposes feeding a GEMM become its transpose flags, and scalar
constants are inlined where they are used."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.leaves import ConstantOp
from ..core.node import Node
from ..core.program import Program
from ..ops.linalg import MatMul, MatMulBias
from ..ops.shape import Transpose
from .kernel_graph import KernelGraph
from .target import Target


@dataclass(slots=True)
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
    return isinstance(node.op, ConstantOp) and node.op.value.size == 1


def is_leaf(node: Node) -> bool:
    return not node.inputs


def is_alias(node: Node) -> bool:
    return node.op.is_view


def storage(node: Node, transposed: set[int]) -> Node:
    """The node whose buffer holds `node`'s data: through reshapes and folded transposes."""
    while is_alias(node) or node.id in transposed:
        node = node.inputs[0]
    return node


def is_reduction(node: Node) -> bool:
    """A float reduction, which can end a loop over its input's domain."""
    return node.op.combine is not None and node.dtype.kind == "f"


def folded_transposes(program: Program) -> set[int]:
    """2-D transposes read only by matmuls, which fold them into GEMM flags."""
    consumers: dict[int, list[Node]] = {}
    for node in program.nodes:
        for i in node.inputs:
            consumers.setdefault(i.id, []).append(node)
    out = set()
    roots = {r.id for r in program.roots}
    for node in program.nodes:
        if isinstance(node.op, Transpose) and node.op.perm == (1, 0) and node.id not in roots:
            users = consumers.get(node.id, [])
            # a GEMM takes a transposed matrix operand as a flag: as either operand of a 2-D product,
            # or as the matrix of a batched-times-matrix product (whose leading axes fold into M);
            # a dense layer's too (a PyTorch Linear's weight, exported to ONNX as Gemm with transB)
            gemms = (MatMul, MatMulBias)
            if users and all(isinstance(u.op, gemms) and (u.ndim == 2 or u.inputs[1] is node) for u in users):
                out.add(node.id)
    return out


@dataclass(frozen=True)
class Fuse:
    """The fusion pass for a target: the program with its nodes partitioned into kernels."""

    target: Target

    def __call__(self, program: Program) -> Program:
        return program.with_(kernels=tuple(form_kernels(program, self.target)))


def _first_kernel(node: Node, target: Target) -> Kernel:
    if is_reduction(node):
        return Kernel("loop", [node], node.inputs[0].shape)
    if target.fusible(node):
        return Kernel("loop", [node], node.shape)
    return Kernel("op" if target.has_kernel(node) else "callback", [node])


def form_kernels(program: Program, target: Target) -> list[Kernel]:
    """Start with one kernel per node, then merge a loop into a consuming loop over the same
    domain while the merged kernel stays convex (no other path between the two)."""
    skipped = folded_transposes(program)
    members = [n for n in program.nodes if not (is_leaf(n) or is_inline(n) or is_alias(n) or n.id in skipped)]
    group = {n.id: i for i, n in enumerate(members)}
    kernels = {i: _first_kernel(n, target) for i, n in enumerate(members)}

    dag = KernelGraph(len(members))  # members come in program order, a topological one
    blocked: set[tuple[int, int]] = set()  # (producer, consumer) pairs where the consumer reads a reduction
    for node in members:
        for i in node.inputs:
            i = storage(i, skipped)
            if i.id in group and group[i.id] != group[node.id]:
                dag.add_edge(group[i.id], group[node.id])
                if is_reduction(i):
                    blocked.add((group[i.id], group[node.id]))
    for node in members:  # results of a multi-output op are written by that op's kernel
        if node.op.result_index is not None:
            _merge(dag, kernels, group, blocked, group[node.inputs[0].id], group[node.id])
    first = {k: kernel.nodes[0].id for k, kernel in kernels.items()}
    changed = True
    while changed:
        changed = False
        for producer, consumer in sorted(dag.edges(), key=lambda e: (first[e[0]], first[e[1]])):
            if consumer not in dag.succ.get(producer, ()):
                continue  # an earlier merge in this sweep removed it
            a, b = kernels[producer], kernels[consumer]
            if a.kind != "loop" or b.kind != "loop" or a.domain != b.domain or (producer, consumer) in blocked:
                continue
            if dag.only_path(producer, consumer):
                _merge(dag, kernels, group, blocked, producer, consumer)
                changed = True
    order = dag.lexicographic_order(key=lambda k: min(n.id for n in kernels[k].nodes))
    result = [kernels[k] for k in order]
    for kernel in result:
        kernel.nodes.sort(key=lambda n: n.id)
    _mark_outputs(program, result, {n.id: i for i, k in enumerate(result) for n in k.nodes})
    return result


def _merge(dag: KernelGraph, kernels: dict, group: dict, blocked: set, keep: int, gone: int) -> None:
    """Fold kernel `gone` into kernel `keep`."""
    kernels[keep].nodes += kernels.pop(gone).nodes
    for node in kernels[keep].nodes:
        group[node.id] = keep
    for p in dag.pred[gone]:
        if p != keep and (p, gone) in blocked:
            blocked.add((p, keep))
    for c in dag.succ[gone]:
        if c != keep and (gone, c) in blocked:
            blocked.add((keep, c))
    dag.contract(keep, gone)


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

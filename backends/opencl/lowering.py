"""How the OpenCL backend runs each op that is not fused elementwise code: a kernel rule of the op's
own, registered per op class (found along the class's MRO, like the LLVM backend's). A rule
writes OpenCL C kernel functions and says how to launch them (work items, or a CLBlast GEMM);
sizes are known up to the batch (compiler/grid.Size), so one program serves every batch size.

    @kernel(Softmax)
    def _softmax(k, node):              # k: KernelContext
        f = k.function("softmax", items=rows)
        x, out = f.read(node.inputs[0]), f.write(node)
        f.lines += [...]

An op with neither a scalar rule nor a kernel here is refused when compiling (no fallback)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ...compiler.fusion import is_alias, is_reduction
from ...compiler.grid import ONE, ZERO, Size
from ...compiler.scalar import scalar_rule_of
from ...compiler.schedule import Schedule
from ...core.errors import GraphError
from ...core.node import Node
from ...core.op import Op, registered_for
from ...core.types import Shape, format_shape
from .source import C_TYPES, Function, Params, size

Workspace = tuple[Shape, np.dtype] | None


@dataclass
class Run:
    """Launch a program function over `items` work items (in groups of `group_size` if set)."""

    function: Function
    items: Size
    group_size: int | None = None
    name: str = ""  # the function's name in the program, set when the program is assembled

    @property
    def slots(self) -> list[int]:
        return self.function.params.slots


@dataclass
class Gemm:
    """C = op(A) @ op(B) (+ beta C), row-major, through CLBlast: `count` products whose operands
    start `stride_*` elements apart (a batched GEMM when count > 1)."""

    dtype: np.dtype
    trans_a: bool
    trans_b: bool
    m: Size
    n: Size
    k: Size
    a: int  # slots
    b: int
    c: int
    lda: Size
    ldb: Size
    ldc: Size
    a_offset: Size = ZERO
    b_offset: Size = ZERO
    c_offset: Size = ZERO
    beta: float = 0.0
    count: Size = ONE
    stride_a: Size = ZERO
    stride_b: Size = ZERO
    stride_c: Size = ZERO


Launch = Run | Gemm


@dataclass(frozen=True)
class Lowering:
    kernel: Callable[..., None]  # (KernelContext, node): adds the op's launches
    workspace: Callable[[Node], Workspace] | None = None
    refuses: Callable[[Node], str | None] | None = None  # why this node cannot run here, or None


_RULES: dict[type[Op], Lowering] = {}


def kernel(
    op_class: type[Op],
    *,
    workspace: Callable[[Node], Workspace] | None = None,
    refuses: Callable[[Node], str | None] | None = None,
) -> Callable:
    """Decorator: the OpenCL kernel rule of an op class, `rule(k, node)`."""

    def register(rule: Callable) -> Callable:
        _RULES[op_class] = Lowering(rule, workspace, refuses)
        return rule

    return register


def lowering_of(op: Op) -> Lowering | None:
    return registered_for(_RULES, op)


def array_refusal(node: Node) -> str | None:
    """Why `node`'s value cannot be an OpenCL buffer: a dtype OpenCL C has no array type of."""
    if np.dtype(node.dtype).name not in C_TYPES:
        return f"the opencl backend has no {np.dtype(node.dtype)} arrays (only {sorted(C_TYPES)})"
    return None


def refusal(node: Node) -> str | None:
    """Why `node` has no OpenCL code (None: it has: a scalar rule or a reduction, which loops
    compute, a view, which is no code, or a kernel), or no buffer it could be stored in."""
    stored = array_refusal(node) or next(filter(None, map(array_refusal, node.inputs)), None)
    if stored is not None:
        return stored
    if scalar_rule_of(node.op) is not None or is_reduction(node) or is_alias(node) or not node.inputs:
        return None
    rule = lowering_of(node.op)
    if rule is None:
        return f"op '{node.op.name}' has no OpenCL kernel"
    return rule.refuses(node) if rule.refuses is not None else None


class Target:
    """What kernel formation and memory planning learn from this backend's rules."""

    @staticmethod
    def fusible(node: Node) -> bool:
        return scalar_rule_of(node.op) is not None

    @staticmethod
    def has_kernel(node: Node) -> bool:
        return lowering_of(node.op) is not None and refusal(node) is None

    @staticmethod
    def workspace(node: Node) -> Workspace:
        rule = lowering_of(node.op)
        return rule.workspace(node) if rule is not None and rule.workspace is not None else None


TARGET = Target()


@dataclass
class FunctionBuilder:
    """A kernel function under construction: buffers it reads and writes (by node), body lines
    after the standard prologue (`item`, this work item's index, below `items`)."""

    schedule: Schedule
    function: Function
    lines: list[str] = field(default_factory=list)

    def read(self, node: Node) -> str:
        return self.function.params.use(self.schedule.slot(node), node.dtype)

    def write(self, node: Node) -> str:
        return self.function.params.use(self.schedule.slot(node), node.dtype, write=True)

    def workspace(self, node: Node) -> str:
        slot = self.schedule.workspaces[node.id]
        return self.function.params.use(slot, self.schedule.buffers[slot].dtype, write=True)


@dataclass
class KernelContext:
    """What a kernel rule builds with: the schedule (slots, workspaces) and the launch list."""

    schedule: Schedule
    launches: list[Launch] = field(default_factory=list)

    def function(self, items: Size) -> FunctionBuilder:
        """A new kernel function run by `items` work items (launched in the order created)."""
        body: list[str] = ["    const long item = get_global_id(0);", f"    if (item >= {size(items)}) return;"]
        builder = FunctionBuilder(self.schedule, Function(Params(), body), body)
        self.launches.append(Run(builder.function, items))
        return builder

    def slot(self, node: Node) -> int:
        return self.schedule.slot(node)

    def workspace(self, node: Node) -> int:
        return self.schedule.workspaces[node.id]

    def is_transposed(self, node: Node) -> bool:
        return node.id in self.schedule.transposed

    def gemm(self, gemm: Gemm) -> None:
        self.launches.append(gemm)


def check(program, fp64: bool, device: str):
    """Refuse, naming the node, what this device cannot run: ops without an OpenCL kernel (there
    is no fallback to the host) and float64 where the device lacks cl_khr_fp64."""
    for kernel in program.kernels:
        stored = set(map(id, kernel.outputs)) | {id(i) for n in kernel.nodes for i in n.inputs}
        for node in kernel.nodes:
            reason = refusal(node) if kernel.kind != "loop" else None
            if reason is None and id(node) in stored:  # inside a loop, bools are C ints
                reason = array_refusal(node)
            if reason is not None:
                raise GraphError(
                    f"node {node.where}, {format_shape(node.shape)} {node.dtype}, cannot run on the opencl backend: "
                    f"{reason}; compile it with backend='llvm'"
                )
            if not fp64 and np.dtype(node.dtype) == np.float64:
                raise GraphError(
                    f"node {node.where} is float64, which {device} does not support (no cl_khr_fp64); "
                    "use a float32 graph or another device"
                )
    return program

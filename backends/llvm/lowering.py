"""How the LLVM backend runs each op that is not fused elementwise code: a kernel of the op's own,
registered per op class (the way JAX registers a lowering per primitive). Elementwise ops are
fused into loops from their scalar rules (compiler/scalar.py), which codegen builds as IR; an op
with neither runs through the Python callback (its NumPy `ref`).

    @kernel(Softmax, workspace=softmax_workspace)
    def _softmax(k, node):               # k: codegen.KernelContext
        ...

Kernels are found along the op class's MRO, so a subclass runs like its parent unless it
registers its own."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

import numpy as np

from ...compiler.scalar import scalar_rule_of, scalar_rules
from ...core.node import Node
from ...core.op import Op
from ...core.types import Shape

Workspace = tuple[Shape, np.dtype] | None
# What makes a node's kernel code differ from its class's other nodes once its inputs start where
# it reads them: a key for the rest, and per input position the element its reading starts at
Rebase = tuple[Hashable, dict[int, int]] | None


@dataclass(frozen=True)
class Lowering:
    """Everything codegen and the LLVM backend's passes need to know about one op class."""

    kernel: Callable[..., None] | None = None  # (codegen.KernelContext, node): emits the op's own kernel
    # scratch memory the kernel needs, (shape, dtype) with None as the batch, or None
    workspace: Callable[[Node], Workspace] | None = None
    # whether the kernel takes this node (others of the class run through the callback)
    supports: Callable[[Node], bool] | None = None
    # the kernel calls BLAS, whose threads already use every core: it never runs beside another kernel
    uses_blas: bool = False
    # whether the kernel calls drug's convolution kernels (gemm.build_sconv) for this node: a
    # program without such a node does not compile them
    calls_conv: Callable[[Node], bool] | None = None
    # (node) -> Rebase: nodes whose kernels differ only in where they start reading (an unrolled
    # RNN's slices of one sequence) share one function, called with input pointers moved there
    # (the kernel sees KernelContext.rebased); None for a node whose start depends on the batch
    rebase: Callable[[Node], Rebase] | None = None

    def functions(self) -> list[Callable | None]:
        """The rule's code (what decides whether a compile cache may key it by drug's files)."""
        return [self.kernel, self.workspace, self.supports, self.calls_conv, self.rebase]


_RULES: dict[type[Op], Lowering] = {}


def kernel(
    op_class: type[Op],
    *,
    workspace: Callable[[Node], Workspace] | None = None,
    supports: Callable[[Node], bool] | None = None,
    uses_blas: bool = False,
    calls_conv: Callable[[Node], bool] | None = None,
    rebase: Callable[[Node], Rebase] | None = None,
) -> Callable:
    """Decorator: the native kernel of an op class, `rule(k, node)`."""

    def register(rule: Callable) -> Callable:
        _RULES[op_class] = Lowering(rule, workspace, supports, uses_blas, calls_conv, rebase)
        return rule

    return register


def rules() -> list[Lowering]:
    """Every registered kernel rule."""
    return list(_RULES.values())


def lowering_of(op: Op) -> Lowering | None:
    for cls in type(op).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def fusible(node: Node) -> bool:
    """The node can be computed element by element inside a fused loop."""
    return scalar_rule_of(node.op) is not None


def has_kernel(node: Node) -> bool:
    rule = lowering_of(node.op)
    return rule is not None and rule.kernel is not None and (rule.supports is None or rule.supports(node))


def workspace(node: Node) -> Workspace:
    rule = lowering_of(node.op)
    return rule.workspace(node) if rule is not None and rule.workspace is not None else None


def uses_blas(node: Node) -> bool:
    rule = lowering_of(node.op)
    return rule is not None and rule.uses_blas


def calls_conv(node: Node) -> bool:
    rule = lowering_of(node.op)
    return rule is not None and rule.calls_conv is not None and rule.calls_conv(node)


def rebase(node: Node) -> Rebase:
    rule = lowering_of(node.op)
    return rule.rebase(node) if rule is not None and rule.rebase is not None else None


def user_code(op: Op) -> bool:
    """Whether the op's native code comes from a kernel or scalar rule registered outside drug
    (a user's own): code the compile cache cannot key by drug's files, so it keys on the IR built
    from it instead (a closure, a global or a helper of the user's changes that IR)."""
    rule = lowering_of(op)
    functions = rule.functions() if rule is not None else []
    functions.append(scalar_rule_of(op))
    return _any_outside_drug(functions)


def rules_from_outside_drug() -> bool:
    """Whether any kernel or scalar rule registered from outside drug is in effect (then each
    program's nodes are checked; without one, none can be a user's)."""
    functions = [f for rule in rules() for f in rule.functions()]
    return _any_outside_drug(functions + list(scalar_rules()))


def _any_outside_drug(functions: list) -> bool:
    return any(f is not None and not getattr(f, "__module__", "").startswith("drug.") for f in functions)


def runs_user_code(nodes: Iterable[Node]) -> bool:
    """Whether any of `nodes` runs by a user's kernel or scalar rule (`user_code`)."""
    return rules_from_outside_drug() and any(user_code(node.op) for node in nodes)

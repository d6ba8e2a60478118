"""From a CompileSpec to scheduled programs, with the passes the JIT uses (build_program with the
LLVM backend's passes), kernels one at a time and no Python callbacks; the object code comes from
the LLVM backend (backends/llvm/objects.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.llvm import pipeline
from ..backends.llvm.objects import Target, emit_object, resolve_target
from ..compiler.build import build_program
from ..core.errors import GraphError
from ..core.leaves import InputOp
from ..core.node import Node
from ..core.program import Program
from .spec import CompileSpec

SUPPORTED_DTYPES = (np.dtype("float32"), np.dtype("int32"), np.dtype("int64"))


@dataclass
class Function:
    """One compiled function of the library: its scheduled program and its API inputs."""

    name: str  # "train_step" or "predict"
    program: Program
    inputs: list[Node]  # in declaration order, as Python's compiled function takes them
    state: dict[str, np.ndarray]  # initial optimizer state (train step)


def plan(spec: CompileSpec) -> list[Function]:
    """The train step and/or predictor, through the same passes as `g.compile(backend="llvm")`."""
    functions = []
    if spec.loss is not None:
        functions.append(_function("train_step", spec, loss=spec.loss, optimizer=spec.optimizer, params=spec.params))
    if spec.outputs:
        functions.append(_function("predict", spec, outputs=spec.outputs))
    for function in functions:
        check_supported(function)
    return functions


def _function(name: str, spec: CompileSpec, **compile_args) -> Function:
    """One function through the passes `g.compile(backend="llvm")` runs, kernels one at a time."""
    program = build_program(spec.graph, tail=pipeline.passes(concurrent=False), **compile_args)
    return Function(name, program, program.leaves(InputOp), program.initial_state())


def check_supported(function: Function) -> None:
    """Refuse what a library without Python cannot run, naming the node."""
    schedule = function.program.schedule
    for buffer in schedule.buffers:
        if buffer.kind == "buffer":
            raise GraphError(
                f"{function.name}: the graph's state buffer '{buffer.key}' (batch-norm statistics, a random-number "
                "counter) is not supported by drug-compile yet; compile a graph without it"
            )
    for kernel in schedule.kernels:
        if kernel.kind == "callback":
            node = kernel.nodes[0]
            raise GraphError(
                f"{function.name}: node {node.label} (op '{node.op.name}') has no native kernel and runs through a "
                "Python callback in the JIT; a compiled library cannot call Python. Register a native kernel for "
                "the op (drug.backends.llvm.lowering) or build the graph from built-in ops"
            )
    for node in function.program.nodes:
        if node.id in schedule.buffer_of and node.dtype not in SUPPORTED_DTYPES:
            raise GraphError(
                f"{function.name}: node {node.describe()} has dtype {node.dtype}; compiled libraries support "
                f"{', '.join(map(str, SUPPORTED_DTYPES))} (and take only an sgemm)"
            )
    for node in function.program.outputs:
        if node.id in schedule.transposed:  # fusion never folds a returned transpose; keep it that way
            raise GraphError(f"{function.name}: output {node.describe()} is stored transposed")


__all__ = ["Function", "Target", "check_supported", "emit_object", "plan", "resolve_target"]

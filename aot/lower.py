"""From a CompileSpec to scheduled programs and native object code, with the compiler the JIT uses
(build_program with the LLVM backend's passes, codegen.ModuleBuilder, jit.optimize), but serial
loops (no libgomp), no Python callbacks, position-independent code and an explicit target CPU."""

from __future__ import annotations

import platform
from dataclasses import dataclass

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir

from ..backends.llvm import pipeline
from ..backends.llvm.codegen import ModuleBuilder
from ..backends.llvm.jit import host_cpu, optimize, target_machine
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


@dataclass(frozen=True)
class Target:
    cpu: str
    features: str
    triple: str


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


def resolve_target(name: str) -> Target:
    """'host' (this CPU and its features), 'generic' (baseline x86-64: SSE2 only) or an LLVM CPU name."""
    triple = llvm.get_process_triple()
    if name == "host":
        cpu, features = host_cpu()
        return Target(cpu, features, triple)
    if name == "generic":
        return Target("x86-64" if platform.machine() in ("x86_64", "AMD64") else "generic", "", triple)
    return Target(name, "", triple)


def blob_module(symbol: str, data: bytes) -> str:
    """LLVM IR of one 64-byte aligned constant holding the initial parameters and constants."""
    module = ir.Module(name=symbol)
    array_type = ir.ArrayType(ir.IntType(8), max(len(data), 1))
    blob = ir.GlobalVariable(module, array_type, symbol)
    blob.initializer = ir.Constant(array_type, bytearray(data or b"\0"))
    blob.global_constant = True
    blob.align = 64
    return str(module)


def _only_entry_visible(module: llvm.ModuleRef, entry: str) -> llvm.ModuleRef:
    """Rename `drug_step` to `entry` and make every other definition internal, so that modules
    with globals of the same name (e.g. codegen's drug_failed_kernel) link into one object."""
    module.get_function("drug_step").name = entry
    for value in [*module.functions, *module.global_variables]:
        if not value.is_declaration and value.name != entry:
            value.linkage = llvm.Linkage.internal
    return module


def emit_object(
    functions: list[Function], entries: dict[str, str], blob: tuple[str, bytes], target: Target, blas_int_bits: int
) -> bytes:
    """One position-independent object: every function's `drug_step` renamed to its entry symbol, and
    the data blob."""
    tm = target_machine(target.cpu, target.features, reloc="pic")
    modules = []
    for function in functions:
        builder = ModuleBuilder(function.program.schedule, blas_int_bits, name=function.name, parallel=False)
        try:
            text = str(builder.build())
        except NotImplementedError as error:
            raise GraphError(f"{function.name}: no native code for part of this graph: {error}") from None
        modules.append(_only_entry_visible(llvm.parse_assembly(text), entries[function.name]))
    modules.append(llvm.parse_assembly(blob_module(*blob)))
    linked = modules[0]
    for module in modules[1:]:
        linked.link_in(module)  # kernels are internal: clashing names are renamed
    linked.triple = tm.triple
    linked.data_layout = str(tm.target_data)
    linked.verify()
    optimize(linked, tm)
    return tm.emit_object(linked)

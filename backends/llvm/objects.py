"""Object code for an ahead-of-time library (drug-compile): the step modules of its functions and a
data blob linked into one position-independent object for an explicit target CPU, with the
serial (no thread pool) code generation the JIT would use with one thread."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Protocol

import llvmlite.binding as llvm
from llvmlite import ir

from ...core.errors import GraphError
from ...core.program import Program
from .codegen import ModuleBuilder
from .gemm import CONV_SYMBOL, ENTRY_SYMBOL, FALLBACK_SYMBOL, FILTER_SYMBOL, build_sconv, build_sgemm, host_tiling
from .jit import host_cpu, optimize, target_machine

# drug's sgemm in a library, under the runtime's names (aot/csrc/rt_handle.c): the steps call it,
# and it calls the sgemm given to create() for the products it leaves to a BLAS
LIBRARY_SGEMM, LIBRARY_SGEMM_FALLBACK = "drugrt_sgemm", "drugrt_sgemm_fallback"
LIBRARY_SCONV, LIBRARY_SCONV_FILTER = "drugrt_sconv", "drugrt_sconv_filter"


class Compiled(Protocol):
    """One function of the library: its name and its finished program."""

    name: str
    program: Program


@dataclass(frozen=True)
class Target:
    cpu: str
    features: str
    triple: str


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


def sgemm_module(target: Target, blas_int_bits: int) -> llvm.ModuleRef:
    """drug's sgemm and convolution kernels tiled for the target's vector registers (baseline SSE for a CPU
    named without its features), under the names the runtime's C code links to."""
    tiling = host_tiling(target.features)
    module = llvm.parse_assembly(str(build_sconv(tiling, build_sgemm(tiling, blas_int_bits))))
    module.get_function(ENTRY_SYMBOL).name = LIBRARY_SGEMM
    module.get_function(CONV_SYMBOL).name = LIBRARY_SCONV
    module.get_function(FILTER_SYMBOL).name = LIBRARY_SCONV_FILTER
    module.get_global_variable(FALLBACK_SYMBOL).name = LIBRARY_SGEMM_FALLBACK
    return module


def emit_object(
    functions: list[Compiled], entries: dict[str, str], blob: tuple[str, bytes], target: Target, blas_int_bits: int
) -> bytes:
    """One position-independent object: every function's `drug_step` renamed to its entry symbol,
    drug's sgemm and the data blob."""
    tm = target_machine(target.cpu, target.features, reloc="pic")
    modules = []
    for function in functions:
        builder = ModuleBuilder(function.program.schedule, blas_int_bits, name=function.name, parallel=False)
        try:
            text = str(builder.build())
        except NotImplementedError as error:
            raise GraphError(f"{function.name}: no native code for part of this graph: {error}") from None
        modules.append(_only_entry_visible(llvm.parse_assembly(text), entries[function.name]))
    modules.append(sgemm_module(target, blas_int_bits))
    modules.append(llvm.parse_assembly(blob_module(*blob)))
    linked = modules[0]
    for module in modules[1:]:
        linked.link_in(module)  # kernels are internal: clashing names are renamed
    linked.triple = tm.triple
    linked.data_layout = str(tm.target_data)
    linked.verify()
    optimize(linked, tm)
    return tm.emit_object(linked)

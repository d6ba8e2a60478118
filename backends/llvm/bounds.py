"""The bounds-check debug mode (`DRUG_BOUNDS_CHECK=1`): every load, store, memset/memcpy and GEMM
operand of a kernel is checked against the buffer it addresses before it happens.

Why: a kernel with a wrong size or stride otherwise reads garbage or overwrites a neighbouring
buffer silently (or crashes much later). Checked code never touches memory outside its buffers:
a bad load reads, and a bad store writes, a scratch global instead; a bad memset/memcpy copies
nothing; a bad GEMM runs with M = 0. The first bad access is recorded in the global FAULT (its
site number + 1), the entry function stops after the kernel that made it and returns
STATUS_OUT_OF_BOUNDS, and the runtime names the kernel, the node and the buffer.

The pass rewrites a kernel function after its body is emitted: it strips `inbounds`/`nuw`/`nsw`
(an out-of-range index must stay a plain number, not poison) and inserts the checks. It only
knows the pointer arguments of kernel functions (one per buffer slot); accesses it cannot trace
to one are counted in `unchecked` (the tests require none)."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from ...core.types import format_shape
from .irutil import I32, I64, element_count, i64

ENV = "DRUG_BOUNDS_CHECK"
FAULT = "drug_bounds_fault"  # i32: 1 + the site of the first out-of-bounds access; 0 if none
FAILED_KERNEL = "drug_failed_kernel"  # i32: index of the kernel the step stopped at (entry functions set it)
GEMM_ARITY = 14  # cblas_?gemm(order, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)
_CBLAS_TRANS = 112
_SCRATCH_BYTES = 64  # where a refused load reads and a refused store writes
_UB_FLAGS = {"nuw", "nsw", "exact"}


def enabled() -> bool:
    """Whether kernels compiled now get checks (the compile cache keys on it)."""
    return os.environ.get(ENV, "0") not in ("", "0")


@dataclass(frozen=True)
class Site:
    """One checked access: which function, which pointer argument, what kind of access."""

    function: str
    position: int  # index of the pointer argument, i.e. of the buffer in the kernel's slot list
    buffer: str  # the argument's buffer where the function was built: "temp (None, 4) float32"
    access: str  # "load", "store", "memset", "memcpy source", "gemm A", ...
    nested: bool  # in a kernel of a loop body's schedule (whose slots are not the step's)


_SITES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> its sites, in number order
_UNCHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> accesses not traced to a buffer


def sites(module: ir.Module) -> list[Site]:
    return _SITES.setdefault(module, [])


def unchecked(module: ir.Module) -> list[str]:
    return _UNCHECKED.setdefault(module, [])


def module_global(module: ir.Module, name: str, type_: ir.Type, size: int = 0) -> ir.GlobalVariable:
    """A zero-initialized global of the module (one per module, whoever asks first creates it)."""
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    if size:
        type_ = ir.ArrayType(type_, size)
    variable = ir.GlobalVariable(module, type_, name)
    variable.initializer = ir.Constant(type_, None)
    # external, so that optimization keeps it and the runtime finds it by name; hidden, so that two
    # ahead-of-time libraries loaded in one process do not share it (llvmlite prints the linkage
    # where LLVM reads the visibility)
    variable.linkage = "hidden"
    return variable


def instrument(fn: ir.Function, buffers: dict[ir.Argument, object], batch: ir.Value, nested: bool = False) -> None:
    """Check every access `fn` makes through the pointer arguments in `buffers` (argument ->
    its schedule.Buffer); `batch` is the function's batch argument; `nested`: `fn` belongs to
    the schedule of a loop body."""
    module = fn.module
    fault = module_global(module, FAULT, I32)
    scratch = module_global(module, "drug_bounds_scratch", ir.IntType(8), _SCRATCH_BYTES)
    position = {arg: i for i, arg in enumerate(fn.args)}
    instructions = [instr for block in fn.blocks for instr in block.instructions]
    b = ir.IRBuilder(fn.entry_basic_block)
    b.position_at_start(fn.entry_basic_block)
    limit = {arg: _nbytes(b, buffer, batch) for arg, buffer in buffers.items()}

    def record(ok: ir.Value, base: ir.Argument, access: str) -> None:
        """FAULT = site + 1 unless `ok` or an earlier access already failed."""
        numbers = sites(module)
        buffer = buffers[base]
        described = f"{buffer.kind} {format_shape(buffer.shape)} {buffer.dtype}"
        numbers.append(Site(fn.name, position[base], described, access, nested))
        old = b.load(fault, typ=I32, name="fault.old")
        first = b.and_(b.not_(ok), b.icmp_signed("==", old, ir.Constant(I32, 0)))
        b.store(b.select(first, ir.Constant(I32, len(numbers)), old), fault)

    def within(pointer: ir.Value, base: ir.Argument, nbytes: ir.Value) -> ir.Value:
        """i1: [pointer, pointer + nbytes) lies inside base's buffer (or nbytes is 0)."""
        start = b.sub(b.ptrtoint(pointer, I64), b.ptrtoint(base, I64), name="bounds.offset")
        inside = b.and_(
            b.icmp_signed(">=", start, i64(0)),
            b.icmp_signed("<=", b.add(start, nbytes), limit[base]),
            name="bounds.inside",
        )
        return b.or_(inside, b.icmp_signed("==", nbytes, i64(0)), name="bounds.ok")

    for instr in instructions:
        if hasattr(instr, "flags") and isinstance(instr.flags, list):
            instr.flags[:] = [f for f in instr.flags if f not in _UB_FLAGS]
        if isinstance(instr, ir.GEPInstr):
            instr.inbounds = False
            continue
        if isinstance(instr, (ir.LoadInstr, ir.StoreInstr)):
            pointer = instr.operands[-1]
            base = _traced(module, pointer, buffers, fn.name, instr.opname)
            if base is None:
                continue
            b.position_before(instr)
            value_type = instr.type if isinstance(instr, ir.LoadInstr) else instr.operands[0].type
            ok = within(pointer, base, i64(_size(value_type)))
            record(ok, base, instr.opname)
            instr.replace_usage(pointer, b.select(ok, pointer, scratch, name="bounds.ptr"))
        elif isinstance(instr, ir.CallInstr):
            _check_call(b, instr, buffers, within, record, module, fn.name)


def _check_call(
    b: ir.IRBuilder,
    call: ir.CallInstr,
    buffers: dict,
    within: Callable,
    record: Callable,
    module: ir.Module,
    fn_name: str,
) -> None:
    """memset/memcpy: copy nothing unless both ranges fit; GEMM: M = 0 unless A, B and C fit."""
    callee = call.callee
    name = getattr(callee, "name", "")
    args = list(call.args)
    if isinstance(callee, ir.Function) and name.startswith(("llvm.memset", "llvm.memcpy", "llvm.memmove")):
        b.position_before(call)
        length = args[2]
        checks = [(args[0], "memset" if "memset" in name else f"{name.split('.')[1]} target")]
        if "memset" not in name:
            checks.append((args[1], f"{name.split('.')[1]} source"))
        ok = _all_within(b, checks, length, buffers, within, record, module, fn_name)
        if ok is not None:
            call.replace_usage(length, b.select(ok, length, ir.Constant(length.type, 0), name="bounds.length"))
        return
    fnty = getattr(callee, "function_type", None)
    if isinstance(callee, ir.Function) or fnty is None or len(fnty.args) != GEMM_ARITY:
        return  # the Python callback, libc and thread pool calls: no buffer arguments
    b.position_before(call)
    _, ta, tb, m, n, k, alpha, a, lda, b_, ldb, _, c, ldc = args
    m64, n64, k64, lda64, ldb64, ldc64 = (b.sext(v, I64) if v.type.width < 64 else v for v in (m, n, k, lda, ldb, ldc))
    itemsize = i64(4 if isinstance(alpha.type, ir.FloatType) else 8)

    def extent(rows: ir.Value, cols: ir.Value, ld: ir.Value) -> ir.Value:
        """Bytes a row-major (rows, cols) operand with leading dimension ld spans (0 if empty)."""
        empty = b.or_(b.icmp_signed("<=", rows, i64(0)), b.icmp_signed("<=", cols, i64(0)))
        elements = b.add(b.mul(b.sub(rows, i64(1)), ld), cols)
        return b.select(empty, i64(0), b.mul(elements, itemsize))

    a_shape = (k64, m64) if ta.constant == _CBLAS_TRANS else (m64, k64)
    b_shape = (n64, k64) if tb.constant == _CBLAS_TRANS else (k64, n64)
    checks = [(a, "gemm A", extent(*a_shape, lda64)), (b_, "gemm B", extent(*b_shape, ldb64))]
    checks.append((c, "gemm C", extent(m64, n64, ldc64)))
    ok = None
    for pointer, access, nbytes in checks:
        one = _all_within(b, [(pointer, access)], nbytes, buffers, within, record, module, fn_name)
        if one is not None:
            ok = one if ok is None else b.and_(ok, one)
    if ok is not None:
        call.replace_usage(m, b.select(ok, m, ir.Constant(m.type, 0), name="bounds.m"))


def _all_within(
    b: ir.IRBuilder,
    checks: list[tuple[ir.Value, str]],
    nbytes: ir.Value,
    buffers: dict,
    within: Callable,
    record: Callable,
    module: ir.Module,
    fn_name: str,
) -> ir.Value | None:
    """The i1 "all of `checks` (pointer, access) span nbytes inside their buffers", each recorded
    as a site; None if no pointer is a buffer argument."""
    ok = None
    for pointer, access in checks:
        base = _traced(module, pointer, buffers, fn_name, access)
        if base is None:
            continue
        one = within(pointer, base, nbytes)
        record(one, base, access)
        ok = one if ok is None else b.and_(ok, one)
    return ok


def _traced(module: ir.Module, pointer: ir.Value, buffers: dict, fn_name: str, access: str) -> ir.Argument | None:
    """The buffer argument `pointer` is derived from (through GEPs); None for stack slots, globals
    and the runtime table, which are not buffers. Anything else is reported as unchecked."""
    base = pointer
    while isinstance(base, ir.GEPInstr):
        base = base.pointer
    if base in buffers:
        return base
    if not isinstance(base, (ir.AllocaInstr, ir.GlobalVariable, ir.Argument)):
        unchecked(module).append(f"{fn_name}: {access} through {base.get_reference()}")
    return None


def _nbytes(b: ir.IRBuilder, buffer, batch: ir.Value) -> ir.Value:
    """The buffer's size in bytes at the run-time batch size."""
    count = element_count(b, buffer.shape, batch)
    return b.mul(count, i64(np.dtype(buffer.dtype).itemsize), name="bounds.limit")


def _size(type_: ir.Type) -> int:
    if isinstance(type_, ir.IntType):
        return max(1, type_.width // 8)
    if isinstance(type_, ir.VectorType):
        return type_.count * _size(type_.element)
    if isinstance(type_, ir.PointerType):
        return 8
    return {"float": 4, "double": 8, "half": 2}[str(type_)]

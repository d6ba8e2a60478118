"""The floating-point mode a compiled step runs in: subnormal floats flushed to zero.

A subnormal operand costs a microcode assist of about a hundred cycles on many x86 cores, and
training makes them routinely: Adam's first moment of a weight whose gradient has become zero (a
dead ReLU unit) decays by beta1 every step and is subnormal from about the 800th step on, when an
update kernel then runs several times slower. XLA runs its CPU code with subnormals flushed for
the same reason; so does drug, inside its steps only: the entry restores the caller's mode before
it returns, so NumPy and the rest of the process keep IEEE behaviour. The thread pool's workers
(csrc/drug_pool.c) set the same mode once, as they run nothing but steps' tasks.
"""

from __future__ import annotations

import platform

from llvmlite import ir

from .irutil import I32, I64, PTR

# MXCSR: FTZ (results flushed to zero) and DAZ (subnormal operands read as zero)
_MXCSR_FLUSH = (1 << 15) | (1 << 6)
_FPCR_FLUSH = 1 << 24  # AArch64 FPCR.FZ


def flushing() -> str | None:
    """How this machine's code flushes subnormals: 'x86', 'aarch64', or None (left as it is)."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):
        return "x86"
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    return None


def with_subnormals_flushed(module: ir.Module, inner: ir.Function, name: str) -> ir.Function:
    """A function `name` with `inner`'s signature that calls it with subnormals flushed to zero
    and restores the caller's floating-point mode afterwards (on every path: `inner` returns)."""
    outer = ir.Function(module, inner.function_type, name)
    for arg, inner_arg in zip(outer.args, inner.args):
        arg.name = inner_arg.name
    b = ir.IRBuilder(outer.append_basic_block("entry"))
    kind, set_mode = flushing(), None
    if kind == "x86":
        get = module.declare_intrinsic("llvm.x86.sse.stmxcsr", fnty=ir.FunctionType(ir.VoidType(), [PTR]))
        set_mode = module.declare_intrinsic("llvm.x86.sse.ldmxcsr", fnty=ir.FunctionType(ir.VoidType(), [PTR]))
        saved, flushed = b.alloca(I32, name="mxcsr.caller"), b.alloca(I32, name="mxcsr.step")
        b.call(get, [saved])
        b.store(b.or_(b.load(saved), ir.Constant(I32, _MXCSR_FLUSH)), flushed)
        b.call(set_mode, [flushed])
    elif kind == "aarch64":
        get = module.declare_intrinsic("llvm.aarch64.get.fpcr", fnty=ir.FunctionType(I64, []))
        set_mode = module.declare_intrinsic("llvm.aarch64.set.fpcr", fnty=ir.FunctionType(ir.VoidType(), [I64]))
        saved = b.call(get, [], name="fpcr.caller")
        b.call(set_mode, [b.or_(saved, ir.Constant(I64, _FPCR_FLUSH), name="fpcr.step")])
    result = b.call(inner, list(outer.args), name="status")
    if set_mode is not None:  # the caller's mode back
        b.call(set_mode, [saved])
    b.ret(result)
    return outer

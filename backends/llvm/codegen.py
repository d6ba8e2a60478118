"""LLVM IR for a schedule: one function per kernel and one entry, `drug_step`, that runs them all.

    i32 drug_step(ptr buffers, i64 batch, ptr runtime)

`buffers` holds one pointer per buffer slot (see schedule.Buffer); `runtime` holds the GEMM
functions and the Python callback. A non-zero return is the failing kernel's status (irutil's
STATUS_*); the index of that kernel is then in the global `drug_failed_kernel`. With
DRUG_BOUNDS_CHECK=1 every kernel's memory accesses are checked (compiler/bounds.py)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from ...compiler.fusion import Kernel, is_inline, is_reduction
from ...compiler.scalar import scalar_rule_of
from ...compiler.schedule import Schedule
from ...core.node import Node
from . import bounds
from .irutil import (
    I32,
    I64,
    PTR,
    STATUS_OUT_OF_BOUNDS,
    VOID,
    dim_value,
    element_count,
    for_range,
    i64,
    linear_offset,
    llvm_type,
    loop_nest,
    row_major_strides,
    scalar_constant,
    scalar_type,
    to_scalar,
    to_storage,
)
from .lowering import lowering_of
from .probes import Probe
from .scalar import ScalarEmitter

RUNTIME_SGEMM, RUNTIME_DGEMM, RUNTIME_CALLBACK = 0, 1, 2
GEMM_FRAME = ("fn", "trans_a", "trans_b", "m", "n", "k", "a", "lda", "b", "ldb", "c", "ldc", "beta")
GEMM_SPLIT_MIN = 1 << 18  # multiply-adds: below this one thread does the whole GEMM (OpenBLAS's own rule)
GROUP_FRAME = 4  # a group's frame: buffers, batch, runtime, next-kernel counter, then one status per kernel
GROUP_MIN_WORK = 1 << 14  # elements: below this, waking a thread costs about what running beside saves
CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS = 101, 111, 112


class Callee:
    """An opaque pointer used as a call target (llvmlite wants to know the function type)."""

    def __init__(self, pointer: ir.Value, fnty: ir.FunctionType):
        self.pointer, self.function_type, self.type = pointer, fnty, pointer.type

    def get_reference(self) -> str:
        return self.pointer.get_reference()

    def __getattr__(self, name):
        return getattr(self.pointer, name)


@dataclass
class KernelContext:
    """What a kernel rule (lowering.kernel) builds with: pointers and run-time shapes of its nodes."""

    b: ir.IRBuilder
    batch: ir.Value
    runtime: ir.Value
    schedule: Schedule
    pointers: dict[int, ir.Value]  # slot -> pointer argument
    blas_int: ir.IntType
    builder: ModuleBuilder  # for kernels that compile a sub-schedule (loop bodies)

    def ptr(self, node: Node) -> ir.Value:
        return self.pointers[self.schedule.slot(node)]

    def dims(self, node: Node) -> list[ir.Value]:
        return [dim_value(d, self.batch) for d in node.shape]

    def count(self, node: Node) -> ir.Value:
        return element_count(self.b, node.shape, self.batch)

    def workspace(self, node: Node) -> ir.Value:
        """Pointer to the scratch buffer the schedule allocated for the node (lowering's `workspace`)."""
        return self.pointers[self.schedule.workspaces[node.id]]

    def is_transposed(self, node: Node) -> bool:
        return node.id in self.schedule.transposed

    def element(self, node: Node, offset: ir.Value) -> ir.Value:
        """Pointer to element `offset` of node's buffer."""
        return self.b.gep(self.ptr(node), [offset], source_etype=llvm_type(node.dtype), inbounds=True)

    def load(self, node: Node, offset: ir.Value) -> ir.Value:
        return self.b.load(self.element(node, offset), typ=llvm_type(node.dtype))

    def store(self, node: Node, offset: ir.Value, value: ir.Value) -> None:
        self.b.store(value, self.element(node, offset))

    def fail_unless(self, ok: ir.Value, status: int) -> None:
        """Return `status` from the kernel (and so from the step) when `ok` (an i1) is false."""
        with self.b.if_then(self.b.not_(ok), likely=False):
            self.b.ret(ir.Constant(I32, status))

    def scalar(self, node: Node) -> ScalarEmitter:
        return ScalarEmitter(self.b, scalar_type(node.dtype), self.batch, node)

    def parallel_for(self, name: str, extent: ir.Value, body, worth: ir.Value | None = None, grain: int = 1) -> None:
        """body(ctx, lo, hi) over [0, extent), emitted in a function of its own (`ctx` binds this
        kernel's buffers there): shared out over the OpenMP threads in chunks of `grain` when
        `worth` (an i1; default: always) holds, else run whole on this thread. The body may
        return a status (an i32, 0: fine); a failure ends the kernel with it."""
        status = self.builder.parallel_for(self, name, extent, body, worth, grain)
        with self.b.if_then(self.b.icmp_signed("!=", status, ir.Constant(I32, 0)), likely=False):
            self.b.ret(status)

    def blas_gemm(self, dtype, trans_a: bool, trans_b: bool, m, n, k, a, lda, b_, ldb, c, ldc, beta: float = 0.0):
        """C = op(A) @ op(B) (+ beta C) on this thread, never shared out: for the small blocks of a
        kernel that is itself split over the threads."""
        b = self.b
        real = llvm_type(dtype)
        index = RUNTIME_SGEMM if np.dtype(dtype) == np.float32 else RUNTIME_DGEMM
        fn = b.load(b.gep(self.runtime, [i64(index)], source_etype=PTR, inbounds=True), typ=PTR, name="gemm")
        ta, tb = (ir.Constant(I32, CBLAS_TRANS if t else CBLAS_NO_TRANS) for t in (trans_a, trans_b))
        cblas_gemm(b, fn, self.blas_int, real, ta, tb, m, n, k, a, lda, b_, ldb, ir.Constant(real, beta), c, ldc)

    def gemm(self, dtype, trans_a: bool, trans_b: bool, m, n, k, a, lda, b_, ldb, c, ldc, beta: float = 0.0):
        """C = op(A) @ op(B) (+ beta C), row-major, through the BLAS the runtime passes in."""
        b = self.b
        real = llvm_type(dtype)
        index = RUNTIME_SGEMM if np.dtype(dtype) == np.float32 else RUNTIME_DGEMM
        slot = b.gep(self.runtime, [i64(index)], source_etype=PTR, inbounds=True)
        fn = b.load(slot, typ=PTR, name="gemm")
        if not self.builder.parallel or self.builder.bounds_check:  # the checks read the operands at the call
            ta, tb = (ir.Constant(I32, CBLAS_TRANS if t else CBLAS_NO_TRANS) for t in (trans_a, trans_b))
            cblas_gemm(b, fn, self.blas_int, real, ta, tb, m, n, k, a, lda, b_, ldb, ir.Constant(real, beta), c, ldc)
            return
        # the OpenMP threads share the GEMM out, each calling BLAS (one thread) on its block
        words = dict(fn=fn, trans_a=i64(int(trans_a)), trans_b=i64(int(trans_b)), m=m, n=n, k=k, a=a, lda=lda)
        words.update(b=b_, ldb=ldb, c=c, ldc=ldc, beta=b.bitcast(ir.Constant(ir.DoubleType(), beta), I64))
        frame = pack_frame(b, [words[f] for f in GEMM_FRAME], "gemm.frame")
        size = b.mul(b.mul(m, n), k, name="gemm.size")
        big = b.icmp_unsigned(">=", size, i64(GEMM_SPLIT_MIN), name="gemm.big")
        thread = self.builder.gemm_thread(dtype)
        with b.if_else(big) as (split, whole):
            with split:
                b.call(self.builder.gomp_parallel(), [thread, frame, I32(0), I32(0)])
            with whole:
                b.call(thread, [frame])


def cblas_gemm(b: ir.IRBuilder, fn, blas_int: ir.IntType, real: ir.Type, trans_a, trans_b, m, n, k,
               a, lda, b_, ldb, beta, c, ldc) -> None:  # fmt: skip
    """Call `cblas_?gemm` at address `fn`, row-major, alpha 1: sizes are i64 values (narrowed for
    a 32-bit BLAS), the transpose flags and beta IR values."""

    def cast(v):
        return b.trunc(v, blas_int) if blas_int.width < 64 else v

    bi = blas_int
    fnty = ir.FunctionType(VOID, [I32, I32, I32, bi, bi, bi, real, PTR, bi, PTR, bi, real, PTR, bi])
    args = [ir.Constant(I32, CBLAS_ROW_MAJOR), trans_a, trans_b, cast(m), cast(n), cast(k), ir.Constant(real, 1.0)]
    args += [a, cast(lda), b_, cast(ldb), beta, c, cast(ldc)]
    b.call(Callee(fn, fnty), args)


def pack_frame(b: ir.IRBuilder, values: list[ir.Value], name: str, extra: int = 0) -> ir.Value:
    """A stack array of i64 words holding `values` (pointers as integers), plus `extra` words:
    what GOMP_parallel hands each thread function."""
    frame = b.alloca(I64, size=len(values) + extra, name=name)
    for i, value in enumerate(values):
        word = b.ptrtoint(value, I64) if value.type == PTR else value
        b.store(word, b.gep(frame, [i64(i)], source_etype=I64))
    return frame


class ModuleBuilder:
    def __init__(
        self,
        schedule: Schedule,
        blas_int_bits: int = 64,
        name: str = "drug",
        parallel: bool = False,
        module: ir.Module | None = None,
        prefix: str = "",
        bounds_check: bool | None = None,
        probe: Probe | None = None,
    ):
        self.schedule = schedule
        self.probe = probe  # code around each kernel call (profiling, numerics checks: probes.py)
        self.module = module if module is not None else ir.Module(name=name)
        self.prefix = prefix  # of function names, when several schedules share a module (loop bodies)
        self.blas_int = ir.IntType(blas_int_bits)
        self.parallel = parallel  # split large loops across OpenMP threads (libgomp's GOMP_parallel)
        self.bounds_check = bounds.enabled() if bounds_check is None else bounds_check
        self._checked: list[tuple[ir.Function, list[int]]] = []  # kernel functions to instrument, their slots

    def build(self) -> ir.Module:
        self.entry("drug_step")
        return self.module

    def entry(self, name: str) -> ir.Function:
        """`i32 name(ptr buffers, i64 batch, ptr runtime)` running every kernel in order (the
        schedule's groups of independent kernels at once, on the OpenMP threads)."""
        schedule = self.schedule
        step = ir.Function(self.module, ir.FunctionType(I32, [PTR, I64, PTR]), name)
        table, batch, runtime = step.args
        table.name, batch.name, runtime.name = "buffers", "batch", "runtime"
        b = ir.IRBuilder(step.append_basic_block("entry"))
        self._functions: dict[tuple, ir.Function] = {}  # kernels alike up to their buffers share code
        together = self.parallel and not self.bounds_check and schedule.groups
        for start, end in schedule.groups if together else [(i, i + 1) for i in range(len(schedule.kernels))]:
            if end - start > 1:
                self.emit_group(b, start, end, table, batch, runtime)
            else:
                self.check_status(b, start, self.call_kernel(b, start, table, batch, runtime))
        for source, target in schedule.copies:
            buffer = schedule.buffers[source]
            size = b.mul(element_count(b, buffer.shape, batch), i64(buffer.dtype.itemsize))
            memcpy = self.module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
            src, dst = self.table_pointer(b, table, source), self.table_pointer(b, table, target)
            b.call(memcpy, [dst, src, size, ir.Constant(ir.IntType(1), 0)])
        b.ret(ir.Constant(I32, 0))
        for fn, slots in self._checked if self.bounds_check else ():
            pointers = {arg: schedule.buffers[slot] for arg, slot in zip(fn.args, slots)}
            bounds.instrument(fn, pointers, fn.args[len(slots)], nested=bool(self.prefix))
        return step

    def call_kernel(self, b: ir.IRBuilder, index: int, table, batch, runtime) -> ir.Value:
        """Call kernel `index` with its buffers from the pointer table; returns its status."""
        kernel = self.schedule.kernels[index]
        slots = self.slots_of(kernel)
        key = self.signature(index, kernel, slots)
        if key not in self._functions:
            self._functions[key] = self.kernel_function(index, kernel, slots)
        args = [self.table_pointer(b, table, s) for s in slots] + [batch, runtime]
        token = self.probe.before(b, index) if self.probe else None
        status = b.call(self._functions[key], args, name=f"status{index}")
        return self.probe.after(b, index, token, status, table, batch) if self.probe else status

    def check_status(self, b: ir.IRBuilder, index: int, status: ir.Value) -> None:
        """Stop the step with kernel `index`'s status if it failed (or touched memory it must not)."""
        if self.bounds_check:  # a refused access makes the step stop after its kernel
            fault = b.load(bounds.module_global(self.module, bounds.FAULT, I32), typ=I32, name="fault")
            refused = b.icmp_signed("!=", fault, ir.Constant(I32, 0))
            status = b.select(refused, ir.Constant(I32, STATUS_OUT_OF_BOUNDS), status, name=f"checked{index}")
        failed = b.icmp_signed("!=", status, ir.Constant(I32, 0))
        with b.if_then(failed, likely=False):
            b.store(ir.Constant(I32, index), bounds.module_global(self.module, bounds.FAILED_KERNEL, I32))
            b.ret(status)

    def emit_group(self, b: ir.IRBuilder, start: int, end: int, table, batch, runtime) -> None:
        """Kernels start..end-1, which touch no buffer another of them writes: on the OpenMP
        threads, each taking the next kernel, when two or more are large enough to pay for it,
        else one after the other on this thread (the same group function, called directly).
        Statuses are checked in kernel order afterwards, so a failure names the same kernel."""
        indices = range(start, end)
        large = [b.zext(b.icmp_unsigned(">=", self.work(b, i, batch), i64(GROUP_MIN_WORK)), I64) for i in indices]
        count = functools.reduce(lambda x, y: b.add(x, y), large)
        worth = b.icmp_unsigned(">=", count, i64(2), name=f"group{start}.worth")
        frame = pack_frame(b, [table, batch, runtime, i64(0)], f"group{start}.frame", extra=len(indices))
        group = self.group_function(start, end)
        with b.if_else(worth) as (at_once, in_order):
            with at_once:
                b.call(self.gomp_parallel(), [group, frame, I32(0), I32(0)])
            with in_order:
                b.call(group, [frame])
        for i in indices:
            word = b.load(b.gep(frame, [i64(GROUP_FRAME + i - start)], source_etype=I64), typ=I64)
            self.check_status(b, i, b.trunc(word, I32, name=f"status{i}"))

    def group_function(self, start: int, end: int) -> ir.Function:
        """`void group(ptr frame)`, run by every OpenMP thread: take the next kernel of the group
        (an atomic counter in the frame), run it, store its status in the frame; until none is left."""
        fn = ir.Function(self.module, ir.FunctionType(VOID, [PTR]), f"{self.prefix}group{start}_{end}")
        fn.linkage = "internal"
        frame = fn.args[0]
        frame.name = "frame"
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        word = [b.gep(frame, [i64(i)], source_etype=I64) for i in range(GROUP_FRAME)]
        table = b.inttoptr(b.load(word[0], typ=I64), PTR, name="buffers")
        batch = b.load(word[1], typ=I64, name="batch")
        runtime = b.inttoptr(b.load(word[2], typ=I64), PTR, name="runtime")
        take, done = fn.append_basic_block("take"), fn.append_basic_block("done")
        b.branch(take)
        b.position_at_end(take)
        mine = b.atomic_rmw("add", word[3], i64(1), "monotonic", name="next_kernel")
        switch = b.switch(mine, done)
        for i in range(start, end):
            block = fn.append_basic_block(f"kernel{i}")
            switch.add_case(i64(i - start), block)
            b.position_at_end(block)
            status = self.call_kernel(b, i, table, batch, runtime)
            b.store(b.zext(status, I64), b.gep(frame, [i64(GROUP_FRAME + i - start)], source_etype=I64))
            b.branch(take)
        b.position_at_end(done)
        b.ret_void()
        return fn

    def work(self, b: ir.IRBuilder, index: int, batch: ir.Value) -> ir.Value:
        """Kernel `index`'s size at this batch: its loop's elements, or an op's output elements."""
        kernel = self.schedule.kernels[index]
        dims = kernel.domain if kernel.kind == "loop" else kernel.nodes[0].shape
        return functools.reduce(lambda x, y: b.mul(x, y), [dim_value(d, batch) for d in dims], i64(1))

    def gemm_thread(self, dtype) -> ir.Function:
        """`void gemm_thread(ptr frame)`: this OpenMP thread's block of the GEMM in the frame (rows
        of C when it has more rows than columns, else columns), through BLAS on one thread."""
        real = llvm_type(dtype)
        name = f"drug_gemm_thread.{np.dtype(dtype).name}"
        if name in self.module.globals:
            return self.module.globals[name]
        fn = ir.Function(self.module, ir.FunctionType(VOID, [PTR]), name)
        fn.linkage = "internal"
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        f = {
            field_name: b.load(b.gep(fn.args[0], [i64(i)], source_etype=I64), typ=I64, name=field_name)
            for i, field_name in enumerate(GEMM_FRAME)
        }
        by_rows = b.icmp_unsigned(">=", f["m"], f["n"], name="by_rows")
        lo, hi = self.thread_share(b, b.select(by_rows, f["m"], f["n"], name="extent"))
        with b.if_then(b.icmp_signed("<", lo, hi)):
            part = b.sub(hi, lo, name="part")
            ta, tb = (b.icmp_unsigned("!=", f[t], i64(0)) for t in ("trans_a", "trans_b"))
            # rows lo..hi of op(A) and C, or columns lo..hi of op(B) and C
            a_step = b.select(ta, i64(1), f["lda"])
            b_step = b.select(tb, f["ldb"], i64(1))
            a_off = b.select(by_rows, b.mul(lo, a_step), i64(0))
            b_off = b.select(by_rows, i64(0), b.mul(lo, b_step))
            c_off = b.select(by_rows, b.mul(lo, f["ldc"]), lo)
            m = b.select(by_rows, part, f["m"])
            n = b.select(by_rows, f["n"], part)

            def at(word, offset):
                return b.gep(b.inttoptr(f[word], PTR), [offset], source_etype=real)

            beta = b.bitcast(f["beta"], ir.DoubleType())
            beta = b.fptrunc(beta, real) if real != ir.DoubleType() else beta
            ta, tb = (b.select(t, I32(CBLAS_TRANS), I32(CBLAS_NO_TRANS)) for t in (ta, tb))
            cblas_gemm(b, b.inttoptr(f["fn"], PTR), self.blas_int, real, ta, tb, m, n, f["k"],
                       at("a", a_off), f["lda"], at("b", b_off), f["ldb"], beta, at("c", c_off), f["ldc"])  # fmt: skip
        b.ret_void()
        return fn

    def parallel_for(self, ctx: KernelContext, name: str, extent: ir.Value, body, worth, grain: int) -> ir.Value:
        """KernelContext.parallel_for: `<kernel>.<name>.range(buffers..., batch, runtime, lo, hi)`
        holds the body (which returns a status); `<kernel>.<name>.thread(frame)` runs this
        thread's share of it and records a failure in the frame. Returns the status (0: done)."""
        slots = list(ctx.pointers)
        prefix = f"{ctx.b.function.name}.{name}"
        span, span_ctx = self._function(f"{prefix}.range", slots, [("lo", I64), ("hi", I64)])
        status = body(span_ctx, *span.args[-2:])
        span_ctx.b.ret(ir.Constant(I32, 0) if status is None else status)
        b = ctx.b
        args = [ctx.pointers[s] for s in slots] + [ctx.batch, ctx.runtime]
        if not self.parallel or self.bounds_check:
            return b.call(span, args + [i64(0), extent], name=f"{name}.status")
        types = [PTR] * len(slots) + [I64, PTR, I64]  # then one word for the status
        thread = ir.Function(self.module, ir.FunctionType(VOID, [PTR]), f"{prefix}.thread")
        thread.linkage = "internal"
        tb = ir.IRBuilder(thread.append_basic_block("entry"))
        words = [tb.load(tb.gep(thread.args[0], [i64(i)], source_etype=I64), typ=I64) for i in range(len(types))]
        fields = [tb.inttoptr(w, PTR) if t == PTR else w for w, t in zip(words, types)]
        lo, hi = self.thread_share(tb, fields[-1], grain)
        with tb.if_then(tb.icmp_signed("<", lo, hi)):
            share_status = tb.call(span, fields[:-1] + [lo, hi], name="status")
            with tb.if_then(tb.icmp_signed("!=", share_status, ir.Constant(I32, 0)), likely=False):
                word = tb.gep(thread.args[0], [i64(len(types))], source_etype=I64)
                tb.atomic_rmw("xchg", word, tb.zext(share_status, I64), "monotonic")
        tb.ret_void()
        worth = ir.Constant(ir.IntType(1), 1) if worth is None else worth
        frame = pack_frame(b, args + [extent, i64(0)], f"{name}.frame")
        with b.if_else(worth) as (threaded, serial):
            with threaded:
                b.call(self.gomp_parallel(), [thread, frame, I32(0), I32(0)])
            with serial:
                serial_status = b.call(span, args + [i64(0), extent], name="serial.status")
                b.store(b.zext(serial_status, I64), b.gep(frame, [i64(len(types))], source_etype=I64))
        word = b.load(b.gep(frame, [i64(len(types))], source_etype=I64), typ=I64)
        return b.trunc(word, I32, name=f"{name}.status")

    def thread_share(self, b: ir.IRBuilder, extent: ir.Value, grain: int = 16) -> tuple[ir.Value, ir.Value]:
        """[lo, hi) of 0..extent for this OpenMP thread: equal chunks in whole multiples of
        `grain` (16 elements: whole vectors)."""
        omp = {n: self.module.globals.get(n) or ir.Function(self.module, ir.FunctionType(I32, []), n)
               for n in ("omp_get_thread_num", "omp_get_num_threads")}  # fmt: skip
        tid = b.sext(b.call(omp["omp_get_thread_num"], []), I64, name="tid")
        threads = b.sext(b.call(omp["omp_get_num_threads"], []), I64, name="threads")
        chunk = b.sdiv(b.add(extent, b.sub(threads, i64(1))), threads, name="chunk")
        if grain > 1:
            chunk = b.mul(b.sdiv(b.add(chunk, i64(grain - 1)), i64(grain)), i64(grain), name="chunk.grain")
        lo = b.mul(tid, chunk, name="lo")
        hi = b.select(b.icmp_signed("<", b.add(lo, chunk), extent), b.add(lo, chunk), extent, name="hi")
        return lo, hi

    def gomp_parallel(self) -> ir.Function:
        """libgomp's `GOMP_parallel(fn, data, num_threads, flags)`: fn(data) on every thread."""
        return self.module.globals.get("GOMP_parallel") or ir.Function(
            self.module, ir.FunctionType(VOID, [PTR, PTR, I32, I32]), "GOMP_parallel"
        )

    @staticmethod
    def table_pointer(b: ir.IRBuilder, table: ir.Value, slot: int) -> ir.Value:
        address = b.gep(table, [i64(slot)], source_etype=PTR, inbounds=True)
        return b.load(address, typ=PTR, name=f"buf{slot}")

    def slots_of(self, kernel: Kernel) -> list[int]:
        slots: dict[int, None] = {}
        for node in kernel.nodes:
            for i in node.inputs:
                if i.id in self.schedule.buffer_of and not (kernel.kind == "loop" and is_inline(i)):  # loops: literals
                    slots[self.schedule.slot(i)] = None
        for node in kernel.outputs:
            slots[self.schedule.slot(node)] = None
        for node in kernel.nodes:  # scratch buffers (schedule.workspaces)
            if node.id in self.schedule.workspaces:
                slots[self.schedule.workspaces[node.id]] = None
        return list(slots)

    def signature(self, index: int, kernel: Kernel, slots: list[int]) -> tuple:
        """Everything a kernel's code depends on, with buffers replaced by argument positions:
        an unrolled loop (an RNN over 32 steps) then compiles each distinct kernel once."""
        schedule = self.schedule
        position = {slot: i for i, slot in enumerate(slots)}
        local = {n.id: i for i, n in enumerate(kernel.nodes)}

        def ref(node: Node) -> tuple:
            if node.id in local:
                return ("member", local[node.id])
            if kernel.kind == "loop" and is_inline(node):
                return ("literal", node.op.key())
            slot = schedule.buffer_of.get(node.id)
            return ("arg", position.get(slot), node.shape, node.dtype.str, node.id in schedule.transposed)

        members = tuple(
            (
                n.op.key(),
                n.shape,
                n.dtype.str,
                tuple(ref(i) for i in n.inputs),
                position.get(schedule.buffer_of.get(n.id)),
                position.get(schedule.workspaces.get(n.id)),
            )
            for n in kernel.nodes
        )
        outputs = tuple(local[n.id] for n in kernel.outputs)
        shared = kernel.kind != "callback"  # a callback names its kernel index
        key = (kernel.kind, kernel.domain, members, outputs, len(slots), None if shared else index)
        if self.bounds_check:  # the checks compare with each argument's buffer size
            key += tuple((schedule.buffers[s].shape, schedule.buffers[s].dtype.str) for s in slots)
        return key

    def _function(self, name: str, slots: list[int], extra: list[tuple[str, ir.Type]] = ()) -> tuple:
        """A kernel-shaped function: one noalias pointer per slot, batch, runtime, then `extra`."""
        fnty = ir.FunctionType(I32, [PTR] * len(slots) + [I64, PTR] + [t for _, t in extra])
        fn = ir.Function(self.module, fnty, name)
        fn.linkage = "internal"
        # kernels stay functions (inlining hundreds of call sites only costs compile time), and so
        # does a parallel loop's body: it is called from the serial and the threaded path
        fn.attributes.add("noinline")
        for arg, slot in zip(fn.args, slots):
            arg.name = f"b{slot}"
            arg.add_attribute("noalias")
        for arg, arg_name in zip(fn.args[len(slots) :], ["batch", "runtime"] + [n for n, _ in extra]):
            arg.name = arg_name
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        batch, runtime = fn.args[len(slots) : len(slots) + 2]
        self._checked.append((fn, slots))
        return fn, KernelContext(b, batch, runtime, self.schedule, dict(zip(slots, fn.args)), self.blas_int, self)

    def kernel_function(self, index: int, kernel: Kernel, slots: list[int]) -> ir.Function:
        name = f"{self.prefix}k{index}_{kernel.name}"
        if kernel.kind == "loop" and self.parallel and parallelizable(kernel):
            return self.parallel_loop(name, kernel, slots)
        fn, ctx = self._function(name, slots)
        b = ctx.b
        if kernel.kind == "loop":
            emit_loop(ctx, kernel)
        elif kernel.kind == "op":
            node = kernel.nodes[0]
            lowering_of(node.op).kernel(ctx, node)
        else:
            status = self.emit_callback(ctx, index)
            b.ret(status)
            return fn
        b.ret(ir.Constant(I32, 0))
        return fn

    def parallel_loop(self, name: str, kernel: Kernel, slots: list[int]) -> ir.Function:
        """A loop split over its outermost (collapsed) axis: `name.body` runs a range of it;
        large loops hand `name.thread` to GOMP_parallel, which runs it on every OpenMP thread."""
        body, ctx = self._function(f"{name}.body", slots, [("lo", I64), ("hi", I64)])
        emit_loop(ctx, kernel, outer=tuple(body.args[-2:]))
        ctx.b.ret(ir.Constant(I32, 0))

        frame = [PTR] * len(slots) + [I64, PTR, I64]  # kernel arguments + outer extent, as i64 words
        thread = ir.Function(self.module, ir.FunctionType(VOID, [PTR]), f"{name}.thread")
        thread.linkage = "internal"
        tb = ir.IRBuilder(thread.append_basic_block("entry"))
        words = [tb.load(tb.gep(thread.args[0], [i64(i)], source_etype=I64), typ=I64) for i in range(len(frame))]
        fields = [tb.inttoptr(w, PTR) if t == PTR else w for w, t in zip(words, frame)]
        lo, hi = self.thread_share(tb, fields[-1])
        with tb.if_then(tb.icmp_signed("<", lo, hi)):
            tb.call(body, fields[:-1] + [lo, hi])
        tb.ret_void()

        fn, ctx = self._function(name, slots)
        b = ctx.b
        extents, _ = _loop_plan(ctx, kernel)
        total = functools.reduce(lambda x, y: b.mul(x, y), extents, i64(1))
        args = list(fn.args)
        big = b.icmp_signed(">=", total, i64(PARALLEL_MIN_ELEMENTS), name="big")
        with b.if_else(big) as (threaded, serial):
            with threaded:
                data = pack_frame(b, args + [extents[0]], "frame")
                b.call(self.gomp_parallel(), [thread, data, I32(0), I32(0)])
            with serial:
                b.call(body, args + [i64(0), extents[0]])
        b.ret(ir.Constant(I32, 0))
        return fn

    def emit_callback(self, ctx: KernelContext, index: int) -> ir.Value:
        """Ask the runtime to run kernel `index` with the op's NumPy forward."""
        b = ctx.b
        slot = b.gep(ctx.runtime, [i64(RUNTIME_CALLBACK)], source_etype=PTR, inbounds=True)
        fn = b.load(slot, typ=PTR, name="callback")
        return b.call(Callee(fn, ir.FunctionType(I32, [I64, I64])), [i64(index), ctx.batch])


def _identity(combine: str, type_: ir.Type) -> ir.Constant:
    return ir.Constant(type_, {"add": 0.0, "max": float("-inf"), "min": float("inf")}[combine])


ZERO = i64(0)


def _is_zero(v: ir.Value) -> bool:
    return isinstance(v, ir.Constant) and v.constant == 0


def _read_strides(ctx: KernelContext, node: Node, domain) -> list[ir.Value]:
    """Per domain axis, the element stride reading `node` broadcast over `domain` (0: broadcast)."""
    strides = row_major_strides(ctx.b, node.shape, ctx.batch)
    lead = len(domain) - len(node.shape)
    return [ZERO if a < lead or node.shape[a - lead] == 1 else strides[a - lead] for a in range(len(domain))]


def _reduction_strides(ctx: KernelContext, node: Node, domain) -> list[ir.Value]:
    """Per domain axis, the stride of the output element a reduction accumulates into."""
    reduced = set(node.op.reduced_axes(domain))
    strides = row_major_strides(ctx.b, node.shape, ctx.batch)
    if node.op.keeps_reduced_axes:  # aligned with the domain's trailing axes
        lead = len(domain) - len(node.shape)
        return [ZERO if a in reduced or a < lead else strides[a - lead] for a in range(len(domain))]
    kept = iter(strides)
    return [ZERO if a in reduced else next(kept) for a in range(len(domain))]


def _collapse(b: ir.IRBuilder, extents: list, accesses: dict) -> tuple[list, dict]:
    """Merge neighbouring axes that every access walks alike (all contiguous or all broadcast), so
    that e.g. a (batch, 512) elementwise loop becomes one flat loop that vectorizes best."""
    extents, accesses = list(extents), {k: list(v) for k, v in accesses.items()}
    for a in reversed(range(len(extents) - 1)):
        if all(_is_zero(s[a]) == _is_zero(s[a + 1]) for s in accesses.values()):
            extents[a + 1] = b.mul(extents[a], extents[a + 1], name="extent", flags=("nuw", "nsw"))
            del extents[a]
            for s in accesses.values():
                del s[a]
    return extents, accesses


WINDOW_MAX = 4  # a reduced innermost axis this short is a window (max_pool2d's 2)
PARALLEL_MIN_ELEMENTS = 1 << 17  # below this, waking a second thread costs more than it saves


def parallelizable(kernel: Kernel) -> bool:
    """Map-only loops whose size is not known to be small (reductions stay serial)."""
    if any(is_reduction(n) for n in kernel.nodes) or not kernel.domain:
        return False
    static = [d for d in kernel.domain if d is not None]
    return None in kernel.domain or math.prod(static) >= PARALLEL_MIN_ELEMENTS


def _loop_plan(ctx: KernelContext, kernel: Kernel) -> tuple[list, dict]:
    """The (collapsed) loop extents and, per accessed node, its stride along each loop."""
    domain = kernel.domain
    outputs = {n.id for n in kernel.outputs}
    members = {n.id for n in kernel.nodes}
    accesses: dict[int, list[ir.Value]] = {}
    for node in kernel.nodes:
        for pos, i in enumerate(node.inputs):
            if pos not in node.op.shape_only_inputs and i.id not in members and not is_inline(i):
                accesses[i.id] = _read_strides(ctx, i, domain)
        if is_reduction(node):
            accesses[node.id] = _reduction_strides(ctx, node, domain)
        elif node.id in outputs:
            accesses[node.id] = _read_strides(ctx, node, domain)
    extents, accesses = _collapse(ctx.b, [dim_value(d, ctx.batch) for d in domain], accesses)
    if _window_innermost(kernel, extents, accesses):  # loop over the window outside the axis before it
        extents[-2:] = extents[:-3:-1]
        for strides in accesses.values():
            strides[-2:] = strides[:-3:-1]
    return extents, accesses


def _window_innermost(kernel: Kernel, extents: list, accesses: dict) -> bool:
    """After collapsing, the innermost axis is a tiny reduced one (a pooling window) and the
    axis before it is kept: as the inner loop the window axis would not vectorize; swapped
    outward, the loop over the kept axis does (stride-2 loads become shuffles). Reduction
    kernels never split over threads, so which axis is outermost does not matter."""
    last = extents[-1] if len(extents) >= 2 else None
    if not isinstance(last, ir.Constant) or last.constant > WINDOW_MAX:
        return False
    reduced = [n for n in kernel.nodes if is_reduction(n)]
    return bool(reduced) and all(_is_zero(accesses[n.id][-1]) and not _is_zero(accesses[n.id][-2]) for n in reduced)


def emit_loop(ctx: KernelContext, kernel: Kernel, outer: tuple[ir.Value, ir.Value] | None = None) -> None:
    """One loop nest over the kernel's domain computing every member per element; `outer`
    restricts the outermost loop to [lo, hi) for a thread's share."""
    b = ctx.b
    outputs = {n.id for n in kernel.outputs}
    for node in kernel.nodes:  # reductions start from their identity
        if is_reduction(node):
            identity = _identity(node.op.combine, llvm_type(node.dtype))
            with for_range(b, ctx.count(node), "fill") as i:
                ctx.store(node, i, identity)
    extents, accesses = _loop_plan(ctx, kernel)
    with loop_nest(b, extents, first=outer) as index:
        values: dict[int, ir.Value] = {}

        def offset(node: Node) -> ir.Value:
            return linear_offset(b, list(zip(index, accesses[node.id])))

        def value(node: Node) -> ir.Value:
            if node.id not in values:
                if is_inline(node):
                    return scalar_constant(node.dtype, node.op.value.reshape(()))
                values[node.id] = to_scalar(b, node.dtype, ctx.load(node, offset(node)))
            return values[node.id]

        for node in kernel.nodes:
            if is_reduction(node):
                at = offset(node)
                acc, x = ctx.load(node, at), value(node.inputs[0])
                ctx.store(node, at, ctx.scalar(node).accumulate(node.op.combine, acc, x))
                continue
            skip = node.op.shape_only_inputs
            args = [None if pos in skip else value(i) for pos, i in enumerate(node.inputs)]
            values[node.id] = scalar_rule_of(node.op)(ctx.scalar(node), *args)
            if node.id in outputs:
                ctx.store(node, offset(node), to_storage(b, node.dtype, values[node.id]))

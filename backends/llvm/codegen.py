"""LLVM IR for a schedule: one function per kernel and one entry, `drug_step`, that runs them all.

    i32 drug_step(ptr buffers, i64 batch, ptr runtime)

`buffers` holds one pointer per buffer slot (see schedule.Buffer); `runtime` holds the GEMM
functions and the Python callback. A non-zero return is the failing kernel's status (irutil's
STATUS_*); the index of that kernel is then in the global `drug_failed_kernel`. With
DRUG_BOUNDS_CHECK=1 every kernel's memory accesses are checked (compiler/bounds.py)."""

from __future__ import annotations

import functools
import itertools
import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from ...compiler.fusion import Kernel, is_inline, is_reduction
from ...compiler.scalar import scalar_rule_of
from ...compiler.schedule import Schedule
from ...core.node import Node
from . import bounds, parallel
from .fpmode import with_subnormals_flushed
from .gemm import ALIGN, CONV_TYPE, FILTER_TYPE, prepacked_panel
from .irutil import (
    I32,
    I64,
    PTR,
    STATUS_OUT_OF_BOUNDS,
    VOID,
    Callee,
    aligned,
    declared,
    dim_value,
    element_count,
    for_range,
    has_loop,
    i64,
    linear_offset,
    llvm_type,
    loop_nest,
    row_major_strides,
    scalar_constant,
    scalar_type,
    skip_optimizer,
    to_scalar,
    to_storage,
)
from .lowering import lowering_of, rebase
from .probes import Probe
from .scalar import ScalarEmitter

# runtime table slots
RUNTIME_SGEMM, RUNTIME_DGEMM, RUNTIME_CALLBACK, RUNTIME_SCONV, RUNTIME_SCONV_FILTER, RUNTIME_SGEMM_PACKED = range(6)
RUNTIME_SGEMM_PACK = 6  # gemm.PACK_SYMBOL, 0 where GEMMs go to the BLAS
RUNTIME_SLOTS = 7
GEMM_FRAME = ("fn", "trans_a", "trans_b", "m", "n", "k", "a", "lda", "b", "ldb", "c", "ldc", "beta", "chunk", "bias")
GEMM_SPLIT_MIN = 1 << 18  # multiply-adds: below this one thread does the whole GEMM, above it two at least
# a product of fewer rows than this counts as this many: it streams all of B for each row (memory
# bound), so reading B costs about what multiplying this many rows by it does
GEMM_MIN_ROWS = 4
# a shared-out GEMM's blocks: about this many multiply-adds each, at most this many, in rows or
# columns of this multiple (each block packs the other operand again: not too small; a multiple of
# the sgemm's tile, 8 x 32 with AVX-512, so that no block ends in a partly empty tile)
GEMM_TASK_WORK, GEMM_MAX_TASKS, GEMM_ALIGN = 1 << 20, 8, 32
PARALLEL_FOR_MAX_TASKS = 16  # KernelContext.parallel_for: more tasks than threads, each `grain` long at least
GROUP_FRAME = 4  # a group's frame: buffers, batch, runtime, first kernel, then one status per kernel
GROUP_MIN_WORK = 1 << 14  # elements: below this, waking a thread costs about what running beside saves
CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS = 101, 111, 112


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
    in_task: bool = False  # code of one task of a job on the pool: its GEMMs call BLAS directly
    rebased: bool = False  # the op's inputs arrive moved to where it starts reading (lowering.rebase)

    def ptr(self, node: Node) -> ir.Value:
        return self.pointers[self.schedule.slot(node)]

    def dims(self, node: Node) -> list[ir.Value]:
        return [dim_value(d, self.batch) for d in node.shape]

    def count(self, node: Node) -> ir.Value:
        return element_count(self.b, node.shape, self.batch)

    def workspace(self, node: Node) -> ir.Value:
        """Pointer to the scratch buffer the schedule allocated for the node (lowering's `workspace`)."""
        return self.pointers[self.schedule.workspaces[node.id]]

    def copies_only(self) -> None:
        """Say that this kernel's code is memcpy calls and the loops around them, which LLVM's
        optimizer cannot improve: it skips the function (about a millisecond less to compile
        for each of an unrolled RNN's slices, one per time step)."""
        skip_optimizer(self.b.function)

    def is_transposed(self, node: Node) -> bool:
        return node.id in self.schedule.transposed

    def prepacked(self, node: Node) -> bool:
        """Whether node's buffer holds a constant packed for the sgemm (prepack.py)."""
        return self.schedule.slot(node) in self.builder.prepacked

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
        kernel's buffers there): shared out over the pool in tasks of whole multiples of `grain` when
        `worth` (an i1; default: always) holds, else run whole on this thread. The body may
        return a status (an i32, 0: fine); a failure ends the kernel with it."""
        status = self.builder.parallel_for(self, name, extent, body, worth, grain)
        with self.b.if_then(self.b.icmp_signed("!=", status, ir.Constant(I32, 0)), likely=False):
            self.b.ret(status)

    def gemm(self, dtype, trans_a: bool, trans_b: bool, m, n, k, a, lda, b_, ldb, c, ldc, beta: float = 0.0,
             bias: ir.Value | None = None, relu: bool = False, packed: bool = False):  # fmt: skip
        """C = op(A) @ op(B) (+ beta C), row-major, through the BLAS the runtime passes in; code of
        a task (a parallel_for body included) calls it on its own thread. `bias` (a vector, one per
        column): then C + bias, and a relu if `relu`, each block finished by the thread that
        computed it. `packed`: B is a float32 constant packed ahead of time (prepack.py), which
        `gemm.PACKED_SYMBOL` reads; its columns from j on start at b + j*k, as those of a
        transposed B with ldb = k do, so the blocks of a shared-out GEMM find theirs alike."""
        b = self.b
        real = llvm_type(dtype)
        index = RUNTIME_SGEMM if np.dtype(dtype) == np.float32 else RUNTIME_DGEMM
        if packed:
            index, trans_b, ldb = RUNTIME_SGEMM_PACKED, True, k
        fn = self.runtime_entry(index, "gemm")
        finish = BiasEpilogue(relu) if bias is not None else None
        if not self.builder.parallel or self.builder.bounds_check or self.in_task:  # the checks read the operands
            ta, tb = (ir.Constant(I32, CBLAS_TRANS if t else CBLAS_NO_TRANS) for t in (trans_a, trans_b))
            cblas_gemm(b, fn, self.blas_int, real, ta, tb, m, n, k, a, lda, b_, ldb, ir.Constant(real, beta), c, ldc)
            if finish is not None:
                finish(b, real, c, ldc, m, n, bias)
            return
        # large GEMMs are shared out over the pool, a task calling BLAS (one thread) on a block of
        # rows of C (when it has more rows than columns) or of columns
        rows = b.select(b.icmp_unsigned("<", m, i64(GEMM_MIN_ROWS)), i64(GEMM_MIN_ROWS), m, name="gemm.rows")
        size = b.mul(b.mul(rows, n), k, name="gemm.size")
        by_rows = b.icmp_unsigned(">=", m, n, name="gemm.by_rows")
        extent = b.select(by_rows, m, n, name="gemm.extent")
        chunk, tasks = parallel.split(b, extent, size, GEMM_TASK_WORK, GEMM_MAX_TASKS, GEMM_ALIGN, min_tasks=2)
        big = b.icmp_unsigned(">=", size, i64(GEMM_SPLIT_MIN), name="gemm.big")
        tasks = b.select(big, tasks, i64(1), name="gemm.tasks")
        chunk = b.select(big, chunk, extent, name="gemm.chunk")
        words = dict(fn=fn, trans_a=i64(int(trans_a)), trans_b=i64(int(trans_b)), m=m, n=n, k=k, a=a, lda=lda)
        words.update(b=b_, ldb=ldb, c=c, ldc=ldc, beta=b.bitcast(ir.Constant(ir.DoubleType(), beta), I64), chunk=chunk)
        words.update(bias=b.ptrtoint(bias, I64) if bias is not None else i64(0))
        scratch = None
        if index == RUNTIME_SGEMM:
            by_blocks_of_rows = b.and_(by_rows, b.icmp_unsigned(">", tasks, i64(2)), name="gemm.by_blocks_of_rows")
            scratch = self._pack_once(words, by_blocks_of_rows)
        frame = parallel.pack_frame(b, [words[f] for f in GEMM_FRAME], "gemm.frame")
        task = self.builder.gemm_task(dtype, finish)
        with b.if_else(big) as (split, whole):
            with split:
                b.call(parallel.pool_run(b.module), [task, frame, tasks])
            with whole:
                b.call(task, [frame, i64(0)])
        if scratch is not None:
            b.call(declared(b.module, "free", VOID, [PTR]), [scratch])

    def _pack_once(self, words: dict, wanted: ir.Value) -> ir.Value | None:
        """For a float32 GEMM shared out by blocks of rows when `wanted` (an i1): op(B) packed
        here, once, into memory of its own (returned, to be freed after the tasks; null when it
        is not packed), and `words` (the GEMM's frame) changed so that the tasks' sgemm reads
        the panels (gemm.PACKED_SYMBOL): each block would otherwise pack all of B again. None
        where GEMMs go to the BLAS (DRUG_GEMM=blas), which has no such entry."""
        panel = prepacked_panel()
        if panel is None:
            return None
        b = self.b
        pack = self.runtime_entry(RUNTIME_SGEMM_PACK, "pack")
        wanted = b.and_(wanted, b.icmp_unsigned("!=", b.ptrtoint(pack, I64), i64(0)), name="pack_once")
        n, k = words["n"], words["k"]
        floats = b.mul(b.mul(b.udiv(b.add(n, i64(panel - 1)), i64(panel)), i64(panel)), k, name="panels.floats")
        before = b.block
        with b.if_then(wanted):
            allocated = b.call(declared(b.module, "malloc", PTR, [I64]), [b.add(b.mul(floats, i64(4)), i64(ALIGN))])
            allocating = b.block
        scratch = b.phi(PTR, name="panels.memory")
        scratch.add_incoming(ir.Constant(PTR, None), before)
        scratch.add_incoming(allocated, allocating)
        packed = b.icmp_unsigned("!=", b.ptrtoint(scratch, I64), i64(0), name="packed_once")
        panels = aligned(b, scratch, ALIGN, "panels")
        with b.if_then(packed):
            pack_type = ir.FunctionType(VOID, [I64, I64, I64, PTR, I64, PTR])
            b.call(Callee(pack, pack_type), [words["trans_b"], n, k, words["b"], words["ldb"], panels])
        words["fn"] = b.select(packed, self.runtime_entry(RUNTIME_SGEMM_PACKED, "packed"), words["fn"], name="gemm.fn")
        words["b"] = b.select(packed, panels, words["b"], name="gemm.b")
        words["ldb"] = b.select(packed, k, words["ldb"], name="gemm.ldb")
        return scratch

    def conv(self, *args) -> None:
        """drug's float32 convolution (gemm.CONV_SYMBOL, its arguments) through the runtime table,
        on this thread; int arguments become constants."""
        self._runtime_call(RUNTIME_SCONV, CONV_TYPE, "sconv", args)

    def conv_filter(self, *args) -> None:
        """drug's float32 convolution filter gradient (gemm.FILTER_SYMBOL), like `conv`."""
        self._runtime_call(RUNTIME_SCONV_FILTER, FILTER_TYPE, "sconv_filter", args)

    def _runtime_call(self, index: int, type_: ir.FunctionType, name: str, args) -> None:
        fn = Callee(self.runtime_entry(index, name), type_)
        self.b.call(fn, [i64(v) if isinstance(v, int) else v for v in args])

    def runtime_entry(self, index: int, name: str) -> ir.Value:
        """The function pointer in slot `index` of the runtime's table (RUNTIME_*)."""
        slot = self.b.gep(self.runtime, [i64(index)], source_etype=PTR, inbounds=True)
        return self.b.load(slot, typ=PTR, name=name)

    @contextmanager
    def tasks(self, count: ir.Value, name: str):
        """`with k.tasks(count, "images") as (t, task):` the block's code, built with `t` (a context
        whose pointers are this kernel's), runs once per task 0..count-1, the tasks shared out over
        the pool; `t.thread()` tells which thread runs a task (for scratch memory of its own)."""
        slots = list(self.pointers)
        outer = self.b.function.name
        body, t = self.builder._function(f"{outer}.{name}", slots, [("task", I64)])
        t.in_task = True
        yield t, body.args[-1]
        t.b.ret(ir.Constant(I32, 0))
        args = [self.pointers[s] for s in slots] + [self.batch, self.runtime]
        b = self.b
        if not self.builder.parallel or self.builder.bounds_check:
            with for_range(b, count, name) as task:
                b.call(body, args + [task])
            return
        task_fn, tb, frame, task = parallel.task_function(self.module, f"{outer}.{name}.task")
        fields = parallel.unpack_frame(tb, frame, [PTR] * len(slots) + [I64, PTR])
        tb.call(body, fields + [task])
        tb.ret_void()
        b.call(parallel.pool_run(self.module), [task_fn, parallel.pack_frame(b, args, f"{name}.frame"), count])

    @property
    def module(self) -> ir.Module:
        return self.b.module

    def thread(self) -> ir.Value:
        """Which thread runs this code: 0 .. thread_slots()-1 (always 0 in serial code)."""
        if not self.builder.parallel or self.builder.bounds_check:
            return i64(0)
        return self.b.call(parallel.thread_index(self.module), [], name="thread")


@dataclass(frozen=True)
class BiasEpilogue:
    """What finishes a GEMM (matmul_bias): C + a bias vector per column, then a relu if `relu`.
    It holds no IR value: the kernel and the GEMM's task function each pass their own pointer."""

    relu: bool

    @property
    def name(self) -> str:
        return "bias_relu" if self.relu else "bias"

    def __call__(self, b: ir.IRBuilder, real: ir.Type, c, ldc, rows, cols, vector) -> None:
        """The rows x cols block at `c` (rows ldc apart), `vector` the bias of its first column."""
        zero = ir.Constant(real, 0.0)
        with for_range(b, rows, "bias.row") as r:
            row = b.gep(c, [b.mul(r, ldc)], source_etype=real, name="bias.c_row")
            with for_range(b, cols, "bias.col") as j:
                at = b.gep(row, [j], source_etype=real, name="bias.c")
                add = b.load(b.gep(vector, [j], source_etype=real, name="bias.at"), typ=real, name="bias")
                value = b.fadd(b.load(at, typ=real), add, name="biased")
                if self.relu:  # NaN stays NaN, like np.maximum
                    value = b.select(b.fcmp_ordered(">", zero, value), zero, value, name="finished")
                b.store(value, at)


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
        prepacked: frozenset[int] = frozenset(),
    ):
        self.schedule = schedule
        self.prepacked = prepacked  # slots of constants packed for the sgemm (prepack.py)
        self.probe = probe  # code around each kernel call (profiling, numerics checks: probes.py)
        self.module = module if module is not None else ir.Module(name=name)
        self.prefix = prefix  # of function names, when several schedules share a module (loop bodies)
        self.blas_int = ir.IntType(blas_int_bits)
        self.parallel = parallel  # share large loops, GEMMs and kernel groups out over the thread pool
        self.bounds_check = bounds.enabled() if bounds_check is None else bounds_check
        self._checked: list[tuple[ir.Function, list[int]]] = []  # kernel functions to instrument, their slots

    def build(self) -> ir.Module:
        """The module, its entry `drug_step` running the kernels with subnormals flushed (fpmode.py)."""
        skip_optimizer(with_subnormals_flushed(self.module, self.entry("drug_step.run"), "drug_step"))
        return self.module

    def entry(self, name: str) -> ir.Function:
        """`i32 name(ptr buffers, i64 batch, ptr runtime)` running every kernel in order (the
        schedule's groups of independent kernels at once, on the thread pool).

        Its code does not grow with the number of kernels: constant tables say which code each
        kernel runs on which buffers, `name.kernel` runs kernel i, and one loop goes through the
        kernels (an unrolled RNN has hundreds of them but a few dozen distinct ones; straight-line
        calls made the entry the largest function of the module and its slowest to compile)."""
        schedule, count = self.schedule, len(self.schedule.kernels)
        step = ir.Function(self.module, ir.FunctionType(I32, [PTR, I64, PTR]), name)
        table, batch, runtime = step.args
        table.name, batch.name, runtime.name = "buffers", "batch", "runtime"
        self._functions: dict[tuple, tuple[int, ir.Function]] = {}  # kernels alike up to their buffers share code
        together = self.parallel and not self.bounds_check and schedule.groups
        groups = schedule.groups if together else [(i, i + 1) for i in range(count)]
        run = self.dispatch_function(f"{name}.kernel")
        ends = [0] * count
        for start, end in groups:
            ends[start] = end
        b = ir.IRBuilder(step.append_basic_block("entry"))
        statuses = None
        if any(end - start > 1 for start, end in groups):
            widest = max(end - start for start, end in groups)
            statuses = parallel.pack_frame(b, [table, batch, runtime, i64(0)], "group.frame", extra=widest)
        group_end = self.constant_table(f"{name}.group_end", I32, ends)
        before, cond = b.block, step.append_basic_block("kernel.cond")
        body, done = step.append_basic_block("kernel.body"), step.append_basic_block("kernel.end")
        b.branch(cond)
        b.position_at_end(cond)
        index = b.phi(I64, name="kernel")
        index.add_incoming(i64(0), before)
        b.cbranch(b.icmp_signed("<", index, i64(count)), body, done)
        b.position_at_end(body)
        end = b.sext(self.table_entry(b, group_end, index), I64, name="group_end")
        if statuses is None:
            self.check_status(b, index, b.call(run, [table, index, batch, runtime], name="status"))
        else:
            alone = b.icmp_signed("==", end, b.add(index, i64(1)), name="alone")
            with b.if_else(alone) as (one, several):
                with one:
                    self.check_status(b, index, b.call(run, [table, index, batch, runtime], name="status"))
                with several:
                    self.emit_group(b, index, end, batch, statuses, f"{name}.group", run)
        index.add_incoming(end, b.block)
        b.branch(cond)
        b.position_at_end(done)
        for source, target in schedule.copies:
            buffer = schedule.buffers[source]
            size = b.mul(element_count(b, buffer.shape, batch), i64(buffer.dtype.itemsize))
            memcpy = self.module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
            src, dst = self.table_pointer(b, table, source), self.table_pointer(b, table, target)
            b.call(memcpy, [dst, src, size, ir.Constant(ir.IntType(1), 0)])
        b.ret(ir.Constant(I32, 0))
        # the hubs: a kernel loop, a table-driven dispatch of a few hundred cases, group tasks
        for hub in (step, run, self.module.globals.get(f"{name}.group")):
            if hub is not None:
                skip_optimizer(hub)
        for fn, slots in self._checked if self.bounds_check else ():
            pointers = {arg: schedule.buffers[slot] for arg, slot in zip(fn.args, slots)}
            bounds.instrument(fn, pointers, fn.args[len(slots)], nested=bool(self.prefix))
        return step

    def dispatch_function(self, name: str) -> ir.Function:
        """`i32 name(ptr buffers, i64 index, i64 batch, ptr runtime)`: run kernel `index` (its
        function, with its buffers from the pointer table) and return its status.

        One loop gathers the kernel's pointers (its slots in a constant table, each moved by its
        shift if any kernel is rebased) into an array, and one case per distinct function calls
        it with them: the dispatch grows by a few lines per function, not per pointer and kernel."""
        kernels = self.schedule.kernels
        fn = ir.Function(self.module, ir.FunctionType(I32, [PTR, I64, I64, PTR]), name)
        fn.linkage = "internal"
        table, index, batch, runtime = fn.args
        table.name, index.name, batch.name, runtime.name = "buffers", "index", "batch", "runtime"
        cases, slot_lists, shift_lists = [], [], []
        for i in range(len(kernels)):
            case, slots = self.kernel_case(i)
            cases.append(case)
            slot_lists.append(slots)
            shift_lists.append(self.shifts(kernels[i], slots))
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        if self.probe is not None:  # instrumented builds: one case per kernel, the probe around its call
            self.probed_cases(fn, b, cases, slot_lists, shift_lists)
            return fn
        starts = list(itertools.accumulate(map(len, slot_lists), initial=0))  # kernel i: slots starts[i]..starts[i+1]
        widest = max(map(len, slot_lists), default=0)
        arguments = b.alloca(PTR, size=max(widest, 1), name="arguments")
        case = self.table_entry(b, self.constant_table(f"{name}.case", I32, cases), index, "case")
        start_table = self.constant_table(f"{name}.first_slot", I32, starts)
        first = b.sext(self.table_entry(b, start_table, index, "first_slot"), I64)
        end = b.sext(self.table_entry(b, start_table, b.add(index, i64(1)), "end_slot"), I64)
        slot_table = self.constant_table(f"{name}.slots", I32, [s for slots in slot_lists for s in slots])
        shifts = [s for shifts in shift_lists for s in shifts]
        shift_table = self.constant_table(f"{name}.shifts", I64, shifts) if any(shifts) else None
        with for_range(b, b.sub(end, first), "argument") as j:
            at = b.add(first, j)
            slot = b.sext(self.table_entry(b, slot_table, at, "slot"), I64)
            pointer = b.load(b.gep(table, [slot], source_etype=PTR, inbounds=True), typ=PTR, name="buffer")
            if shift_table is not None:
                shift = self.table_entry(b, shift_table, at, "shift")
                pointer = b.gep(pointer, [shift], source_etype=ir.IntType(8), inbounds=True, name="moved")
            b.store(pointer, b.gep(arguments, [j], source_etype=PTR))
        unknown = fn.append_basic_block("unknown")
        switch = b.switch(case, unknown)
        for number, function in sorted(self._functions.values(), key=lambda item: item[0]):
            block = fn.append_basic_block(f"case{number}")
            switch.add_case(ir.Constant(I32, number), block)
            b.position_at_end(block)
            pointers = [
                b.load(b.gep(arguments, [i64(j)], source_etype=PTR), typ=PTR, name=f"arg{j}")
                for j in range(len(function.args) - 2)
            ]
            b.ret(b.call(function, pointers + [batch, runtime], name="status"))
        b.position_at_end(unknown)
        b.unreachable()
        return fn

    def probed_cases(self, fn: ir.Function, b: ir.IRBuilder, cases: list[int], slot_lists: list[list[int]],
                     shift_lists: list[list[int]]) -> None:  # fmt: skip
        """The dispatch of an instrumented build: a case per kernel (not per distinct function), so
        the probe (probes.py) knows at compile time which kernel it surrounds."""
        table, index, batch, runtime = fn.args
        functions = {number: function for number, function in self._functions.values()}
        unknown = fn.append_basic_block("unknown")
        switch = b.switch(index, unknown)
        for i, (case, slots, shifts) in enumerate(zip(cases, slot_lists, shift_lists)):
            block = fn.append_basic_block(f"kernel{i}")
            switch.add_case(i64(i), block)
            b.position_at_end(block)
            pointers = [self.table_pointer(b, table, slot) for slot in slots]
            pointers = [b.gep(p, [i64(s)], source_etype=ir.IntType(8)) if s else p for p, s in zip(pointers, shifts)]
            token = self.probe.before(b, i)
            status = b.call(functions[case], pointers + [batch, runtime], name=f"status{i}")
            b.ret(self.probe.after(b, i, token, status, table, batch))
        b.position_at_end(unknown)
        b.unreachable()

    def kernel_case(self, index: int) -> tuple[int, list[int]]:
        """The dispatch case of kernel `index` (kernels alike up to their buffers share one, and
        their code) and the buffer slots it runs on."""
        kernel = self.schedule.kernels[index]
        slots = self.slots_of(kernel)
        key = self.signature(index, kernel, slots)
        if key not in self._functions:
            self._functions[key] = (len(self._functions), self.kernel_function(index, kernel, slots))
        return self._functions[key][0], slots

    def constant_table(self, name: str, type_: ir.IntType, values: list[int]) -> ir.GlobalVariable:
        """An internal constant array of integers (at least one element)."""
        values = list(values) or [0]
        array = ir.ArrayType(type_, len(values))
        g = ir.GlobalVariable(self.module, array, name)
        g.initializer = ir.Constant(array, [ir.Constant(type_, v) for v in values])
        g.global_constant, g.linkage = True, "internal"
        return g

    @staticmethod
    def table_entry(b: ir.IRBuilder, g: ir.GlobalVariable, index: ir.Value, name: str = "") -> ir.Value:
        element = g.value_type.element
        return b.load(b.gep(g, [i64(0), index], source_etype=g.value_type, inbounds=True), typ=element, name=name)

    def check_status(self, b: ir.IRBuilder, index: ir.Value, status: ir.Value) -> None:
        """Stop the step with kernel `index`'s status if it failed (or touched memory it must not)."""
        if self.bounds_check:  # a refused access makes the step stop after its kernel
            fault = b.load(bounds.module_global(self.module, bounds.FAULT, I32), typ=I32, name="fault")
            refused = b.icmp_signed("!=", fault, ir.Constant(I32, 0))
            status = b.select(refused, ir.Constant(I32, STATUS_OUT_OF_BOUNDS), status, name="checked")
        failed = b.icmp_signed("!=", status, ir.Constant(I32, 0))
        with b.if_then(failed, likely=False):
            b.store(b.trunc(index, I32), bounds.module_global(self.module, bounds.FAILED_KERNEL, I32))
            b.ret(status)

    def emit_group(self, b: ir.IRBuilder, start, end, batch, frame: ir.Value, name: str, run: ir.Function) -> None:
        """Kernels start..end-1, which touch no buffer another of them writes: one task each on
        the pool when two or more are large enough to pay for it, else one after the other on
        this thread (the same task function, called directly). Statuses are checked in kernel
        order afterwards, so a failure names the same kernel."""
        size = b.sub(end, start, name="group_size")
        minimum = [self.batch_for_group(i) for i in range(len(self.schedule.kernels))]
        minimum_batch = self.constant_table(f"{name}.minimum_batch", I64, minimum)
        large = b.alloca(I64, name="large")
        b.store(i64(0), large)
        with for_range(b, end, "member", start=start) as i:
            worth_one = b.icmp_signed(">=", batch, self.table_entry(b, minimum_batch, i))
            b.store(b.add(b.load(large, typ=I64), b.zext(worth_one, I64)), large)
        b.store(start, b.gep(frame, [i64(3)], source_etype=I64))
        task_fn = self.group_function(name, run)
        worth = b.icmp_unsigned(">=", b.load(large, typ=I64), i64(2), name="worth")
        with b.if_else(worth) as (at_once, in_order):
            with at_once:
                b.call(parallel.pool_run(self.module), [task_fn, frame, size])
            with in_order:
                with for_range(b, size, "in_order") as i:
                    b.call(task_fn, [frame, i])
        with for_range(b, size, "checked") as i:
            word = b.load(b.gep(frame, [b.add(i, i64(GROUP_FRAME))], source_etype=I64), typ=I64)
            self.check_status(b, b.add(start, i), b.trunc(word, I32, name="member_status"))

    def group_function(self, name: str, run: ir.Function) -> ir.Function:
        """The groups' task function: task i of the group starting at kernel `start` (frame word
        3) runs kernel start+i and stores its status in the frame."""
        if name in self.module.globals:
            return self.module.globals[name]
        fn, b, frame, task = parallel.task_function(self.module, name)
        table, batch, runtime, start = parallel.unpack_frame(b, frame, [PTR, I64, PTR, I64])
        status = b.call(run, [table, b.add(start, task, name="index"), batch, runtime], name="status")
        b.store(b.zext(status, I64), b.gep(frame, [b.add(task, i64(GROUP_FRAME))], source_etype=I64))
        b.ret_void()
        return fn

    def batch_for_group(self, index: int) -> int:
        """The smallest batch size at which kernel `index` is large enough to take a task of
        its own in a group (its loop's elements, or its op's output elements, at least
        GROUP_MIN_WORK); 2^62 if never."""
        kernel = self.schedule.kernels[index]
        dims = kernel.domain if kernel.kind == "loop" else kernel.nodes[0].shape
        static = math.prod(d for d in dims if d is not None)
        axes = sum(d is None for d in dims)
        if static >= GROUP_MIN_WORK:
            return 0
        if not axes or static == 0:
            return 1 << 62
        batch = math.ceil((GROUP_MIN_WORK / static) ** (1 / axes))
        while batch > 1 and static * (batch - 1) ** axes >= GROUP_MIN_WORK:  # float rounding
            batch -= 1
        return batch

    def gemm_task(self, dtype, finish: BiasEpilogue | None = None) -> ir.Function:
        """The task function of a shared-out GEMM: block `task` of the GEMM in the frame (rows of
        C when it has more rows than columns, else columns), through BLAS on one thread; with
        `finish`, the block is then finished with the bias in the frame."""
        real = llvm_type(dtype)
        name = f"drug_gemm_task.{np.dtype(dtype).name}" + (f".{finish.name}" if finish is not None else "")
        if name in self.module.globals:
            return self.module.globals[name]
        fn, b, frame, task = parallel.task_function(self.module, name, optimize=finish is not None)  # its epilogue loop
        f = {word: parallel.frame_word(b, frame, i, word) for i, word in enumerate(GEMM_FRAME)}
        by_rows = b.icmp_unsigned(">=", f["m"], f["n"], name="by_rows")
        lo, hi = parallel.task_range(b, task, f["chunk"], b.select(by_rows, f["m"], f["n"], name="extent"))
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
            if finish is not None:
                finish(b, real, at("c", c_off), f["ldc"], m, n, at("bias", b.select(by_rows, i64(0), lo)))
        b.ret_void()
        return fn

    def parallel_for(self, ctx: KernelContext, name: str, extent: ir.Value, body, worth, grain: int) -> ir.Value:
        """KernelContext.parallel_for: `<kernel>.<name>.range(buffers..., batch, runtime, lo, hi)`
        holds the body (which returns a status); `<kernel>.<name>.task(frame, task)` runs one
        range of it on the pool and records a failure in the frame's last word. Returns the
        status (0: done)."""
        slots = list(ctx.pointers)
        prefix = f"{ctx.b.function.name}.{name}"
        span, span_ctx = self._function(f"{prefix}.range", slots, [("lo", I64), ("hi", I64)])
        span_ctx.in_task = True
        status = body(span_ctx, *span.args[-2:])
        span_ctx.b.ret(ir.Constant(I32, 0) if status is None else status)
        b = ctx.b
        args = [ctx.pointers[s] for s in slots] + [ctx.batch, ctx.runtime]
        if not self.parallel or self.bounds_check:
            return b.call(span, args + [i64(0), extent], name=f"{name}.status")
        types = [PTR] * len(slots) + [I64, PTR, I64, I64]  # then extent, chunk; the status word follows
        task_fn, tb, frame, task = parallel.task_function(self.module, f"{prefix}.task")
        fields = parallel.unpack_frame(tb, frame, types)
        lo, hi = parallel.task_range(tb, task, fields[-1], fields[-2])
        task_status = tb.call(span, fields[:-2] + [lo, hi], name="status")
        with tb.if_then(tb.icmp_signed("!=", task_status, ir.Constant(I32, 0)), likely=False):
            word = tb.gep(frame, [i64(len(types))], source_etype=I64)
            tb.atomic_rmw("xchg", word, tb.zext(task_status, I64), "monotonic")
        tb.ret_void()
        chunk, tasks = parallel.split(b, extent, extent, grain, PARALLEL_FOR_MAX_TASKS, grain)
        frame = parallel.pack_frame(b, args + [extent, chunk, i64(0)], f"{name}.frame")
        status_word = b.gep(frame, [i64(len(types))], source_etype=I64)
        worth = ir.Constant(ir.IntType(1), 1) if worth is None else worth
        with b.if_else(worth) as (shared, whole):
            with shared:
                b.call(parallel.pool_run(self.module), [task_fn, frame, tasks])
            with whole:
                whole_status = b.call(span, args + [i64(0), extent], name="whole.status")
                b.store(b.zext(whole_status, I64), status_word)
        return b.trunc(b.load(status_word, typ=I64), I32, name=f"{name}.status")

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
            packed = slot in self.prepacked
            return ("arg", position.get(slot), node.shape, node.dtype.str, node.id in schedule.transposed, packed)

        moved = self._rebased(kernel)
        members = tuple(
            (
                n.op.key() if moved is None else ("rebased", type(n.op).__qualname__, moved[0]),
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

    def _rebased(self, kernel: Kernel) -> tuple | None:
        """An op kernel's lowering.rebase (not when bounds are checked: the checks follow each
        pointer argument to the start of its buffer)."""
        if kernel.kind != "op" or self.bounds_check:
            return None
        return rebase(kernel.nodes[0])

    def shifts(self, kernel: Kernel, slots: list[int]) -> list[int]:
        """Per pointer argument, how many bytes past its buffer's start the dispatch passes it."""
        moved = self._rebased(kernel)
        if moved is None:
            return [0] * len(slots)
        node = kernel.nodes[0]
        by_slot = {self.schedule.slot(node.inputs[i]): at * node.inputs[i].dtype.itemsize for i, at in moved[1].items()}
        return [by_slot.get(slot, 0) for slot in slots]

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
        fn = self._kernel_function(index, kernel, slots)
        if not has_loop(fn):  # straight code (a GEMM's dispatch, a few scalars): each instruction runs once
            skip_optimizer(fn)
        return fn

    def _kernel_function(self, index: int, kernel: Kernel, slots: list[int]) -> ir.Function:
        name = f"{self.prefix}k{index}_{kernel.name}"
        if kernel.kind == "loop" and self.parallel and parallelizable(kernel):
            return self.parallel_loop(name, kernel, slots)
        fn, ctx = self._function(name, slots)
        ctx.rebased = self._rebased(kernel) is not None
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
        """A loop split over one (collapsed) axis (`split_axis`): `name.body` runs a range of it;
        large loops share ranges out over the pool through the task function `name.task`.
        Reductions start from their identity before the ranges run."""
        fn, ctx = self._function(name, slots)
        b = ctx.b
        fill_reductions(ctx, kernel)
        extents, accesses = _loop_plan(ctx, kernel)
        axis = split_axis(kernel, accesses)
        if axis is None:  # every axis reduced after all (size-1 axes broadcast)
            emit_loop(ctx, kernel, fill=False)
            b.ret(ir.Constant(I32, 0))
            return fn

        body, body_ctx = self._function(f"{name}.body", slots, [("lo", I64), ("hi", I64)])
        emit_loop(body_ctx, kernel, split=tuple(body.args[-2:]), fill=False)
        body_ctx.b.ret(ir.Constant(I32, 0))

        frame = [PTR] * len(slots) + [I64, PTR, I64, I64]  # kernel arguments, extent, chunk
        task_fn, tb, data, task = parallel.task_function(self.module, f"{name}.task")
        fields = parallel.unpack_frame(tb, data, frame)
        lo, hi = parallel.task_range(tb, task, fields[-1], fields[-2])
        with tb.if_then(tb.icmp_signed("<", lo, hi)):
            tb.call(body, fields[:-2] + [lo, hi])
        tb.ret_void()

        total = functools.reduce(lambda x, y: b.mul(x, y), extents, i64(1))
        args = list(fn.args)
        big = b.icmp_signed(">=", total, i64(PARALLEL_MIN_ELEMENTS), name="big")
        with b.if_else(big) as (threaded, serial):
            with threaded:
                align = _task_columns(kernel) if axis == len(extents) - 1 else 1
                chunk, tasks = parallel.split(b, extents[axis], total, LOOP_TASK_ELEMENTS, LOOP_MAX_TASKS, align)
                data = parallel.pack_frame(b, args + [extents[axis], chunk], "frame")
                b.call(parallel.pool_run(self.module), [task_fn, data, tasks])
            with serial:
                b.call(body, args + [i64(0), extents[axis]])
        b.ret(ir.Constant(I32, 0))
        return fn

    def emit_callback(self, ctx: KernelContext, index: int) -> ir.Value:
        """Ask the runtime to run kernel `index` with the op's NumPy forward."""
        b = ctx.b
        fn = ctx.runtime_entry(RUNTIME_CALLBACK, "callback")
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
REDUCTION_SPLIT_MIN = 1 << 14  # elements per batch item
LOOP_TASK_ELEMENTS, LOOP_MAX_TASKS = 1 << 15, 16  # a split loop's tasks: about this many elements, at most this many
REDUCTION_TASK_COLUMNS = 64


def _task_columns(kernel: Kernel) -> int:
    """Columns per task (a multiple of) when a loop is split over its innermost axis: whole vectors
    and cache lines; for a reduction over the rows (a bias gradient), whose tasks each walk every
    row, strips wide enough that a row's part is a vectorized loop worth its set-up."""
    return REDUCTION_TASK_COLUMNS if any(is_reduction(n) for n in kernel.nodes) else 16


def parallelizable(kernel: Kernel) -> bool:
    """Map loops whose size is not known to be small, and reductions large even without the batch
    axis that have an axis none of them reduces: split over that axis, every output element is
    computed by one task, in the serial order (a full reduction, to a scalar, stays serial)."""
    if not kernel.domain:
        return False
    domain = kernel.domain
    reductions = [n for n in kernel.nodes if is_reduction(n)]
    reduced = set().union(*(n.op.reduced_axes(domain) for n in reductions))
    static = math.prod(d for d in domain if d is not None)
    if reductions:  # split when large whatever the batch; small ones rather share a group
        return len(reduced) < len(domain) and static >= REDUCTION_SPLIT_MIN
    return None in domain or static >= PARALLEL_MIN_ELEMENTS


def split_axis(kernel: Kernel, accesses: dict) -> int | None:
    """The (collapsed) loop axis a parallel loop is split over: the outermost one along which every
    reduction's output moves (none of them reduces it); None if there is none."""
    reductions = [accesses[n.id] for n in kernel.nodes if is_reduction(n)]
    axes = len(next(iter(accesses.values()))) if accesses else 1
    return next((a for a in range(axes) if not any(_is_zero(strides[a]) for strides in reductions)), None)


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


def fill_reductions(ctx: KernelContext, kernel: Kernel) -> None:
    """Reductions start from their identity."""
    for node in kernel.nodes:
        if is_reduction(node):
            identity = _identity(node.op.combine, llvm_type(node.dtype))
            with for_range(ctx.b, ctx.count(node), "fill") as i:
                ctx.store(node, i, identity)


def emit_loop(ctx: KernelContext, kernel: Kernel, split: tuple | None = None, fill: bool = True) -> None:
    """One loop nest over the kernel's domain computing every member per element; `split` =
    (lo, hi) restricts the loop over `split_axis` to that range (a task's share); `fill`: start
    reductions from their identity first."""
    b = ctx.b
    outputs = {n.id for n in kernel.outputs}
    if fill:
        fill_reductions(ctx, kernel)
    extents, accesses = _loop_plan(ctx, kernel)
    ranges = {split_axis(kernel, accesses): split} if split is not None else {}
    # a map's iterations are independent: out-of-order cores overlap them without LLVM's interleaved
    # copies, which cost compile time and gain no speed; a reduction's copies are its independent
    # partial sums
    interleave = None if any(is_reduction(n) for n in kernel.nodes) else 1
    with loop_nest(b, extents, bounds=ranges, interleave=interleave) as index:
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

"""Probes: code the entry function runs around each kernel call in an instrumented build.

`KernelClock` (profiling) reads CLOCK_MONOTONIC before and after each kernel and stores both
times and the pool thread number in the module's `drug_profile` array, three i64 words per
kernel, which the executor reads after the step. `FiniteCheck` (debug_numerics) scans every
float buffer a kernel wrote and turns a NaN or Inf into the step's status STATUS_NOT_FINITE,
so the step stops right after the kernel that produced it. Both live outside the kernels, so
the kernels' own code (and their vectorization) is the same as in a plain build."""

from __future__ import annotations

from llvmlite import ir

from ...compiler.schedule import Schedule
from . import bounds
from .irutil import I32, I64, PTR, STATUS_NOT_FINITE, declared, element_count, for_range, i64, llvm_type
from .parallel import thread_index

PROFILE_GLOBAL = "drug_profile"
PROFILE_WORDS = 3  # per kernel: start ns, end ns, pool thread number
CLOCK_MONOTONIC = 1  # Linux; Python's time.monotonic_ns reads the same clock


class Probe:
    """What a probe adds around the call of kernel `index` (codegen.ModuleBuilder.probed_cases)."""

    name = ""

    def before(self, b: ir.IRBuilder, index: int) -> object:
        """Emitted before the call; the result is handed to `after`."""
        return None

    def after(self, b: ir.IRBuilder, index: int, token: object, status: ir.Value, table: ir.Value, batch: ir.Value):
        """Emitted after the call; returns the kernel's status as the step should see it."""
        return status


class KernelClock(Probe):
    """Start and end time (ns, CLOCK_MONOTONIC) and thread of every kernel of the last step."""

    name = "profile"

    def __init__(self, schedule: Schedule, threaded: bool):
        self.kernels = len(schedule.kernels)
        self.threaded = threaded  # the module runs on the thread pool, so drug_pool_thread exists

    def now(self, b: ir.IRBuilder) -> ir.Value:
        module = b.module
        clock = declared(module, "clock_gettime", I32, [I32, PTR])
        with b.goto_entry_block():  # one timespec per function, not one per loop iteration
            spec = b.alloca(I64, size=2, name="timespec")
        b.call(clock, [ir.Constant(I32, CLOCK_MONOTONIC), spec])
        seconds = b.load(spec, typ=I64, name="seconds")
        nanos = b.load(b.gep(spec, [i64(1)], source_etype=I64), typ=I64, name="nanoseconds")
        return b.add(b.mul(seconds, i64(1_000_000_000)), nanos, name="now")

    def before(self, b, index):
        return self.now(b)

    def after(self, b, index, token, status, table, batch):
        end = self.now(b)
        words = bounds.module_global(b.module, PROFILE_GLOBAL, I64, size=PROFILE_WORDS * max(self.kernels, 1))
        thread = b.call(thread_index(b.module), [], name="thread") if self.threaded else i64(0)
        for offset, value in enumerate((token, end, thread)):
            b.store(value, b.gep(words, [i64(0), i64(PROFILE_WORDS * index + offset)], inbounds=True))
        return status


class FiniteCheck(Probe):
    """STATUS_NOT_FINITE when a float buffer the kernel wrote holds a NaN or an Inf."""

    name = "numerics"

    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def after(self, b, index, token, status, table, batch):
        schedule = self.schedule
        checked: set[int] = set()
        for node in schedule.kernels[index].outputs:
            slot = schedule.buffer_of.get(node.id)
            if slot is None or slot in checked or node.dtype.kind != "f" or node.op.multi_output:
                continue
            checked.add(slot)
            address = b.gep(table, [i64(slot)], source_etype=PTR, inbounds=True)
            pointer = b.load(address, typ=PTR, name=f"buf{slot}")
            count = element_count(b, node.shape, batch)
            finite = b.call(self.all_finite(b.module, node.dtype), [pointer, count], name=f"finite{index}")
            stop = b.and_(b.icmp_signed("==", status, ir.Constant(I32, 0)), b.not_(finite))
            status = b.select(stop, ir.Constant(I32, STATUS_NOT_FINITE), status, name=f"checked{index}")
        return status

    @staticmethod
    def all_finite(module: ir.Module, dtype) -> ir.Function:
        """`i1 drug_all_finite.<dtype>(ptr, i64 n)`: no element is NaN or +-Inf (x - x is 0
        exactly for finite x and NaN otherwise; no fast-math flags here, so it stays exact)."""
        real = llvm_type(dtype)
        name = f"drug_all_finite.{dtype}"
        if name in module.globals:
            return module.globals[name]
        fn = ir.Function(module, ir.FunctionType(ir.IntType(1), [PTR, I64]), name)
        fn.linkage = "internal"
        data, count = fn.args
        data.name, count.name = "data", "count"
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        bad = b.alloca(ir.IntType(1), name="bad")
        b.store(ir.Constant(ir.IntType(1), 0), bad)
        with for_range(b, count) as i:
            x = b.load(b.gep(data, [i], source_etype=real), typ=real)
            nan = b.fcmp_unordered("uno", b.fsub(x, x), ir.Constant(real, 0.0))
            b.store(b.or_(b.load(bad, typ=ir.IntType(1)), nan), bad)
        b.ret(b.not_(b.load(bad, typ=ir.IntType(1))))
        return fn

"""IR for work shared out over the thread pool (threads.py, csrc/drug_pool.c).

A piece of shared work is a task function `void name(ptr frame, i64 task)` and a frame of i64
words (pointers as integers) that the caller packs on its stack. `drug_pool_run(fn, frame,
tasks)` returns when every task has run. Work is cut into more tasks than there are threads, so
that a thread that is not running (another process has its core) holds up little of it: the
others, the caller included, take what it would have done."""

from __future__ import annotations

from llvmlite import ir

from .irutil import I64, PTR, VOID, declared, i64, skip_optimizer
from .threads import RUN_SYMBOL, THREAD_SYMBOL

TASK_TYPE = ir.FunctionType(VOID, [PTR, I64])


def pool_run(module: ir.Module) -> ir.Function:
    """`void drug_pool_run(ptr task_fn, ptr frame, i64 tasks)`."""
    return declared(module, RUN_SYMBOL, VOID, [PTR, PTR, I64])


def thread_index(module: ir.Module) -> ir.Function:
    """`i64 drug_pool_thread()`: 0 on a calling thread, 1 .. thread_slots()-1 on the pool's workers and spares."""
    return declared(module, THREAD_SYMBOL, I64, [])


def task_function(
    module: ir.Module, name: str, optimize: bool = False
) -> tuple[ir.Function, ir.IRBuilder, ir.Value, ir.Value]:
    """A new internal task function: (function, builder at its entry, frame, task index). It is
    compiled without LLVM's optimizer unless `optimize`: a task that unpacks its frame and calls
    the function doing the work gains nothing from it, and every pass costs compile time."""
    fn = ir.Function(module, TASK_TYPE, name)
    fn.linkage = "internal"
    if not optimize:
        skip_optimizer(fn)
    frame, task = fn.args
    frame.name, task.name = "frame", "task"
    return fn, ir.IRBuilder(fn.append_basic_block("entry")), frame, task


def pack_frame(b: ir.IRBuilder, values: list[ir.Value], name: str, extra: int = 0) -> ir.Value:
    """A stack array of i64 words holding `values` (pointers as integers), plus `extra` words.
    The array is allocated in the function's entry block, so a frame packed in a loop takes
    its stack space once."""
    with b.goto_block(b.function.entry_basic_block):
        frame = b.alloca(I64, size=len(values) + extra, name=name)
    for i, value in enumerate(values):
        word = b.ptrtoint(value, I64) if value.type == PTR else value
        b.store(word, b.gep(frame, [i64(i)], source_etype=I64))
    return frame


def frame_word(b: ir.IRBuilder, frame: ir.Value, index: int, name: str = "") -> ir.Value:
    return b.load(b.gep(frame, [i64(index)], source_etype=I64), typ=I64, name=name)


def unpack_frame(b: ir.IRBuilder, frame: ir.Value, types: list[ir.Type]) -> list[ir.Value]:
    """The frame's first words as values of `types` (PTR words become pointers again)."""
    words = [frame_word(b, frame, i) for i in range(len(types))]
    return [b.inttoptr(w, PTR) if t == PTR else w for w, t in zip(words, types)]


def split(
    b: ir.IRBuilder, extent: ir.Value, work: ir.Value, task_work: int, max_tasks: int, align: int, min_tasks: int = 1
):
    """Cut 0..extent into tasks of about `task_work` units of `work` each, at least `min_tasks`
    and at most `max_tasks` of them, each a multiple of `align` long (but the last): returns
    (chunk, tasks)."""
    wanted = b.udiv(work, i64(task_work), name="tasks_wanted")
    wanted = b.select(b.icmp_unsigned(">", wanted, i64(max_tasks)), i64(max_tasks), wanted)
    wanted = b.select(b.icmp_unsigned("<", wanted, i64(min_tasks)), i64(min_tasks), wanted, name="tasks_capped")
    chunk = b.udiv(b.add(extent, b.sub(wanted, i64(1))), wanted, name="chunk")
    if align > 1:
        chunk = b.mul(b.udiv(b.add(chunk, i64(align - 1)), i64(align)), i64(align), name="chunk_aligned")
    tasks = b.udiv(b.add(extent, b.sub(chunk, i64(1))), chunk, name="tasks")
    return chunk, tasks


def task_range(b: ir.IRBuilder, task: ir.Value, chunk: ir.Value, extent: ir.Value) -> tuple[ir.Value, ir.Value]:
    """[lo, hi) of 0..extent that task `task` covers."""
    lo = b.mul(task, chunk, name="lo")
    end = b.add(lo, chunk)
    hi = b.select(b.icmp_signed("<", end, extent), end, extent, name="hi")
    return lo, hi

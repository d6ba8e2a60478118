"""Which kernels may run at once: runs of consecutive kernels with no hazard between them.

Kernels that use one core each (reductions such as bias gradients, small loops, softmax rows,
gathers and scatters) often sit next to an independent one in the serial order. A group is a
run of consecutive kernels in which no kernel reads or writes a buffer another one writes
(checked on buffer slots, so it holds whatever the earlier passes did). The native step runs a
group's kernels on the thread pool when at least two of them are large enough to pay for
waking a thread (decided at run time, with the batch size known).

Kernels that already spread over the cores run alone: GEMMs and convolutions (BLAS threads)
and loops large enough to be split across threads. Measured on 2 cores, two GEMMs side by side
with one BLAS thread each lose to the same two one after the other with two (OpenBLAS set to
one thread at run time still contends), and a large loop inside a group loses its split.

Two more rules keep a failed step harmless: a Python callback runs alone, and a kernel that may
stop the step never shares a group with one that updates a parameter or optimizer state.
Buffers touched anywhere in a group are alive for the whole group, so the arena never gives two
of its kernels the same memory.
"""

from __future__ import annotations

import dataclasses

from ...compiler.fusion import Kernel
from ...compiler.schedule import Schedule, may_fail
from ...core.program import Program
from .codegen import parallelizable
from .lowering import uses_blas


def kernel_access(schedule: Schedule, kernel: Kernel) -> tuple[set[int], set[int]]:
    """The buffer slots a kernel reads and the ones it writes (outputs and scratch)."""
    members = {n.id for n in kernel.nodes}
    reads = {
        schedule.buffer_of[i.id]
        for n in kernel.nodes
        for i in n.inputs
        if i.id not in members and i.id in schedule.buffer_of
    }
    writes = {schedule.buffer_of[n.id] for n in kernel.outputs}
    writes |= {schedule.workspaces[n.id] for n in kernel.nodes if n.id in schedule.workspaces}
    return reads, writes


def runs_alone(kernel: Kernel) -> bool:
    """Callbacks (Python), and kernels that spread over the cores by themselves."""
    if kernel.kind == "callback":
        return True
    if kernel.kind == "loop":
        return parallelizable(kernel)
    return any(uses_blas(n) for n in kernel.nodes)


def find_groups(schedule: Schedule) -> list[tuple[int, int]]:
    """[start, end) ranges of kernel indices, covering every kernel in order."""
    groups: list[tuple[int, int]] = []
    start, reads, writes = 0, set(), set()
    alone = fallible = updates = False
    for index, kernel in enumerate(schedule.kernels):
        k_reads, k_writes = kernel_access(schedule, kernel)
        k_alone = runs_alone(kernel)
        k_fallible = may_fail(kernel)
        k_updates = any(schedule.buffers[s].kind in ("param", "buffer", "state") for s in k_writes)
        joins = (
            index > start
            and not (alone or k_alone)
            and not (k_reads & writes or k_writes & (reads | writes))
            and not (k_fallible and updates or k_updates and fallible)
        )
        if not joins and index > start:
            groups.append((start, index))
            start, reads, writes = index, set(), set()
            alone = fallible = updates = False
        reads |= k_reads
        writes |= k_writes
        alone, fallible, updates = alone or k_alone, fallible or k_fallible, updates or k_updates
    if schedule.kernels:
        groups.append((start, len(schedule.kernels)))
    return groups


def concurrent_kernels(program: Program) -> Program:
    """The pass: the schedule with its groups, and temp lifetimes widened to whole groups."""
    schedule = program.schedule
    groups = find_groups(schedule)
    group_of = [g for g, (start, end) in enumerate(groups) for _ in range(start, end)]
    buffers = []
    for buffer in schedule.buffers:
        first, last = buffer.live
        if buffer.kind == "temp":
            first = groups[group_of[first]][0] if first < len(group_of) else first
            last = groups[group_of[last]][1] - 1 if last < len(group_of) else last
        buffers.append(dataclasses.replace(buffer, live=(first, last)))
    return program.with_(schedule=dataclasses.replace(schedule, buffers=buffers, groups=groups))

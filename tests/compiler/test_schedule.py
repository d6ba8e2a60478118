"""Scheduling and memory planning (compiler/schedule.py) on its own: kernel order, one buffer per
materialized value, liveness intervals, in-place parameter updates (or copies when a later kernel
still reads the old value), fallible kernels before any update, and the target's workspaces."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import drug as dg
from drug.compiler.build import build_program
from drug.compiler.fusion import Fuse
from drug.compiler.passes import PIPELINE, run_pipeline
from drug.compiler.scalar import scalar_rule_of
from drug.compiler.schedule import Plan, may_fail
from drug.core.program import Program


@dataclass
class Target:
    """Fuses what has a scalar rule; the ops in `KERNELS` are kernels; softmax asks for scratch."""

    KERNELS = {"matmul", "softmax", "embedding", "embedding_grad", "softmax_cross_entropy_rows", "one_hot"}

    def fusible(self, node):
        return scalar_rule_of(node.op) is not None

    def has_kernel(self, node):
        return node.op.name in self.KERNELS

    def workspace(self, node):
        return ((None, 4), np.dtype("float32")) if node.op.name == "softmax" else None


def scheduled(graph, **compile_args):
    target = Target()
    tail = [("fuse", Fuse(target)), ("schedule", Plan(target))]
    return build_program(graph, tail=tail, **compile_args).schedule


def kernel_index(schedule, node) -> int:
    return next(i for i, k in enumerate(schedule.kernels) if any(n is node for n in k.nodes))


def test_every_value_has_a_buffer_and_temps_live_from_writer_to_last_reader():
    g = dg.Graph()
    x = g.input("x", (None, 8))
    a = dg.softmax(x)  # kernel 0, its result read by kernels 1 and 2
    b = dg.sum(a, axis=1)  # a reduction: its own loop
    c = a * dg.reshape(b, (None, 1))  # reads a and b
    s = scheduled(g, outputs=[c])
    slot_a, slot_b = s.slot(a), s.slot(b)
    assert s.buffers[s.slot(x)].kind == "input"
    assert s.buffers[slot_a].kind == "temp" and s.buffers[slot_a].live == (kernel_index(s, a), kernel_index(s, c))
    assert s.buffers[slot_b].live == (kernel_index(s, b), kernel_index(s, c))
    assert s.buffers[s.slot(c)].live[1] == len(s.kernels)  # a result stays alive to the end
    reshaped = next(n for n in s.program.nodes if n.op.name == "reshape")
    assert s.slot(reshaped) == slot_b  # an alias shares its source's buffer


def test_parameter_updates_write_in_place_after_every_read_of_the_old_value():
    g = dg.Graph()
    x = g.input("x", (None, 4))
    w = g.parameter("w", (4, 3))
    loss = dg.mean(dg.relu(x @ w))
    s = scheduled(g, loss=loss, optimizer=dg.Adam(1e-3))
    updates = dict((leaf.id, new) for leaf, new in s.program.updates)
    new_w = updates[w.id]
    assert s.slot(new_w) == s.slot(w)  # the update loop writes the parameter's own buffer
    assert s.copies == []
    writer = kernel_index(s, new_w)
    readers = [i for i, k in enumerate(s.kernels) if any(i_ is w for n in k.nodes for i_ in n.inputs)]
    assert readers and all(r <= writer for r in readers)
    states = [b for b in s.buffers if b.kind == "state"]
    assert {b.key for b in states} >= {"w/momentum", "w/magnitude"}


def test_an_update_that_cannot_be_written_in_place_is_copied_at_the_end():
    g = dg.Graph()
    x = g.input("x", (None, 4))
    w = g.parameter("w", (4, 4))
    out = dg.mean(x @ w)
    # an update whose new value is a GEMM result (not a loop over w's shape): no in-place write
    program = Program(graph=g, outputs=(out,), updates=((w, w @ w),))
    target = Target()
    s = run_pipeline(program, PIPELINE + [("fuse", Fuse(target)), ("schedule", Plan(target))]).schedule
    (copy,) = s.copies
    assert copy[1] == s.slot(w) and s.buffers[copy[0]].kind == "temp"
    assert s.buffers[copy[0]].live[1] == len(s.kernels)  # kept alive until the copy


def test_kernels_that_may_fail_run_before_any_update():
    g = dg.Graph()
    ids = g.input("ids", (None,), dtype="int32")
    y = g.input("y", (None,), dtype="int32")
    table = g.parameter("table", (10, 4))
    w = g.parameter("w", (4, 10))
    loss = dg.softmax_cross_entropy(dg.embedding(ids, table) @ w, y)
    s = scheduled(g, loss=loss, optimizer=dg.SGD(0.1))
    updated = {s.slot(leaf) for leaf, _ in s.program.updates}
    writers = [i for i, k in enumerate(s.kernels) if any(s.buffer_of.get(n.id) in updated for n in k.outputs)]
    fallible = [i for i, k in enumerate(s.kernels) if may_fail(k)]
    assert fallible and writers and max(fallible) < min(writers)


def test_the_target_sizes_workspaces_alive_during_their_kernel_only():
    g = dg.Graph()
    x = g.input("x", (None, 4))
    out = dg.softmax(x) * 2.0
    s = scheduled(g, outputs=[out])
    softmax = next(n for n in s.program.nodes if n.op.name == "softmax")
    slot = s.workspaces[softmax.id]
    index = kernel_index(s, softmax)
    workspace = s.buffers[slot]
    assert workspace.kind == "temp" and workspace.shape == (None, 4) and workspace.live == (index, index)

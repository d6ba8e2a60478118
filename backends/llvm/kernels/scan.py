"""The native loop of `dg.scan`: the body is a program of its own, compiled once into the same
module, whose step function the loop calls once per step."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from llvmlite import ir

from ....compiler.passes import PIPELINE, run_pipeline
from ....compiler.scan import Scan, ScanOutput
from ....compiler.subgraph import Body
from ....core.errors import GraphError
from ....core.node import Node
from ....core.program import Program
from ....core.types import TensorType
from .. import pipeline
from ..codegen import ModuleBuilder
from ..irutil import I32, I64, PTR, STATUS_OUT_OF_MEMORY, declared, element_count, for_range, i64
from ..lowering import kernel

I8 = ir.IntType(8)
ALIGN = 64
_BODY_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def body_program(body: Body) -> Program:
    """The body through this backend's passes (kernels run one after the other), once per body."""
    program = _BODY_PROGRAMS.get(body)
    if program is None:
        program = run_pipeline(body.program, PIPELINE + pipeline.passes(concurrent=False))
        callbacks = [k for k in program.kernels if k.kind == "callback"]
        if callbacks:
            node = callbacks[0].nodes[0]
            raise GraphError(
                f"op '{node.op.name}' ({node.label}) has no native kernel, so it cannot run in a loop body"
            )
        _BODY_PROGRAMS[body] = program
    return program


@kernel(Scan, uses_blas=True)  # its body's GEMMs
def _scan(k, node: Node) -> None:
    _ScanEmitter(node.op, k, node).emit()


class _ScanEmitter:
    """The native loop: per step, point the body's input slots at this step's carries and xs,
    call the body's compiled step, and copy its results out."""

    def __init__(self, op: Scan, k, node: Node):
        self.op, self.k, self.node, self.b = op, k, node, k.b
        self.program = body_program(op.body)
        self.schedule = self.program.schedule
        results = [n for n in k.schedule.program.nodes if isinstance(n.op, ScanOutput) and n.inputs[0] is node]
        self.results = {n.op.index: n for n in results}

    def bytes_of(self, type_: TensorType) -> ir.Value:
        count = element_count(self.b, type_.shape, self.k.batch)
        return self.b.mul(count, i64(type_.dtype.itemsize), name="nbytes")

    def offset(self, pointer: ir.Value, nbytes: ir.Value, name: str) -> ir.Value:
        return self.b.gep(pointer, [nbytes], source_etype=I8, inbounds=True, name=name)

    def call(self, name: str, ret: ir.Type, args: list[ir.Value], arg_types: list[ir.Type]) -> ir.Value:
        return self.b.call(declared(self.b.module, name, ret, arg_types), args)

    def copy(self, dst: ir.Value, src: ir.Value, nbytes: ir.Value, overlapping: bool = False) -> None:
        name = "llvm.memmove" if overlapping else "llvm.memcpy"
        fn = self.b.module.declare_intrinsic(name, [PTR, PTR, I64])
        self.b.call(fn, [dst, src, nbytes, ir.Constant(ir.IntType(1), 0)])

    def body_function(self) -> ir.Function:
        name = f"scan{self.node.id}.step"
        module = self.b.module
        if name not in module.globals:
            builder = ModuleBuilder(
                self.schedule,
                self.k.blas_int.width,
                module=module,
                prefix=f"scan{self.node.id}.",
                parallel=self.k.builder.parallel,  # its GEMMs share out over the threads too
            )
            builder.entry(name)
        return module.globals[name]

    def constant(self, buffer) -> ir.Value:
        data = np.ascontiguousarray(buffer.key).tobytes()
        name = f"scan{self.node.id}.const{buffer.slot}"
        g = ir.GlobalVariable(self.b.module, ir.ArrayType(I8, len(data)), name)
        g.initializer = ir.Constant(ir.ArrayType(I8, len(data)), bytearray(data))
        g.global_constant, g.linkage, g.align = True, "internal", ALIGN
        return g

    def emit(self) -> None:
        op, k, b, node = self.op, self.k, self.b, self.node
        nc, nx = op.n_carry, op.n_x
        step_fn = self.body_function()
        carry_types = [i.type for i in op.body.inputs[:nc]]
        x_types = [i.type for i in op.body.inputs[nc : nc + nx]]
        y_types = [o.type for o in op.body.outputs[nc:]]

        # scratch: the body's temporaries, and carries nobody reads after the loop
        regions: list[tuple[str, Any]] = [("temp", buf) for buf in self.schedule.buffers if buf.kind == "temp"]
        regions += [("carry", j) for j in range(nc) if j not in self.results]
        total, offsets = i64(ALIGN), []
        for kind, item in regions:
            nbytes = self.bytes_of(item if kind == "temp" else carry_types[item])
            offsets.append(total)
            total = b.and_(b.add(b.add(total, nbytes), i64(ALIGN - 1)), i64(-ALIGN), name="scratch.end")
        scratch = self.call("aligned_alloc", PTR, [i64(ALIGN), total], [I64, I64])
        with b.if_then(b.icmp_unsigned("==", scratch, ir.Constant(PTR, None)), likely=False):
            b.ret(ir.Constant(I32, STATUS_OUT_OF_MEMORY))
        where = {(kind, item.slot if kind == "temp" else item): self.offset(scratch, off, "region")
                 for (kind, item), off in zip(regions, offsets)}  # fmt: skip

        table = b.alloca(PTR, size=len(self.schedule.buffers), name="body.table")

        def set_slot(slot: int, pointer: ir.Value) -> None:
            b.store(pointer, b.gep(table, [i64(slot)], source_etype=PTR, inbounds=True))

        def get_slot(slot: int) -> ir.Value:
            return b.load(b.gep(table, [i64(slot)], source_etype=PTR, inbounds=True), typ=PTR)

        # body inputs the body still reads (simplification may have dropped some) -> their slots
        input_slot = {
            i: self.schedule.buffer_of[n.id] for i, n in enumerate(op.body.inputs) if n.id in self.schedule.buffer_of
        }
        for buf in self.schedule.buffers:
            if buf.kind == "temp":
                set_slot(buf.slot, where[("temp", buf.slot)])
            elif buf.kind == "const":
                set_slot(buf.slot, self.constant(buf))
        for i, slot in input_slot.items():
            if i >= nc + nx:  # captured: the same every step
                set_slot(slot, k.ptr(node.inputs[i]))
        carries = [k.ptr(self.results[j]) if j in self.results else where[("carry", j)] for j in range(nc)]
        carry_bytes = [self.bytes_of(t) for t in carry_types]
        x_bytes = [self.bytes_of(t) for t in x_types]
        y_bytes = [self.bytes_of(t) for t in y_types]
        out_slots = [self.schedule.slot(o) for o in self.program.outputs]

        with for_range(b, i64(op.length), "step") as i:
            t = b.sub(i64(op.length - 1), i, name="t") if op.reverse else i
            first = b.icmp_signed("==", i, i64(0), name="first")
            for j in range(nc):
                current = b.select(first, k.ptr(node.inputs[j]), carries[j], name=f"carry{j}")
                history = self.results.get(nc + op.n_y + j)
                if history is not None:
                    self.copy(self.offset(k.ptr(history), b.mul(t, carry_bytes[j]), "saved"), current, carry_bytes[j])
                if j in input_slot:
                    set_slot(input_slot[j], current)
            for m in range(nx):
                if nc + m in input_slot:
                    stacked = k.ptr(node.inputs[nc + m])
                    set_slot(input_slot[nc + m], self.offset(stacked, b.mul(t, x_bytes[m]), f"x{m}"))
            status = b.call(step_fn, [table, k.batch, k.runtime], name="status")
            with b.if_then(b.icmp_signed("!=", status, ir.Constant(I32, 0)), likely=False):
                self.call("free", ir.VoidType(), [scratch], [PTR])
                b.ret(status)
            for j in range(nc):  # the body may return a carry unchanged: source and target can overlap
                self.copy(carries[j], get_slot(out_slots[j]), carry_bytes[j], overlapping=True)
            for m in range(op.n_y):
                stacked = self.results.get(nc + m)
                if stacked is not None:
                    target = self.offset(k.ptr(stacked), b.mul(t, y_bytes[m]), f"y{m}")
                    self.copy(target, get_slot(out_slots[nc + m]), y_bytes[m])
        self.call("free", ir.VoidType(), [scratch], [PTR])

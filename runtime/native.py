"""The native executor: binds buffers to the pointer table, calls the compiled `drug_step` once
per step (ctypes releases the GIL meanwhile) and runs Python callbacks for ops without kernels."""

from __future__ import annotations

import ctypes
import os
import sys

import numpy as np

from ..compiler.codegen import STATUS_CALLBACK_FAILED, STATUS_INDEX_OUT_OF_RANGE, ModuleBuilder
from ..compiler.errors import GraphError, ShapeError
from ..compiler.graph import Node
from ..compiler.jit import compile_module
from ..compiler.program import Program
from ..compiler.schedule import Schedule, fingerprint
from ..compiler.types import concrete_shape
from . import arena, blas

STEP_TYPE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p)
CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64, ctypes.c_int64)


class Binding:
    """Buffers for one batch size: the arena, the pointer table and NumPy views of each slot."""

    def __init__(self, executor: NativeExecutor, batch: int):
        schedule = executor.schedule
        self.batch = batch
        offsets, size = arena.pack(schedule.buffers, batch)
        self.memory = arena.allocate(size)
        self.table = np.zeros(len(schedule.buffers), np.uint64)
        self.arrays: dict[int, np.ndarray] = {}
        for buffer in schedule.buffers:
            if buffer.kind == "input":
                continue
            if buffer.kind == "temp":
                nbytes = buffer.nbytes(batch)
                flat = self.memory[offsets[buffer.slot] : offsets[buffer.slot] + nbytes].view(buffer.dtype)
                array = flat.reshape(concrete_shape(buffer.shape, batch))
            else:
                array = executor.persistent[buffer.slot]
            self.arrays[buffer.slot] = array
            self.table[buffer.slot] = array.ctypes.data
        self.table_address = self.table.ctypes.data


class NativeExecutor:
    def __init__(self, program: Program, state: dict[str, np.ndarray]):
        self.program = program
        self.schedule: Schedule = program.schedule
        self.state = state
        sgemm, dgemm = blas.find_gemm("float32"), blas.find_gemm("float64")
        builder = lambda: str(ModuleBuilder(self.schedule, sgemm.int_bits).build())  # noqa: E731
        self.compiled = compile_module(f"{fingerprint(self.schedule)}|blas{sgemm.int_bits}", builder)
        self._step = STEP_TYPE(self.compiled.address)
        self._callback = CALLBACK_TYPE(self._run_callback)
        self._runtime = (ctypes.c_void_p * 3)(
            sgemm.address, dgemm.address, ctypes.cast(self._callback, ctypes.c_void_p)
        )
        self._runtime_address = ctypes.addressof(self._runtime)
        self.persistent = self._persistent_arrays()
        self.inputs = [(b.slot, b.key) for b in self.schedule.buffers if b.kind == "input"]
        self._bindings: dict[int, Binding] = {}
        self._current: Binding | None = None
        self._error: BaseException | None = None
        if os.environ.get("DRUG_DEBUG", "0") >= "2":
            print(self.compiled.ir(), self.compiled.asm(), sep="\n", file=sys.stderr)

    @property
    def kernel_count(self) -> int:
        return len(self.schedule.kernels)

    def _persistent_arrays(self) -> dict[int, np.ndarray]:
        graph = self.program.graph
        out = {}
        for buffer in self.schedule.buffers:
            if buffer.kind == "param":
                out[buffer.slot] = graph.params[buffer.key]
            elif buffer.kind == "state":
                out[buffer.slot] = self.state[buffer.key]
            elif buffer.kind == "const":
                out[buffer.slot] = np.ascontiguousarray(buffer.key)
        return out

    def run(self, feeds: dict[int, np.ndarray], batch: int | None) -> list[np.ndarray]:
        batch = batch or 0
        binding = self._bindings.get(batch)
        if binding is None:
            binding = self._bindings[batch] = Binding(self, batch)
        by_name = {node.name: feeds[node.id] for node in self._input_nodes()}
        for slot, name in self.inputs:
            array = by_name[name]
            binding.arrays[slot] = array
            binding.table[slot] = array.ctypes.data
        self._current = binding
        status = self._step(binding.table_address, batch, self._runtime_address)
        self._current = None
        if status:
            self._raise(status)
        return [self.view(binding, node) for node in self.program.outputs]

    def _input_nodes(self) -> list[Node]:
        from ..ops.leaves import InputOp

        return self.program.leaves(InputOp)

    def view(self, binding: Binding, node: Node) -> np.ndarray:
        array = binding.arrays[self.schedule.slot(node)]
        if node.id in self.schedule.transposed:
            return array.T
        return array.reshape(concrete_shape(node.shape, binding.batch))

    def _run_callback(self, index: int, batch: int) -> int:
        try:
            binding = self._current
            node = self.schedule.kernels[index].nodes[0]
            inputs = [self.view(binding, i) for i in node.inputs]
            out = self.view(binding, node)
            out[...] = node.op.ref(*inputs)
            return 0
        except BaseException as error:  # noqa: BLE001 - re-raised after the native call returns
            self._error = error
            return STATUS_CALLBACK_FAILED

    def _raise(self, status: int):
        if status == STATUS_CALLBACK_FAILED and self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, ShapeError):
                raise ShapeError(str(error)) from None
            raise error
        if status == STATUS_INDEX_OUT_OF_RANGE:
            raise ShapeError("an index (label or embedding id) is out of range; the step was not completed")
        raise GraphError(f"native step failed with status {status}")

"""The OpenCL executor: builds the step's program once, keeps parameters, state buffers, optimizer
state and constants in device buffers, and runs a step by enqueuing every kernel and GEMM on the
device's in-order queue (no wait between them): feeds go up first, outputs and the status word
come back at the end, and only then does the host wait.

A kernel that finds bad data (an id out of range) records its index in the status word; the
kernels that write persistent buffers check it first, so a failed step changes nothing."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import pyopencl as cl

from ...compiler.schedule import Schedule, pack_temps
from ...core.arrays import HostArrays
from ...core.errors import ShapeError, with_context
from ...core.leaves import InputOp
from ...core.memory import human
from ...core.program import Program
from ...core.types import concrete_shape
from ..base import Executor, NamedArrays
from . import blas
from .device import Device
from .lowering import Gemm
from .program import PERSISTENT, StepProgram, build_error, describe
from .resident import allocate, resident

MAX_BINDINGS = 4  # batch sizes whose device memory is kept


@dataclass
class _Call:
    """One prepared launch: an NDRange of a kernel object with its arguments set, or a GEMM."""

    kernel: object = None
    items: tuple[int] = (0,)
    group: tuple[int] | None = None
    gemm: object = None  # a callable enqueuing the GEMM


class Binding:
    """Device memory and prepared launches for one batch size: the arena (temps packed by
    liveness, each a sub-buffer), input buffers, and every kernel object with its arguments."""

    def __init__(self, executor: OpenCLExecutor, batch: int):
        device, schedule = executor.device, executor.schedule
        self.batch = batch
        offsets, size = pack_temps(schedule.buffers, batch, device.align)
        inputs = sum(b.nbytes(batch) for b in schedule.buffers if b.kind == "input")
        executor.check_memory(size + inputs, batch)
        self.arena = allocate(device, size, f"the activations of batch size {batch}")
        self.buffers: dict[int, object] = {}
        for buffer in schedule.buffers:
            if buffer.kind == "temp":
                region = -(-max(buffer.nbytes(batch), 1) // device.align) * device.align
                self.buffers[buffer.slot] = self.arena.get_sub_region(offsets[buffer.slot], region)
            elif buffer.kind == "input":
                self.buffers[buffer.slot] = allocate(device, buffer.nbytes(batch), f"input '{buffer.key}'")
            else:
                self.buffers[buffer.slot] = executor.persistent[buffer.slot]
        self.calls = [call for step in executor.program_.steps for call in self._prepare(executor, step)]

    def _prepare(self, executor: OpenCLExecutor, step) -> list[_Call]:
        calls = []
        for launch in step.launches:
            if isinstance(launch, Gemm):
                call = blas.prepare(executor.device, launch, self.batch, self.buffers, executor.schedule)
                if call is not None:
                    calls.append(_Call(gemm=call))
                continue
            items = launch.items.at(self.batch)
            if items == 0:
                continue
            kernel = cl.Kernel(executor.cl_program, launch.name)
            args = [self.buffers[s] for s in launch.slots]
            kernel.set_args(*args, np.int64(self.batch), executor.status, np.int32(step.index))
            group = launch.group_size or min(executor.device.group, executor.group_limit(kernel))
            calls.append(_Call(kernel, (-(-items // group) * group,), (group,)))
        return calls


class OpenCLExecutor(Executor):
    fills_outputs = True

    def __init__(self, program: Program, state: HostArrays, device: Device):
        self.program, self.state, self.device = program, state, device
        self.schedule: Schedule = program.schedule
        self.program_ = StepProgram(self.schedule, device.lanes)
        if os.environ.get("DRUG_DEBUG", "0") >= "2":
            print(self.program_.source, file=sys.stderr)
        self.cl_program = self._build()
        self.status = cl.Buffer(device.context, cl.mem_flags.READ_WRITE, 4)
        self._status = np.zeros(1, np.int32)
        graph = program.graph
        # where each kind of persistent buffer lives on the host: parameters, state buffers, optimizer state
        self.stores: dict[str, HostArrays] = {"param": graph.params, "buffer": graph.state, "state": state}
        self.persistent = self._persistent_buffers()
        slot_of = {b.key: b.slot for b in self.schedule.buffers if b.kind == "input"}
        self.input_slots = [(slot_of[n.name], n.id) for n in program.leaves(InputOp) if n.name in slot_of]
        self._bindings: dict[int, Binding] = {}
        self._group_limits: dict[str, int] = {}

    def _build(self):
        try:
            return cl.Program(self.device.context, self.program_.source).build()
        except cl.RuntimeError as error:  # pyopencl's message holds the compiler's log
            raise build_error(self.program_, self.device.title, str(error)) from None

    def group_limit(self, kernel) -> int:
        name = kernel.function_name
        if name not in self._group_limits:
            info = cl.kernel_work_group_info.WORK_GROUP_SIZE
            self._group_limits[name] = kernel.get_work_group_info(info, self.device.device)
        return self._group_limits[name]

    def _persistent_buffers(self) -> dict[int, object]:
        out = {}
        for buffer in self.schedule.buffers:
            if buffer.kind in self.stores:
                store = self.stores[buffer.kind]
                out[buffer.slot] = resident(store, self.device).buffer(buffer.key, store.storage(buffer.key))
            elif buffer.kind == "const":
                value = np.ascontiguousarray(buffer.key)
                out[buffer.slot] = allocate(self.device, value.nbytes, "a constant")
                if value.nbytes:
                    cl.enqueue_copy(self.device.queue, out[buffer.slot], value, is_blocking=True)
        return out

    def check_memory(self, nbytes: int, batch: int) -> None:
        """Refuse a batch whose activations cannot fit beside the parameters and state."""
        persistent = sum(b.nbytes(batch) for b in self.schedule.buffers if b.kind in PERSISTENT)
        if nbytes + persistent > self.device.memory:
            raise MemoryError(
                f"the activations and inputs of batch size {batch} need {human(nbytes)} on {self.device.title} "
                f"beside {human(persistent)} of parameters, state and constants, more than its "
                f"{human(self.device.memory)}; use a smaller batch. Nothing was run."
            )

    def before_step(self, reads: NamedArrays) -> None:
        """Arrays this step reads that the device has no current copy of go up first."""
        for arrays, names in reads:
            resident(arrays, self.device).upload(arrays, names)

    def after_step(self, written: NamedArrays) -> None:
        """The device's copies of what the step updated are the newest values now."""
        for arrays, names in written:
            arrays.written_on_device(resident(arrays, self.device), names)

    def _binding(self, batch: int) -> Binding:
        binding = self._bindings.pop(batch, None) or Binding(self, batch)
        self._bindings[batch] = binding  # most recently used last
        if len(self._bindings) > MAX_BINDINGS:
            del self._bindings[next(iter(self._bindings))]
        return binding

    def run(self, feeds: dict[int, np.ndarray], batch: int | None, out: list | None = None) -> list[np.ndarray]:
        batch = batch or 0
        binding = self._binding(batch)
        queue = self.device.queue
        cl.enqueue_fill_buffer(queue, self.status, np.int32(0), 0, 4)
        for slot, node_id in self.input_slots:
            array = np.ascontiguousarray(feeds[node_id])
            if array.nbytes:
                cl.enqueue_copy(queue, binding.buffers[slot], array, is_blocking=False)
        try:
            for call in binding.calls:
                if call.gemm is not None:
                    call.gemm()
                else:
                    cl.enqueue_nd_range_kernel(queue, call.kernel, call.items, call.group)
            results = self._read_outputs(binding, out or [])
            cl.enqueue_copy(queue, self._status, self.status, is_blocking=False)
            queue.finish()
        except BaseException:
            for store in self.stores.values():  # the device may have stopped anywhere: its copies are not trusted
                resident(store, self.device).valid.clear()
            raise
        if self._status[0]:
            self._raise_failed(int(self._status[0]) - 1, feeds, batch)
        return results

    def _read_outputs(self, binding: Binding, out: list) -> list[np.ndarray]:
        results = []
        for i, node in enumerate(self.program.outputs):
            shape = concrete_shape(node.shape, binding.batch)
            target = out[i] if i < len(out) else None
            fits = (
                isinstance(target, np.ndarray)
                and target.shape == shape
                and target.dtype == node.dtype
                and target.flags.c_contiguous
                and target.flags.writeable
            )
            array = target if fits else np.empty(shape, node.dtype)
            if array.nbytes:
                source = binding.buffers[self.schedule.slot(node)]
                cl.enqueue_copy(self.device.queue, array, source, is_blocking=False)
            results.append(array)
        return results

    def _raise_failed(self, index: int, feeds: dict[int, np.ndarray], batch: int):
        """A kernel found an id out of range: say which, with the op's own message when its ids
        are fed (its reference forward, given zeros for the other inputs, finds the first bad one)."""
        kernel = self.schedule.kernels[index] if index < len(self.schedule.kernels) else None
        node = kernel.nodes[0] if kernel is not None and kernel.nodes else None
        if node is not None and all(i.id in feeds or i.dtype.kind == "f" for i in node.inputs):
            args = [feeds.get(i.id, np.zeros(concrete_shape(i.shape, batch), i.dtype)) for i in node.inputs]
            try:
                node.op.ref(*args)
            except ShapeError as error:
                raise with_context(error, f"node {node.where}: ") from None
            except (IndexError, ValueError):
                pass
        where = describe(index, kernel)
        raise ShapeError(f"an index (label or embedding id) is out of range in {where}; the step was not completed")

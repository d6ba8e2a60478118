"""The native executor: binds buffers to the pointer table, calls the compiled `drug_step` once
per step (ctypes releases the GIL meanwhile) and runs Python callbacks for ops without kernels."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import os
import sys
from collections.abc import Iterator

import numpy as np

from ...compiler.interpret import live_array, read_only
from ...compiler.scan import Scan
from ...compiler.schedule import Schedule, fingerprint
from ...core import memory
from ...core.errors import GraphError, ResultShapeError, ShapeError, with_context
from ...core.leaves import ConstantOp, InputOp
from ...core.node import Node
from ...core.program import Program
from ...core.types import concrete_shape, format_shape
from .. import numerics
from ..base import Executor
from . import arena, blas, bounds, gemm, jit, lane, prepack, probes, threads
from .codegen import RUNTIME_SLOTS, ModuleBuilder
from .irutil import (
    STATUS_CALLBACK_FAILED,
    STATUS_INDEX_OUT_OF_RANGE,
    STATUS_INVALID_INPUT,
    STATUS_NOT_FINITE,
    STATUS_OUT_OF_BOUNDS,
    STATUS_OUT_OF_MEMORY,
)
from .lowering import calls_conv, runs_user_code, uses_blas

STEP_TYPE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p)
CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64, ctypes.c_int64)
MAX_BINDINGS = 4  # arenas kept, one per recently used batch size
MAX_PROFILED_STEPS = 10_000  # spans kept by a profiling build (24 bytes per kernel per step)
# programs of at most this many kernels compile in this process: forking costs more than their
# compile (a copy of the page tables, faults on every page the child touches, LLVM's code
# included), and the heap they leave behind is small (LLVM's code pages stay resident, though)
IN_PROCESS_KERNELS = 4
REDIRECT_MIN_BYTES = 1 << 16  # smaller outputs are copied to the caller's array instead


def warm_up() -> None:
    """Per-process set-up shared by every compiled function: find NumPy's BLAS, start loading drug's kernels."""
    blas.find_gemm("float64")
    # every cache key's hash of the sources: here, since on the kernels' thread each of its small
    # reads would wait for the GIL while the user's code runs, and the kernels would come late
    jit.code_version()
    if os.environ.get(gemm.ENV, "drug") != "blas":
        gemm.start_runtime_kernels(blas.find_gemm("float32"))


class _Views(dict):
    """slot -> array of a binding's buffers. A temporary's view of the arena is made the first
    time something reads it (an output, a callback, an error report): a long step has thousands
    of temporaries, whose views made up front would cost a cached compile more than its first step."""

    def __init__(self, persistent: dict[int, np.ndarray], temps: dict[int, tuple], memory: np.ndarray):
        super().__init__(persistent)
        self._temps, self._memory = temps, memory  # slot -> (byte offset, buffer, shape)

    def __missing__(self, slot: int) -> np.ndarray:
        if slot not in self._temps:
            raise KeyError(slot)
        offset, buffer, shape = self._temps[slot]
        flat = self._memory[offset : offset + math.prod(shape) * buffer.dtype.itemsize].view(buffer.dtype)
        array = self[slot] = flat.reshape(shape)
        return array

    def __contains__(self, slot: object) -> bool:
        return dict.__contains__(self, slot) or slot in self._temps


class Binding:
    """Buffers for one batch size: the arena, the pointer table and NumPy views of each slot."""

    def __init__(self, executor: NativeExecutor, batch: int):
        schedule = executor.schedule
        self.batch = batch
        offsets, size = arena.layout(schedule.buffers, batch)
        self.memory = memory.allocating(f"the activations of batch size {batch}", size, lambda: arena.allocate(size))
        self.table = np.zeros(len(schedule.buffers), np.uint64)
        base = self.memory.ctypes.data
        temps: dict[int, tuple] = {}
        persistent: dict[int, np.ndarray] = {}
        for buffer in schedule.buffers:
            if buffer.kind == "input":
                continue
            if buffer.kind == "temp":
                offset = offsets[buffer.slot]
                temps[buffer.slot] = (offset, buffer, concrete_shape(buffer.shape, batch))
                self.table[buffer.slot] = base + offset
            else:
                array = persistent[buffer.slot] = executor.persistent[buffer.slot]
                self.table[buffer.slot] = array.ctypes.data
        self.table_address = self.table.ctypes.data
        self.arrays = _Views(persistent, temps, self.memory)
        self.arena = _Views(persistent, temps, self.memory)  # the arena's own arrays, when `arrays` points elsewhere
        # each output as the caller sees it: arena views stay valid while the binding lives (None:
        # an input fed through, viewed anew on every call)
        self.outputs = [
            executor.view(self, n) if executor.schedule.slot(n) in self.arena else None
            for n in executor.program.outputs
        ]
        self.outputs_viewed = all(view is not None for view in self.outputs)
        # (slot, shape, dtype) of the outputs a caller's array of that shape may replace in the arena
        self.redirectable = [executor.redirectable(n, batch) for n in executor.program.outputs]
        self.redirects = any(spec is not None for spec in self.redirectable)


class NativeExecutor(Executor):
    fills_outputs = True

    def __init__(self, program: Program, state: dict[str, np.ndarray], instrument: str | None = None):
        """`instrument`: None (a plain build), "profile" (kernel times, see probes.KernelClock) or
        "numerics" (stop at the first kernel writing NaN or Inf, see probes.FiniteCheck)."""
        self.program = program
        self.schedule: Schedule = program.schedule
        self.state = state
        self.instrument = instrument
        self.runs_python = any(kernel.kind == "callback" for kernel in self.schedule.kernels)
        sgemm, dgemm = blas.find_gemm("float32"), blas.find_gemm("float64")
        calls_blas = _calls_blas(self.schedule)
        # drug's sgemm and convolution: compiled beside the program, the first time
        convolutions = any(calls_conv(node) for node in _all_nodes(program))
        kernels = gemm.runtime_kernels(sgemm, gemms=calls_blas, convolutions=convolutions)
        parallel = threads.pool() is not None
        self.bounds_check = bounds.enabled()  # DRUG_BOUNDS_CHECK=1: every kernel access checked
        probe = _probe(instrument, self.schedule, parallel)
        self._panel = gemm.prepacked_panel()  # constants only GEMMs read are packed for them (prepack.py)
        self._prepacked = prepack.packed_constants(self.schedule) if self._panel else {}
        packed = frozenset(self._prepacked)
        self._builder = lambda: ModuleBuilder(  # noqa: E731
            self.schedule, sgemm.int_bits, parallel=parallel, bounds_check=self.bounds_check, probe=probe,
            prepacked=packed,
        )  # fmt: skip
        builder = lambda: str(self._builder().build())  # noqa: E731
        key = f"{fingerprint(self.schedule)}|blas{sgemm.int_bits}|parallel{parallel}|bounds{int(self.bounds_check)}"
        key += f"|prepacked{self._panel}:{sorted(packed)}" if packed else ""
        key += f"|probe-{instrument}" if instrument else ""
        if runs_user_code(_all_nodes(program)):
            text = builder()  # a user's kernel or scalar rule: its IR is the only sure key
            key += f"|ir{hashlib.sha256(text.encode()).hexdigest()}"
            builder = lambda: text  # noqa: E731
        self.compiled = jit.compile_module(key, builder, fork=len(self.schedule.kernels) > IN_PROCESS_KERNELS)
        self.spans: list[np.ndarray] = []  # "profile": per step, (kernels, 3) start ns, end ns, thread
        self.last_batch: int | None = None
        self._clock = self._profile_words() if instrument == "profile" else None
        self._step = STEP_TYPE(self.compiled.address)
        self._callback = CALLBACK_TYPE(self._run_callback)
        own = kernels.result()
        # the pool shares GEMMs out, each task calling drug's sgemm (which never calls the BLAS) or,
        # for float64 or with DRUG_GEMM=blas, OpenBLAS, set to one thread while the step runs
        runs_blas = _runs_blas(program, float32=own.sgemm == sgemm.address)
        self._blas_context = blas.one_thread() if runs_blas else contextlib.nullcontext()
        self._runtime = (ctypes.c_void_p * RUNTIME_SLOTS)(
            own.sgemm, dgemm.address, ctypes.cast(self._callback, ctypes.c_void_p), own.sconv, own.sconv_filter,
            own.sgemm_packed, own.sgemm_pack,
        )  # fmt: skip
        self._runtime_address = ctypes.addressof(self._runtime)
        self.persistent = self._persistent_arrays()
        slot_of_input = {b.key: b.slot for b in self.schedule.buffers if b.kind == "input"}
        self.input_slots = [(slot_of_input[n.name], n.id) for n in program.leaves(InputOp) if n.name in slot_of_input]
        self._bindings: dict[int, Binding] = {}
        self._last_binding: Binding | None = None
        self._current: Binding | None = None
        self._error: BaseException | None = None
        self._plain_tables: dict[int, int] = {}  # batch -> pointer table, for the lane
        self._lane = self._make_lane(slot_of_input, runs_blas)
        self.runs_plain = self._lane is not None
        if os.environ.get("DRUG_DEBUG", "0") >= "2":
            print(self.compiled.ir(), self.compiled.asm(), sep="\n", file=sys.stderr)

    def ir(self) -> str:
        return self.compiled.ir()

    def asm(self) -> str:
        return self.compiled.asm()

    def _persistent_arrays(self) -> dict[int, np.ndarray]:
        graph = self.program.graph
        out = {}
        for buffer in self.schedule.buffers:
            if buffer.kind == "param":
                out[buffer.slot] = graph.params[buffer.key]
            elif buffer.kind == "buffer":
                out[buffer.slot] = graph.state[buffer.key]
            elif buffer.kind == "state":
                out[buffer.slot] = self.state[buffer.key]
            elif buffer.slot in self._prepacked:
                shape, transposed = self._prepacked[buffer.slot]
                out[buffer.slot] = prepack.pack(buffer.key.reshape(shape), transposed, self._panel)
            elif buffer.kind == "const":
                out[buffer.slot] = np.ascontiguousarray(buffer.key)
        return out

    def run(self, feeds: dict[int, np.ndarray], batch: int | None, out: list | None = None) -> list[np.ndarray]:
        """Run the step; outputs are views of the arena, except those written straight into
        the matching caller arrays in `out` (aligned with the program's outputs)."""
        binding = self._last_binding
        if binding is None or binding.batch != (batch or 0):
            binding = self._binding(batch or 0)
        table, arrays = binding.table, binding.arrays
        for slot, node_id in self.input_slots:
            array = feeds[node_id]
            arrays[slot] = array
            table[slot] = data_address(array)
        redirected = self._redirect_outputs(binding, out) if out and binding.redirects else None
        arena_addresses = {}
        if redirected:
            arena_addresses = {slot: table[slot] for slot in redirected}
            for slot, (_, target) in redirected.items():  # callbacks and views must see the caller's array too
                arrays[slot] = target.reshape(arrays[slot].shape)
                table[slot] = data_address(target)
        self._current = binding
        try:
            if self.instrument is None:
                with self._blas_context:
                    status = self._step(binding.table_address, binding.batch, self._runtime_address)
            else:
                status = self._instrumented_step(binding)
            if status:
                self._stopped(status, binding)
            if not redirected and binding.outputs_viewed:
                return binding.outputs
            return [
                redirected[slot][1] if redirected and redirected.get(slot, (None,))[0] == i
                else self.view(binding, n) if (redirected and slot in redirected) or binding.outputs[i] is None
                else binding.outputs[i]
                for i, (n, slot) in enumerate((n, self.schedule.slot(n)) for n in self.program.outputs)
            ]  # fmt: skip
        finally:
            self._current = None
            for slot, address in arena_addresses.items():
                arrays[slot] = binding.arena[slot]
                table[slot] = address
            for slot, _ in self.input_slots:  # do not keep the caller's arrays alive until the next call
                arrays.pop(slot, None)

    def _instrumented_step(self, binding: Binding) -> int:
        """The step of a profiling build (kernel clocks kept) or of a numerics one (updated
        parameters restored when a kernel stopped it on a NaN or Inf)."""
        before = self._snapshot() if self.instrument == "numerics" else None
        if self._clock is not None:
            self._clock[...] = 0  # kernels a failed step did not reach stay at 0
        with self._blas_context:
            status = self._step(binding.table_address, binding.batch, self._runtime_address)
        if self._clock is not None:
            self.spans.append(self._clock.copy())
            self.last_batch = binding.batch
            del self.spans[:-MAX_PROFILED_STEPS]
        if status and before is not None:  # a kernel may have updated a parameter in place already
            for target, saved in before:
                np.copyto(target, saved)
        return status

    def _binding(self, batch: int) -> Binding:
        """The buffers for this batch size, the most recently used kept last."""
        binding = self._bindings.get(batch)
        if binding is not None and binding is self._last_binding:
            return binding
        binding = self._bindings.pop(batch, None) or Binding(self, batch)
        self._bindings[batch] = self._last_binding = binding
        if binding.outputs_viewed and not binding.redirects:  # else a call passes arrays to write to
            self._plain_tables[batch] = binding.table_address
        if len(self._bindings) > MAX_BINDINGS:  # many batch sizes: keep the arenas of the recent ones
            evicted = next(iter(self._bindings))
            del self._bindings[evicted]
            self._plain_tables.pop(evicted, None)
        return binding

    def _make_lane(self, slot_of_input: dict[str, int], runs_blas: bool):
        """The C lane of plain calls (lane.py), or None: an instrumented build, a step that runs
        Python forwards, a lane turned off or not built."""
        extension = lane.extension()
        inputs = self.program.leaves(InputOp)
        if (
            extension is None
            or self.instrument is not None
            or self.runs_python
            or len(inputs) > extension.MAX_INPUTS
            or any(n.shape.count(None) > 1 or len(n.shape) > extension.MAX_DIMS for n in inputs)
        ):
            return None
        self._plain_inputs = [(slot_of_input[n.name], n.name) for n in inputs if n.name in slot_of_input]
        blas_threads = blas.one_thread().addresses() if runs_blas else (0, 0)
        specs = [(n.name, n.dtype, tuple(n.shape), slot_of_input.get(n.name, -1)) for n in inputs]
        return extension.Lane(
            self.compiled.address, self._runtime_address, *blas_threads, np.ndarray, self._plain_tables, specs
        )

    def run_plain(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray] | None:
        """The step on feeds by input name that are exactly what the inputs declare, checked, bound
        and run in C (csrc/drug_lane.c): the outputs as arena views, as `run` returns them. None if
        they are not (or this batch size has no buffers yet): `run` then checks and binds them."""
        ran = self._lane(feeds) if self._lane is not None else None
        if ran is None:
            return None
        status, batch = ran
        binding = self._bindings[batch]
        if status:
            arrays = binding.arrays
            try:
                for slot, name in self._plain_inputs:  # what the error's views of the inputs read
                    arrays[slot] = feeds[name]
                self._stopped(status, binding)
            finally:
                for slot, _ in self._plain_inputs:
                    arrays.pop(slot, None)
        return binding.outputs

    def _stopped(self, status: int, binding: Binding) -> None:
        """Raise what stopped the step (a nonzero status)."""
        if status == STATUS_NOT_FINITE:
            raise self._non_finite(binding)
        self._raise(status, binding)

    def _snapshot(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(live array, copy) of every parameter and state buffer the step updates."""
        live = [live_array(self.program, self.state, leaf) for leaf, _ in self.program.updates]
        return [(array, array.copy()) for array in live]

    def _profile_words(self) -> np.ndarray:
        """The probes' `drug_profile` array of the compiled module, as (kernels, 3) int64."""
        address = self.compiled.engine.get_global_value_address(probes.PROFILE_GLOBAL)
        count = max(len(self.schedule.kernels), 1)
        words = (ctypes.c_int64 * (probes.PROFILE_WORDS * count)).from_address(address)
        return np.ctypeslib.as_array(words).reshape(count, probes.PROFILE_WORDS)

    def _non_finite(self, binding: Binding) -> GraphError:
        """The error for the kernel that stopped the step on a NaN or Inf: its members are computed
        again with their NumPy references from the kernel's inputs (which the step left intact;
        updated parameters are restored) to find the first node that produced it."""
        index, _ = self._failure()
        kernel = self.schedule.kernels[index]
        members = {n.id for n in kernel.nodes}
        native: dict[int, object] = {}
        reference: dict[int, object] = {}

        def value_native(node: Node) -> object:
            if node.id not in native:
                if isinstance(node.op, ConstantOp):
                    native[node.id] = node.op.value
                elif node.id in self.schedule.buffer_of:
                    native[node.id] = self.view(binding, node)
                else:
                    native[node.id] = node.op.ref(*(value_native(i) for i in node.inputs))
            return native[node.id]

        def value_reference(node: Node) -> object:
            if node.id not in members:
                return value_native(node)
            if node.id not in reference:
                value = node.op.ref(*(value_reference(i) for i in node.inputs))
                reference[node.id] = value if node.op.multi_output else np.asarray(value, node.dtype)
            return reference[node.id]

        where = f" in kernel {index} ({kernel.name})"
        try:
            node = numerics.first_non_finite(kernel.nodes, value_reference)
            if node is not None:
                return numerics.non_finite_error(node, value_reference, self.program, where)
        except Exception:  # noqa: BLE001 - the reference could not recompute it: report what native code wrote
            pass
        outputs = [n for n in kernel.outputs if n.id in self.schedule.buffer_of]
        node = numerics.first_non_finite(outputs, value_native) or kernel.outputs[0]
        return numerics.non_finite_error(node, value_native, self.program, where)

    def redirectable(self, node: Node, batch: int) -> tuple[int, tuple[int, ...], np.dtype] | None:
        """(slot, shape, dtype) when a caller's array of that shape may stand in for the output's
        arena buffer: a temporary stored untransposed, big enough that binding the caller's array
        costs less than copying the output into it."""
        slot = self.schedule.slot(node)
        shape = concrete_shape(node.shape, batch)
        big = math.prod(shape) * node.dtype.itemsize >= REDIRECT_MIN_BYTES
        if self.schedule.buffers[slot].kind == "temp" and node.id not in self.schedule.transposed and big:
            return slot, shape, node.dtype
        return None

    def _redirect_outputs(self, binding: Binding, out: list) -> dict[int, tuple[int, np.ndarray]]:
        """Output slots to point at caller arrays that fit exactly (saves a copy of each output):
        slot -> (index of the output, array). Other outputs sharing the slot (an alias, a common
        subexpression) are read from that array."""
        redirected: dict[int, tuple[int, np.ndarray]] = {}
        for index, (spec, target) in enumerate(zip(binding.redirectable, out)):
            if spec is None or not isinstance(target, np.ndarray):
                continue
            slot, shape, dtype = spec
            fits = (
                target.shape == shape
                and target.dtype == dtype
                and target.flags.c_contiguous
                and target.flags.writeable
                and slot not in redirected
            )
            if fits:
                redirected[slot] = (index, target)
        return redirected

    def view(self, binding: Binding, node: Node) -> np.ndarray:
        slot = self.schedule.slot(node)
        if slot in self._prepacked:  # its buffer holds the sgemm's panels: its value is the graph's array
            array = self.schedule.buffers[slot].key.reshape(self._prepacked[slot][0])
        else:
            array = binding.arrays[slot]
        if node.id in self.schedule.transposed:
            return array.T
        return array.reshape(concrete_shape(node.shape, binding.batch))

    def _run_callback(self, index: int, batch: int) -> int:
        node = self.schedule.kernels[index].nodes[0]
        try:
            binding = self._current
            inputs = [read_only(self.view(binding, i)) for i in node.inputs]  # feeds, parameters, arena
            node.op.ref_into(self.view(binding, node), *inputs)
            return 0
        except ResultShapeError as error:  # named as the reference backend names it
            self._error = error.at(node.where)
        except ShapeError as error:  # bad data (an id out of range), named as the reference does
            self._error = with_context(error, f"node {node.where}: ")
        except BaseException as error:  # noqa: BLE001 - re-raised after the native call returns
            self._error = error
        return STATUS_CALLBACK_FAILED

    def _raise(self, status: int, binding: Binding):
        kernel_index, site = self._failure()
        kernel = self.schedule.kernels[kernel_index] if kernel_index is not None else None
        where = f"kernel {kernel_index} ({_describe(kernel)})" if kernel is not None else "an unknown kernel"
        if status == STATUS_CALLBACK_FAILED and self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, (ResultShapeError, ShapeError)):  # named by _run_callback
                raise error from None
            error.add_note(f"raised by the Python forward of {where}")
            raise error
        if status in (STATUS_INDEX_OUT_OF_RANGE, STATUS_INVALID_INPUT) and kernel is not None:
            node = kernel.nodes[0]
            # The op's reference forward finds the bad input (the first bad id or value) and says
            # what is wrong with it. It reads copies: a feed another thread changes between numpy's
            # check of an index and its use would send np.add.at outside its output.
            try:
                node.op.ref(*(np.array(self.view(binding, i), copy=True) for i in node.inputs))
            except GraphError as error:
                raise with_context(error, f"node {node.where}: ") from None
            except Exception:  # noqa: BLE001 - ids changed by another thread since the kernel read them
                pass
        if status == STATUS_INDEX_OUT_OF_RANGE:
            raise ShapeError(f"an index (label or embedding id) is out of range in {where}; the step was not completed")
        if status == STATUS_INVALID_INPUT:
            raise GraphError(f"an input value the op cannot take in {where}; the step was not completed")
        if status == STATUS_OUT_OF_BOUNDS:
            raise GraphError(
                f"{bounds.ENV}: {where} accessed memory outside a buffer ({self._site(site, kernel)}) at batch "
                f"size {binding.batch}; the step was stopped after that kernel, so its results are invalid"
            )
        if status == STATUS_OUT_OF_MEMORY:
            raise MemoryError(f"{where} could not allocate its scratch memory; the step was not completed")
        raise GraphError(f"native step failed with status {status} in {where}")

    def _failure(self) -> tuple[int | None, int]:
        """The kernel the step stopped at and the bounds-check site (0: none), read from the
        module's globals; the site is reset for the next call."""
        engine = self.compiled.engine
        kernel_at = engine.get_global_value_address(bounds.FAILED_KERNEL)
        site_at = engine.get_global_value_address(bounds.FAULT) if self.bounds_check else 0
        kernel = ctypes.c_int32.from_address(kernel_at).value if kernel_at else None
        site = 0
        if site_at:
            cell = ctypes.c_int32.from_address(site_at)
            site, cell.value = cell.value, 0
        return kernel, site

    def _site(self, site: int, kernel) -> str:
        """What the refused access was, from the site table of a rebuilt module (error path only)."""
        builder = self._builder()
        builder.build()
        sites = bounds.sites(builder.module)
        if not 0 < site <= len(sites):
            return "unknown access"
        found = sites[site - 1]
        what = f"{found.access} through argument {found.position} of {found.function}"
        if found.nested or kernel is None:
            return f"{what}, a {found.buffer} buffer"
        slot = builder.slots_of(kernel)[found.position]
        owners = [n.label for n in self.program.nodes if self.schedule.buffer_of.get(n.id) == slot]
        buffer = self.schedule.buffers[slot]
        held = f", holding {', '.join(owners[:3])}" if owners else ""
        return f"{what}: buffer {slot}, {buffer.kind} {format_shape(buffer.shape)} {buffer.dtype}{held}"


def _probe(instrument: str | None, schedule: Schedule, threaded: bool) -> probes.Probe | None:
    if instrument is None:
        return None
    if instrument == "profile":
        return probes.KernelClock(schedule, threaded)
    if instrument == "numerics":
        return probes.FiniteCheck(schedule)
    raise ValueError(f"unknown instrument {instrument!r}; use 'profile' or 'numerics'")


def data_address(array: np.ndarray) -> int:
    """Where the array's first element is: through ctypes' buffer view (faster than numpy's
    `.ctypes`, which builds an object per call), else, for a read-only or empty array, which
    ctypes refuses, through `.ctypes`."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    except (TypeError, ValueError):
        return array.ctypes.data


def _calls_blas(schedule: Schedule) -> bool:
    return any(uses_blas(node) for kernel in schedule.kernels for node in kernel.nodes)


def _runs_blas(program: Program, float32: bool) -> bool:
    """Whether a step calls numpy's BLAS: for a GEMM of float64 operands, or of float32 ones when
    the runtime's sgemm is the BLAS (`float32`). A loop's body counts through its own nodes."""
    dtypes = {np.dtype(np.float64)} | ({np.dtype(np.float32)} if float32 else set())
    return any(
        uses_blas(node) and not isinstance(node.op, Scan) and any(i.dtype in dtypes for i in node.inputs)
        for node in _all_nodes(program)
    )


def _all_nodes(program: Program) -> Iterator[Node]:
    """The program's nodes and those of the loop bodies in it (compiled into the same module)."""
    for node in program.nodes:
        yield node
        if isinstance(node.op, Scan):
            yield from _all_nodes(node.op.body.program)


def _describe(kernel) -> str:
    nodes = ", ".join(f"{n.where} {format_shape(n.shape)}" for n in kernel.nodes[:4])
    more = f" and {len(kernel.nodes) - 4} more" if len(kernel.nodes) > 4 else ""
    return f"{kernel.kind} kernel of {nodes}{more}"

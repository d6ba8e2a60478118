"""The model description a library is generated from: parameters, optimizer state and constants
(with their bytes in one blob), and per function the pointer-table slots, inputs and outputs.
The C tables, the header and the manifest are all rendered from this one description."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..backends.llvm import arena
from ..compiler.optimizers import LR_KEY
from ..compiler.schedule import Buffer
from ..core.errors import GraphError
from ..core.leaves import ParameterOp
from ..core.types import Shape
from ..runtime import checkpoint
from .lower import Function
from .spec import c_identifier

ALIGN = 64
KINDS = {
    "input": "DRUGRT_INPUT",
    "param": "DRUGRT_PARAM",
    "state": "DRUGRT_STATE",
    "const": "DRUGRT_CONST",
    "temp": "DRUGRT_TEMP",
}


@dataclass
class Tensor:
    name: str
    shape: Shape
    dtype: np.dtype
    offset: int = -1  # in the blob (parameters, constants)
    fill: float = 0.0  # optimizer state: initial value of every element


@dataclass
class Value:
    """An argument of a public function: an input it reads or an output it writes."""

    c_name: str
    shape: Shape  # None = batch
    dtype: np.dtype
    slot: int = -1  # outputs: the slot they are copied from


@dataclass
class Table:
    """One function's view of the library."""

    name: str  # "train_step" or "predict"
    entry: str  # symbol of its compiled step
    buffers: list[tuple[Buffer, int]]  # with the index into inputs / params / states / consts (-1: temp)
    inputs: list[Value]
    outputs: list[Value]
    arena_bytes: dict[int, int] = field(default_factory=dict)  # batch -> bytes, as runtime/arena.py packs it


@dataclass
class Model:
    name: str
    params: list[Tensor]
    saved_params: int
    states: list[Tensor]
    consts: list[Tensor]
    tables: list[Table]
    blob: bytes
    max_batch: int
    lr_state: int

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name == name), None)


class BlobWriter:
    """Byte arrays packed at 64-byte aligned offsets."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, array: np.ndarray) -> int:
        offset = -(-self.size // ALIGN) * ALIGN
        self.parts.append(b"\0" * (offset - self.size) + np.ascontiguousarray(array).tobytes())
        self.size = offset + array.nbytes
        return offset

    def data(self) -> bytes:
        return b"".join(self.parts)


def describe(
    name: str,
    functions: list[Function],
    max_batch: int,
    blas_int_bits: int,
    checkpoint_path: str | os.PathLike | None = None,
    arena_batches: tuple[int, ...] = (1, 128),
) -> Model:
    graph = functions[0].program.graph
    blob = BlobWriter()
    param_names = list(dict.fromkeys(n.name for f in functions for n in f.program.leaves(ParameterOp)))
    train = next((f for f in functions if f.name == "train_step"), None)
    saved = len(train.program.leaves(ParameterOp)) if train else len(param_names)
    values = {n: graph.params[n] for n in param_names}
    if checkpoint_path is not None:
        values.update(_baked(values, checkpoint_path))
    params = [Tensor(n, values[n].shape, values[n].dtype, blob.add(values[n])) for n in param_names]
    states = [Tensor(k, v.shape, v.dtype, fill=float(v.flat[0])) for k, v in (train.state if train else {}).items()]
    consts: list[Tensor] = []
    const_index: dict[int, int] = {}
    tables = []
    for function in functions:
        schedule = function.program.schedule
        for buffer in schedule.buffers:
            if buffer.kind == "const" and id(buffer.key) not in const_index:
                const_index[id(buffer.key)] = len(consts)
                consts.append(Tensor(f"const{len(consts)}", buffer.shape, buffer.dtype, blob.add(buffer.key)))
        tables.append(_table(name, function, param_names, [s.name for s in states], const_index))
    limit = _max_batch(functions, max_batch, blas_int_bits)
    for table, function in zip(tables, functions):
        bufs = function.program.schedule.buffers
        table.arena_bytes = {b: arena.pack(bufs, b)[1] for b in sorted({*arena_batches, limit}) if b <= limit}
    lr_state = next((i for i, s in enumerate(states) if s.name == LR_KEY), -1)
    return Model(name, params, saved, states, consts, tables, blob.data(), limit, lr_state)


def _baked(current: dict[str, np.ndarray], path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A checkpoint's values of our parameters (extra ones, e.g. of another function, are ignored)."""
    wanted = {f"param/{name}": value for name, value in current.items()}
    loaded, _ = checkpoint.read(path, wanted, exact=False)
    return {key.removeprefix("param/"): value for key, value in loaded.items()}


def _table(model: str, function: Function, params: list[str], states: list[str], consts: dict[int, int]) -> Table:
    program, schedule = function.program, function.program.schedule
    used = {"h", "batch"}
    inputs = [Value(_unique(c_identifier(n.name), used), n.shape, n.dtype) for n in function.inputs]
    position = {n.name: i for i, n in enumerate(function.inputs)}
    outputs = []
    for i, node in enumerate(program.outputs):
        label = "loss" if node is program.loss else (node.name or f"output{i}")
        outputs.append(Value(_unique(c_identifier(label), used), node.shape, node.dtype, schedule.slot(node)))
    rows = [(b, _index(b, position, params, states, consts)) for b in schedule.buffers]
    return Table(function.name, f"drug_{model}_{function.name}_entry", rows, inputs, outputs)


def _index(buffer: Buffer, inputs: dict[str, int], params: list[str], states: list[str], consts: dict[int, int]) -> int:
    """Where the runtime finds a slot's memory: the argument position of an input, the index of a
    parameter, state or constant in the model's lists; -1 for temps (the arena)."""
    if buffer.kind == "input":
        return inputs[buffer.key]
    if buffer.kind == "param":
        return params.index(buffer.key)
    if buffer.kind == "state":
        return states.index(buffer.key)
    if buffer.kind == "const":
        return consts[id(buffer.key)]
    return -1


def _unique(name: str, used: set[str]) -> str:
    while name in used:
        name += "_"
    used.add(name)
    return name


def _max_batch(functions: list[Function], requested: int, blas_int_bits: int) -> int:
    """The largest batch at most `requested` for which every buffer (and so every GEMM dimension and
    leading dimension) fits the BLAS's signed integers."""
    if requested < 1:
        raise GraphError(f"--max-batch must be at least 1, got {requested}")
    limit = 2 ** (blas_int_bits - 1) - 1
    best = requested
    for function in functions:
        for buffer in function.program.schedule.buffers:
            powers = sum(d is None for d in buffer.shape)
            static = math.prod(d for d in buffer.shape if d is not None)
            if static > limit:
                raise GraphError(
                    f"{function.name}: a buffer of shape {buffer.shape} has more elements than the "
                    f"{blas_int_bits}-bit integers of the BLAS can count; use --blas-int 64"
                )
            if powers and static:
                fits = int((limit // static) ** (1 / powers))
                while (fits + 1) ** powers * static <= limit:
                    fits += 1
                while fits**powers * static > limit:
                    fits -= 1
                best = min(best, fits)
    return best

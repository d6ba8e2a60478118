"""Small helpers for building LLVM IR with llvmlite: types, counted loops, offsets."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import networkx as nx
import numpy as np
from llvmlite import ir

STATUS_CALLBACK_FAILED, STATUS_INDEX_OUT_OF_RANGE = 1, 2  # what a kernel returns on failure
STATUS_OUT_OF_MEMORY = 3
STATUS_OUT_OF_BOUNDS = 4  # DRUG_BOUNDS_CHECK=1 caught a load or store outside its buffer (compiler/bounds.py)
STATUS_NOT_FINITE = 5  # debug_numerics: a kernel wrote NaN or Inf (probes.FiniteCheck)
STATUS_INVALID_INPUT = 6  # a value the op refuses (NaN cast to an int, one value per channel): its `ref` says which

I64 = ir.IntType(64)
I32 = ir.IntType(32)
PTR = ir.PointerType()
VOID = ir.VoidType()

I8 = ir.IntType(8)
I1 = ir.IntType(1)

_TYPES = {"float32": ir.FloatType(), "float64": ir.DoubleType(), "int32": I32, "int64": I64, "bool": I8}


def llvm_type(dtype: np.dtype) -> ir.Type:
    """How an element of `dtype` is stored in a buffer (bool: one byte, 0 or 1, like NumPy's)."""
    return _TYPES[np.dtype(dtype).name]


def scalar_type(dtype: np.dtype) -> ir.Type:
    """How an element of `dtype` is computed with: its storage type, except bool, an i1."""
    return I1 if np.dtype(dtype) == np.bool_ else llvm_type(dtype)


def to_scalar(b: ir.IRBuilder, dtype: np.dtype, stored: ir.Value) -> ir.Value:
    """A loaded element as a scalar value (a bool byte becomes an i1)."""
    if np.dtype(dtype) != np.bool_:
        return stored
    return b.icmp_unsigned("!=", stored, ir.Constant(I8, 0), name="bool")


def to_storage(b: ir.IRBuilder, dtype: np.dtype, value: ir.Value) -> ir.Value:
    """A scalar value as the element to store (an i1 becomes a 0/1 byte)."""
    return b.zext(value, I8, name="byte") if np.dtype(dtype) == np.bool_ else value


def scalar_constant(dtype: np.dtype, value) -> ir.Constant:
    """`value` as a scalar constant of `dtype` (floats, integers, bools: i1)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return ir.Constant(scalar_type(dtype), float(value))
    return ir.Constant(scalar_type(dtype), int(bool(value)) if dtype == np.bool_ else int(value))


def i64(value: int) -> ir.Constant:
    return ir.Constant(I64, int(value))


class Callee:
    """An opaque pointer used as a call target (llvmlite wants to know the function type)."""

    def __init__(self, pointer: ir.Value, fnty: ir.FunctionType):
        self.pointer, self.function_type, self.type = pointer, fnty, pointer.type

    def get_reference(self) -> str:
        return self.pointer.get_reference()

    def __getattr__(self, name):
        return getattr(self.pointer, name)


@contextmanager
def for_range(
    b: ir.IRBuilder,
    stop: ir.Value,
    name: str = "i",
    start: ir.Value | None = None,
    masked_tail: bool = False,
    interleave: int | None = None,
) -> Iterator[ir.Value]:
    """`for (i = start; i < stop; ++i)`; the body is emitted inside the `with` block.
    `masked_tail`: ask LLVM's vectorizer to run the last partial vector masked rather than add a
    remainder loop (one copy of the body instead of three: for short loops with long bodies).
    `interleave`: how many vectors of the loop one iteration of the vectorized loop handles
    (LLVM's choice if None)."""
    start = start if start is not None else i64(0)
    before = b.block
    cond = b.append_basic_block(f"{name}.cond")
    body = b.append_basic_block(f"{name}.body")
    end = b.append_basic_block(f"{name}.end")
    b.branch(cond)
    b.position_at_end(cond)
    index = b.phi(I64, name=name)
    index.add_incoming(start, before)
    b.cbranch(b.icmp_signed("<", index, stop), body, end)
    b.position_at_end(body)
    yield index
    index.add_incoming(b.add(index, i64(1), name=f"{name}.next", flags=("nuw", "nsw")), b.block)
    latch = b.branch(cond)
    hints = [("llvm.loop.vectorize.predicate.enable", ir.Constant(ir.IntType(1), 1))] if masked_tail else []
    if interleave is not None:
        hints.append(("llvm.loop.interleave.count", ir.Constant(ir.IntType(32), interleave)))
    if hints:
        _hint_vectorizer(b.module, latch, hints)
    b.position_at_end(end)


def _hint_vectorizer(module: ir.Module, latch: ir.Instruction, hints: list[tuple[str, ir.Constant]]) -> None:
    """`llvm.loop` metadata with these (name, value) hints on the loop whose back branch is `latch`."""
    nodes = [module.add_metadata([ir.MetaDataString(module, name), value]) for name, value in hints]
    where = ir.MetaDataString(module, f"{latch.function.name}/{latch.parent.name}")  # one node per loop
    loop = module.add_metadata([*nodes, where])
    loop.operands = (loop, *loop.operands)  # a loop's metadata names itself first (LLVM's rule)
    latch.set_metadata("llvm.loop", loop)


@contextmanager
def loop_nest(
    b: ir.IRBuilder,
    extents: Sequence[ir.Value],
    prefix: str = "i",
    bounds: dict | None = None,
    interleave: int | None = None,
) -> Iterator[list[ir.Value]]:
    """Row-major nested loops; yields the index of every level. `bounds` maps a level to the
    (start, stop) that replaces its range; `interleave` is the innermost loop's (`for_range`)."""
    if not extents:
        yield []
        return
    bounds = bounds or {}
    start, stop = bounds.get(0, (None, extents[0]))
    inner = {level - 1: range_ for level, range_ in bounds.items() if level > 0}
    innermost = interleave if len(extents) == 1 else None
    with for_range(b, stop, f"{prefix}{0}", start=start, interleave=innermost) as index:
        with loop_nest(b, extents[1:], prefix + "_", inner, interleave) as rest:
            yield [index] + rest


def dim_value(dim: int | None, batch: ir.Value) -> ir.Value:
    return batch if dim is None else i64(dim)


def row_major_strides(b: ir.IRBuilder, shape: Sequence[int | None], batch: ir.Value) -> list[ir.Value]:
    """Element strides of a C-contiguous buffer whose batch dimension is bound at run time."""
    strides: list[ir.Value] = []
    acc: ir.Value = i64(1)
    for dim in reversed(shape):
        strides.append(acc)
        acc = _mul(b, acc, dim_value(dim, batch))
    return strides[::-1]


def _mul(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    if isinstance(x, ir.Constant) and isinstance(y, ir.Constant):
        return i64(x.constant * y.constant)
    if isinstance(x, ir.Constant) and x.constant == 1:
        return y
    if isinstance(y, ir.Constant) and y.constant == 1:
        return x
    return b.mul(x, y, flags=("nuw", "nsw"))


def linear_offset(b: ir.IRBuilder, terms: Sequence[tuple[ir.Value, ir.Value]]) -> ir.Value:
    """Sum of index * stride, skipping zero strides."""
    offset: ir.Value = i64(0)
    for index, stride in terms:
        if isinstance(stride, ir.Constant) and stride.constant == 0:
            continue
        term = _mul(b, index, stride)
        offset = (
            term
            if isinstance(offset, ir.Constant) and offset.constant == 0
            else b.add(offset, term, flags=("nuw", "nsw"))
        )
    return offset


def element_count(b: ir.IRBuilder, shape: Sequence[int | None], batch: ir.Value) -> ir.Value:
    acc: ir.Value = i64(1)
    for dim in shape:
        acc = _mul(b, acc, dim_value(dim, batch))
    return acc


def declared(module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    """The external function (a C library's, an LLVM intrinsic) `name`, declared in `module` once."""
    return module.globals.get(name) or ir.Function(module, ir.FunctionType(ret, args), name)


def aligned(b: ir.IRBuilder, pointer: ir.Value, alignment: int, name: str) -> ir.Value:
    """`pointer` rounded up to a multiple of `alignment` (a power of two): scratch memory from malloc
    asked for `alignment` bytes more than it needs."""
    address = b.add(b.ptrtoint(pointer, I64), i64(alignment - 1))
    return b.inttoptr(b.and_(address, i64(-alignment)), PTR, name=name)


def skip_optimizer(fn: ir.Function) -> None:
    """Compile `fn` as written (`optnone`: no IR optimizer, code generation at its lightest),
    for code that only loads table entries, calls and copies: optimizing it buys nothing at run
    time and costs as much per line as a kernel's loop."""
    fn.attributes.add("noinline")
    fn.attributes.add("optnone")


def has_loop(fn: ir.Function) -> bool:
    """Whether `fn`'s control flow has a cycle; a function without one runs each of its
    instructions at most once per call."""
    graph = nx.DiGraph()
    for block in fn.blocks:
        graph.add_node(block.name)
        last = block.instructions[-1] if block.instructions else None
        targets = [op for op in getattr(last, "operands", ()) if isinstance(op, ir.Block)]
        if isinstance(last, ir.SwitchInstr):
            targets += [last.default] + [target for _, target in last.cases]
        targets += getattr(last, "destinations", [])  # indirectbr
        graph.add_edges_from((block.name, target.name) for target in targets)
    return not nx.is_directed_acyclic_graph(graph)

"""Kernels of the ops that move data without arithmetic: one work item per output element, which
finds where its value comes from (gathers never race, so scatters become gathers: a slice's
gradient asks whether its position was sliced)."""

from __future__ import annotations

from ....compiler.grid import Size, row_major_strides
from ....core.types import Shape
from ....ops.shape import AssembleSlices, Concat, Slice, SliceGrad, Transpose
from ..lowering import kernel
from ..source import literal, offset, size, unflatten


def _indices(f, shape: Shape, prefix: str = "o") -> list[str]:
    """Declare the multi-index of `item` in an array of `shape`; returns the index names."""
    names = [f"{prefix}{a}" for a in range(len(shape))]
    unflatten("item", [Size.of([d]) for d in shape], names, f.lines, "    ")
    return names


def _slice_source(index: tuple, shape: Shape, kept: list[str]) -> str:
    """Offset, in an array of `shape`, of the element slice `index` maps position `kept` to."""
    terms, names = [], iter(kept)
    for item, stride in zip(index, row_major_strides(shape)):
        if isinstance(item, int):
            terms.append((str(item), stride))
            continue
        start, _, step = item
        terms.append((f"({start} + {next(names)} * {step})", stride))
    return offset(terms)


def _slice_hit(index: tuple, in_shape: Shape, position: list[str], g_shape: Shape) -> tuple[str, str]:
    """Whether input position `position` is one slice `index` takes, and the offset in the slice's
    gradient (shape `g_shape`) of the element it became."""
    conditions, kept = [], []
    for item, name in zip(index, position):
        if isinstance(item, int):
            conditions.append(f"{name} == {item}")
            continue
        start, stop, step = item
        if stop is None:  # the batch axis, taken whole
            kept.append(name)
            continue
        count = len(range(start, stop, step))
        conditions.append(f"({name} - {start}) % {step} == 0")
        conditions.append(f"({name} - {start}) / {step} >= 0 && ({name} - {start}) / {step} < {count}")
        kept.append(f"(({name} - {start}) / {step})")
    where = offset(list(zip(kept, row_major_strides(g_shape))))
    return " && ".join(conditions) or "1", where


def _gather(k, node, source_offset) -> None:
    """Each output element reads the input's element at `source_offset(output index names)`."""
    (x,) = node.inputs
    f = k.function(Size.of(node.shape))
    source, out = f.read(x), f.write(node)
    f.lines += [f"    {out}[item] = {source}[{source_offset(_indices(f, node.shape))}];"]


@kernel(Transpose)
def _transpose(k, node):
    """Output axis a reads input axis perm[a]."""
    strides = row_major_strides(node.inputs[0].shape)
    _gather(k, node, lambda index: offset([(i, strides[p]) for i, p in zip(index, node.op.perm)]))


@kernel(Slice)
def _slice(k, node):
    _gather(k, node, lambda index: _slice_source(node.op.index, node.inputs[0].shape, index))


def _gather_slices(k, node, indices: tuple, grads: list) -> None:
    """Each output element takes the gradient of the (disjoint) slice that covers it, else 0."""
    f = k.function(Size.of(node.shape))
    out = f.write(node)
    position = _indices(f, node.shape)
    value = literal(0, node.dtype)
    for index, g in reversed(list(zip(indices, grads))):
        hit, where = _slice_hit(index, node.op.in_shape, position, g.shape)
        value = f"({hit}) ? {f.read(g)}[{where}] : {value}"
    f.lines += [f"    {out}[item] = {value};"]


@kernel(SliceGrad)
def _slice_grad(k, node):
    _gather_slices(k, node, (node.op.index,), list(node.inputs))


@kernel(AssembleSlices)
def _assemble_slices(k, node):
    _gather_slices(k, node, node.op.indices, list(node.inputs))


@kernel(Concat)
def _concat(k, node):
    """Output (outer, column, inner): the input whose column range holds the column."""
    axis = node.op.axis
    inner = Size.of(node.shape[axis + 1 :])
    f = k.function(Size.of(node.shape))
    out = f.write(node)
    width = node.shape[axis]
    f.lines += [
        f"    const long inner = item % {size(inner)};",
        f"    const long column = (item / {size(inner)}) % {width};",
        f"    const long outer = item / ({size(inner)} * {width});",
    ]
    value, start = None, 0
    for x in node.inputs:
        stop = start + x.shape[axis]
        at = f"(outer * {x.shape[axis]} + column - {start}) * {size(inner)} + inner"
        read = f"{f.read(x)}[{at}]"
        value = read if value is None else f"column < {start} ? {value} : {read}"
        start = stop
    f.lines += [f"    {out}[item] = {value};"]

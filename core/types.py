"""Tensor types with a symbolic batch dimension, and the broadcasting rule all elementwise ops share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ShapeError

Dim = int | None  # None is the batch dimension, bound when the compiled function is called
Shape = tuple[Dim, ...]

FLOAT_DTYPES = (np.dtype("float32"), np.dtype("float64"))
INT_DTYPES = (np.dtype("int32"), np.dtype("int64"))
BOOL = np.dtype("bool")  # comparisons, masks, logical ops: one byte per element in memory
DTYPES = FLOAT_DTYPES + INT_DTYPES + (BOOL,)  # every dtype a node may have


@dataclass(frozen=True, slots=True)
class TensorType:
    shape: Shape
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{format_shape(self.shape)} {self.dtype}"


def format_shape(shape: Shape) -> str:
    inner = ", ".join("None" if d is None else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def normalize_shape(shape: Sequence[Dim] | int) -> Shape:
    if isinstance(shape, (int, np.integer)) or shape is None:
        shape = (shape,)
    out = tuple(None if d is None else int(d) for d in shape)
    if any(d is not None and d < 0 for d in out):
        raise ShapeError(f"negative dimension in shape {format_shape(out)}")
    if sum(d is None for d in out) > 1:
        raise ShapeError(f"shape {format_shape(out)} has more than one batch (None) dimension")
    return out


def concrete_shape(shape: Shape, batch: int) -> tuple[int, ...]:
    """The runtime shape once the batch dimension is bound."""
    return tuple(batch if d is None else d for d in shape)


def broadcast_shapes(shapes: Sequence[Shape]) -> Shape:
    """NumPy broadcasting where None (the batch) only meets None or 1."""
    if shapes and all(s == shapes[0] for s in shapes):
        return shapes[0]
    ndim = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for axis in range(-ndim, 0):
        dims = {s[axis] for s in shapes if len(s) >= -axis and s[axis] != 1}
        if len(dims) > 1:
            raise ShapeError(f"cannot broadcast shapes {', '.join(format_shape(s) for s in shapes)}")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def normalize_axes(axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ShapeError(f"axis {a} out of range for {ndim}-D input")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {axes}")
    return tuple(sorted(out))

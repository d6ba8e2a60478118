"""Checks every fed array before anything runs, and binds the batch dimension."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..core.errors import DTypeError, GraphError, ShapeError
from ..core.memory import allocating
from ..core.node import Node
from ..core.types import format_shape


def _is_masked(value: Any) -> bool:
    """A NumPy masked array; asked without importing numpy.ma, which takes longer than a small
    step (no masked array exists unless it was imported)."""
    ma = sys.modules.get("numpy.ma")
    return ma is not None and isinstance(value, ma.MaskedArray)


def bind_feeds(
    inputs: Sequence[Node], feeds: Mapping[str, Any], check_finite: bool
) -> tuple[dict[int, np.ndarray], int | None]:
    """Validated, C-contiguous arrays by input node id, and the bound batch size."""
    by_name = {n.name: n for n in inputs}
    unknown = sorted(set(feeds) - set(by_name))
    if unknown:
        raise GraphError(f"unknown feed {unknown}; this function takes inputs {sorted(by_name)}")
    missing = sorted(set(by_name) - set(feeds))
    if missing:
        raise GraphError(f"missing feed {missing}; this function takes inputs {sorted(by_name)}")
    arrays: dict[int, np.ndarray] = {}
    batch: int | None = None
    batch_from = ""
    for name, node in by_name.items():
        value = feeds[name]
        if _is_masked(value):
            raise ShapeError(f"input '{name}' is a masked array, whose mask would be ignored; fill it (.filled())")
        array = value if isinstance(value, np.ndarray) else _from_python(name, value, node.dtype)
        if array.dtype != node.dtype:
            raise DTypeError(
                f"input '{name}' expects dtype {node.dtype}, got {array.dtype}; convert with .astype('{node.dtype}')"
            )
        declared = node.shape
        if array.ndim != len(declared) or any(d is not None and d != a for d, a in zip(declared, array.shape)):
            raise ShapeError(f"input '{name}' expects shape {format_shape(declared)}, got {format_shape(array.shape)}")
        if None in declared:
            size = array.shape[declared.index(None)]
            if batch is not None and size != batch:
                raise ShapeError(
                    f"input '{name}' has batch size {size} but input '{batch_from}' has {batch}; "
                    "all inputs of one call share the batch dimension"
                )
            batch, batch_from = size, name
        if check_finite and array.dtype.kind == "f" and not np.isfinite(array).all():
            raise GraphError(f"input '{name}' contains NaN or Inf (check_finite=True)")
        arrays[node.id] = _contiguous(name, array)
    return arrays, batch


class FeedBinder:
    """`bind_feeds` for one function's inputs, prepared once: feeds that are exactly what the
    inputs declare (C-contiguous arrays of their dtypes and shapes) pass with a few tuple
    comparisons; anything else takes the full check, which converts it or says what is wrong."""

    def __init__(self, inputs: Sequence[Node]):
        self.inputs = list(inputs)
        # name, node id, dtype, declared shape, batch axis (None: a static shape)
        self._expected = [
            (n.name, n.id, n.dtype, n.shape, n.shape.index(None) if None in n.shape else None) for n in self.inputs
        ]
        self._prepared = all(n.shape.count(None) <= 1 for n in self.inputs)

    def __call__(self, feeds: Mapping[str, Any], check_finite: bool) -> tuple[dict[int, np.ndarray], int | None]:
        if check_finite or not self._prepared or len(feeds) != len(self._expected):
            return bind_feeds(self.inputs, feeds, check_finite)
        arrays: dict[int, np.ndarray] = {}
        batch: int | None = None
        for name, node_id, dtype, declared, axis in self._expected:
            array = feeds.get(name)
            if type(array) is not np.ndarray or array.dtype != dtype or not array.flags.c_contiguous:
                return bind_feeds(self.inputs, feeds, check_finite)
            shape = array.shape
            if axis is None:
                if shape != declared:
                    return bind_feeds(self.inputs, feeds, check_finite)
            elif len(shape) != len(declared) or shape[:axis] + (None,) + shape[axis + 1 :] != declared:
                return bind_feeds(self.inputs, feeds, check_finite)
            elif batch is None:
                batch = shape[axis]
            elif shape[axis] != batch:
                return bind_feeds(self.inputs, feeds, check_finite)
            arrays[node_id] = array
        return arrays, batch


def _from_python(name: str, value: Any, dtype: np.dtype) -> np.ndarray:
    """Numbers and nested lists as an array of `dtype`, refusing what would change their values:
    non-numbers (None would become NaN), floats fed to an integer input (2.7 would become 2),
    integers the dtype cannot hold."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:  # ragged lists
        raise ShapeError(f"input '{name}' is not an array of numbers: {error}") from None
    if array.dtype.kind not in "biuf":
        raise DTypeError(f"input '{name}' expects {dtype} numbers, got {type(value).__name__} of {array.dtype}")
    if dtype.kind in "iu" and array.dtype.kind == "f":
        raise DTypeError(f"input '{name}' expects integers ({dtype}), got floats; convert them explicitly")
    with np.errstate(over="ignore"):  # overflow is checked just below
        converted = array.astype(dtype)
    if dtype.kind in "iu" and not np.array_equal(converted, array):
        raise ShapeError(f"input '{name}' has integers out of the range of {dtype}")
    if dtype.kind == "f" and np.any(np.isinf(converted) & ~np.isinf(array)):
        bad = array[np.isinf(converted) & ~np.isinf(array)].flat[0]
        raise ShapeError(f"input '{name}' has numbers beyond the range of {dtype} (such as {bad!r}): they would be inf")
    return converted


def _contiguous(name: str, array: np.ndarray) -> np.ndarray:
    """The array itself if C-contiguous, else a C-ordered copy (views, Fortran order, strides)."""
    if array.flags.c_contiguous:
        return array
    return allocating(
        f"the C-contiguous copy of input '{name}' {array.shape}", array.nbytes, lambda: np.ascontiguousarray(array)
    )

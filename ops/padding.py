"""`pad`: any axes padded with a constant, by replicating the edge, or by reflection (PyTorch's
modes; NumPy's constant, edge and reflect), with its adjoint. Padding is separable: each padded
position reads one source position per axis (`source_index`), and the gradient adds each
output element back into the element it was read from."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.errors import ShapeError
from ..core.node import Node, apply, user_call
from ..core.op import Example, Op, same_dtype, same_float_dtype
from ..core.types import DTYPES, Shape, TensorType, format_shape
from .shape import Slice

MODES = ("constant", "replicate", "reflect")
_NUMPY_MODES = {"constant": "constant", "replicate": "edge", "reflect": "reflect"}

Pads = tuple[tuple[int, int], ...]


def source_index(position: int, n: int, lo: int, mode: str) -> int:
    """The source position along an axis of size n that padded position `position` reads
    (-1: the constant)."""
    i = position - lo
    if mode == "replicate":
        return min(max(i, 0), n - 1)
    if mode == "reflect":
        i = abs(i)
        return 2 * (n - 1) - i if i > n - 1 else i
    return i if 0 <= i < n else -1


def _padded(shape: Shape, pads: Pads) -> Shape:
    return tuple(None if d is None else d + lo + hi for d, (lo, hi) in zip(shape, pads))


def _check(op: Op, shape: Shape) -> None:
    if op.mode not in MODES:
        raise ShapeError(f"pad mode must be one of {MODES}, got {op.mode!r}")
    if len(op.pads) != len(shape):
        raise ShapeError(f"{len(op.pads)} (lo, hi) pairs for a {len(shape)}-D input")
    for axis, (d, (lo, hi)) in enumerate(zip(shape, op.pads)):
        if lo < 0 or hi < 0:
            raise ShapeError(f"negative padding {(lo, hi)} on axis {axis}")
        if d is None and (lo or hi):
            raise ShapeError(f"axis {axis} is the batch dimension; it cannot be padded")
        if op.mode == "reflect" and d is not None and max(lo, hi) >= d:
            raise ShapeError(f"reflect padding {(lo, hi)} on axis {axis} needs the axis ({d}) larger than the pad")
        if op.mode == "replicate" and d == 0 and (lo or hi):
            raise ShapeError(f"replicate padding of the empty axis {axis}")


class PadND(Op):
    """x padded by pads[axis] = (before, after) on each axis."""

    name = "pad_nd"
    arity = 1

    def __init__(self, pads: Pads, mode: str = "constant", value: float = 0.0):
        self.pads, self.mode, self.value = pads, mode, float(value)

    def infer(self, x):
        same_dtype([x], DTYPES)
        _check(self, x.shape)
        return TensorType(_padded(x.shape, self.pads), x.dtype)

    def ref(self, x):
        if self.mode == "constant":
            return np.pad(x, self.pads, mode="constant", constant_values=np.asarray(self.value, x.dtype))
        return np.pad(x, self.pads, mode=_NUMPY_MODES[self.mode])

    def grad(self, g, out, x):
        if self.mode == "constant":  # the interior
            index = tuple((lo, None if d is None else lo + d, 1) for d, (lo, _) in zip(x.shape, self.pads))
            return [apply(Slice(index), g)]
        return [apply(PadNDGrad(self.pads, self.mode, x.shape), g)]

    @classmethod
    def example(cls, rng, dims):
        x = rng.standard_normal((dims[0], dims[1] + 2, 3))
        mode = MODES[dims[2] % 3]
        return cls(((0, 0), (2, 1), (1, 2)), mode, 0.5), Example([x], [True], {0: 0})


class PadNDGrad(Op):
    """The adjoint of replicate/reflect padding: each element of g added to its source."""

    name = "pad_nd_grad"
    arity = 1

    def __init__(self, pads: Pads, mode: str, in_shape: Shape):
        self.pads, self.mode, self.in_shape = pads, mode, in_shape

    def infer(self, g):
        same_float_dtype(self.name, [g])
        _check(self, self.in_shape)
        if g.shape != _padded(self.in_shape, self.pads):
            raise ShapeError(f"gradient {format_shape(g.shape)} does not fit padding {format_shape(self.in_shape)}")
        return TensorType(self.in_shape, g.dtype)

    def ref(self, g):
        out = g
        for axis, (lo, hi) in enumerate(self.pads):  # one axis at a time (padding is separable)
            if not (lo or hi):
                continue
            n = out.shape[axis] - lo - hi
            sources = np.array([source_index(p, n, lo, self.mode) for p in range(out.shape[axis])])
            summed = np.zeros(out.shape[:axis] + (n,) + out.shape[axis + 1 :], g.dtype)
            np.add.at(np.moveaxis(summed, axis, 0), sources, np.moveaxis(out, axis, 0))
            out = summed
        return out

    def grad(self, gg, out, g):
        return [apply(PadND(self.pads, self.mode), gg)]

    @classmethod
    def example(cls, rng, dims):
        op, example = PadND.example(rng, dims)
        mode = ("replicate", "reflect")[dims[2] % 2]
        (x,) = example.inputs
        g = rng.standard_normal(np.pad(x, op.pads).shape)
        return cls(op.pads, mode, (None,) + x.shape[1:]), Example([g], [True], {0: 0})


@user_call()
def pad(x: Node, pads: Sequence[tuple[int, int]] | Sequence[int], mode: str = "constant", value: float = 0.0) -> Node:
    """x padded on any axes: with a constant, by repeating the edge ("replicate", NumPy's
    "edge") or by mirroring without repeating the edge ("reflect", like PyTorch's and NumPy's).
    The gradient of replicate and reflect padding adds each padded element back into its source.

    Args:
        x: A node.
        pads: One (before, after) pair per axis; a flat (before, after) pads the last axis only.
            The batch dimension cannot be padded.
        mode: "constant", "replicate" or "reflect".
        value: The constant of "constant" padding.

    Returns:
        A node of the padded shape.

    Raises:
        ShapeError: A bad mode, pair count or pad (negative, on the batch axis, or a reflect pad
            as large as its axis).

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> dg.pad(x, (2, 1), "reflect").eval(x=np.array([[1.0, 2.0, 3.0]], np.float32))
        array([[3., 2., 1., 2., 3., 2.]], dtype=float32)
    """
    pads = list(pads)
    if pads and all(isinstance(p, int) for p in pads):
        if len(pads) != 2:
            raise ShapeError(f"pad of {x.describe()}: a flat padding is one (before, after) pair, got {pads}")
        pads = [(0, 0)] * (x.ndim - 1) + [tuple(pads)]
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    return apply(PadND(pads, mode, value), x)

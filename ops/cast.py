"""Dtype conversions among float32, float64, int32, int64 and bool, with NumPy's `astype` meaning:
floats to ints truncate toward zero, anything to bool is `x != 0`, bool to numbers is 0 or 1.

A float that no integer of the target holds (NaN, an infinity, a value out of range) has no
meaningful conversion (NumPy gives an arbitrary integer): `FloatToInt` refuses it with an error
naming the node, before the step writes anything. Every other conversion is plain elementwise
code and fuses with its neighbours."""

from __future__ import annotations

import numpy as np

from ..core.errors import DTypeError, GraphError
from ..core.node import Node, apply, user_call
from ..core.op import Example
from ..core.types import DTYPES, TensorType
from .elementwise import Elementwise


class _Conversion(Elementwise):
    arity = 1

    def __init__(self, dtype: np.dtype):
        self.dtype = np.dtype(dtype)

    def infer(self, x):
        if x.dtype not in DTYPES or self.dtype not in DTYPES:
            raise DTypeError(f"casts convert among {', '.join(map(str, DTYPES))}; not {x.dtype} to {self.dtype}")
        return TensorType(x.shape, self.dtype)

    def grad(self, g, out, x):
        # between floats the gradient converts back; an integer or bool result carries none
        both_float = x.dtype.kind == "f" and self.dtype.kind == "f"
        return [cast(g, x.dtype) if both_float else None]


class Cast(_Conversion):
    """Every conversion that cannot fail (all but float to integer)."""

    name = "cast"

    def ref(self, x):
        return x.astype(self.dtype)

    @classmethod
    def example(cls, rng, dims):
        # to float64 so that finite differences stay exact; the native tests also run it from float32
        x = rng.uniform(-2.0, 2.0, size=(dims[0], dims[1]))
        return cls(np.dtype("float64")), Example([x], [True], {0: 0})


class FloatToInt(_Conversion):
    """Float to integer, truncating toward zero; NaN, infinities and values out of the target's
    range stop the step with a GraphError."""

    name = "float_to_int"
    may_fail = True

    def infer(self, x):
        if x.dtype.kind != "f" or self.dtype.kind != "i":
            raise DTypeError(f"float_to_int converts floats to integers, not {x.dtype} to {self.dtype}")
        return super().infer(x)

    def ref(self, x):
        lo, hi = int_bounds(self.dtype)
        bad = ~((x >= lo) & (x < hi))  # NaN fails both comparisons
        if np.any(bad):
            raise GraphError(f"cannot cast {x[bad][0]} to {self.dtype}; the step was not completed")
        return x.astype(self.dtype)

    @classmethod
    def example(cls, rng, dims):
        x = rng.uniform(-50.0, 50.0, size=(dims[0], dims[1]))
        return cls(np.dtype("int32")), Example([x], [False], {0: 0})


def int_bounds(dtype: np.dtype) -> tuple[float, float]:
    """[lo, hi): the floats whose truncation the integer dtype holds. Both are powers of two
    (-2^31 and 2^31 for int32), exact in float32 and float64, so every backend compares alike."""
    lo = float(np.iinfo(dtype).min)
    return lo, -lo


@user_call()
def cast(x: Node, dtype: str | np.dtype | type) -> Node:
    """x converted to `dtype`, as NumPy's `astype` (`x.astype(dtype)` is `cast(x, dtype)`):
    floats to integers truncate toward zero, anything to bool is `x != 0`, bools become 0 or 1.
    Between floats the gradient converts back; integer and bool results carry none.

    A float that no integer of the target holds (NaN, an infinity, a value out of range) stops
    the step with a GraphError naming the node and the value, before anything is written.

    Args:
        x: A node.
        dtype: float32, float64, int32, int64 or bool (a name or a NumPy dtype).

    Returns:
        A node of x's shape in `dtype`; x itself if it has that dtype already.

    Raises:
        DTypeError: An unknown or unsupported dtype.
        GraphError: (at a call) a value that the integer dtype cannot hold.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3))
        >>> x.astype("int32").eval(x=np.array([[-1.7, 0.5, 2.9]], np.float32))
        array([[-1,  0,  2]], dtype=int32)
        >>> dg.cast(x > 0, "float32").eval(x=np.array([[-1.7, 0.5, 2.9]], np.float32))
        array([[0., 1., 1.]], dtype=float32)
    """
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise DTypeError(f"cast of {x.describe()}: {dtype!r} is not a dtype") from None
    if dtype not in DTYPES:
        raise DTypeError(f"cast of {x.describe()}: casts convert among {', '.join(map(str, DTYPES))}, not to {dtype}")
    if x.dtype == dtype:
        return x
    op = FloatToInt(dtype) if x.dtype.kind == "f" and dtype.kind == "i" else Cast(dtype)
    return apply(op, x)

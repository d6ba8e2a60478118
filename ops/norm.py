"""Normalization over trailing axes: layer_norm ((x - mean) / sqrt(var + eps), no affine: the layer
adds scale and bias) and rms_norm (x / sqrt(mean(x^2) + eps)). Each has a fused native forward and
backward (one pass over a row for the statistics, one to write); the backward recomputes the
statistics from x instead of keeping them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..core.errors import ShapeError
from ..core.node import Node, apply, user_call
from ..core.op import Example, Op, same_float_dtype
from ..core.types import Shape, normalize_axes


def row_axes(shape: Shape, axis) -> tuple[int, ...]:
    """The normalized axes, which must be the trailing ones and static (a row is contiguous)."""
    axes = normalize_axes(axis, len(shape))
    if not axes or axes != tuple(range(len(shape) - len(axes), len(shape))):
        raise ShapeError(f"normalizes trailing axes only (e.g. -1 or (-2, -1)), got {axis}")
    if any(shape[a] is None for a in axes):
        raise ShapeError("cannot normalize over the batch dimension")
    return axes


class _RowNorm(Op):
    def __init__(self, axes: tuple[int, ...], eps: float):
        self.axes, self.eps = axes, float(eps)

    def row_size(self, shape: Shape) -> int:
        return math.prod(shape[a] for a in self.axes)

    def _stats(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, rstd) kept as size-1 axes; mean is 0 for rms_norm."""
        raise NotImplementedError


class _Forward(_RowNorm):
    arity = 1

    def infer(self, x):
        same_float_dtype(self.name, [x])
        if self.axes != row_axes(x.shape, self.axes):
            raise ShapeError(f"axes {self.axes} are not the trailing axes of {x.ndim}-D input")
        return x

    def ref(self, x):
        mean, rstd = self._stats(x)
        return (x - mean) * rstd

    @classmethod
    def example(cls, rng, dims):
        x = rng.standard_normal((dims[0], 2, dims[1] + 2)) * 2.0 + 0.5
        return cls((2,) if dims[2] % 2 else (1, 2), 1e-5), Example([x], [True], {0: 0})


class _Backward(_RowNorm):
    """dx from (g, x): the statistics are recomputed from x. Their own gradients (second
    derivatives of a norm) are not implemented."""

    arity = 2

    def infer(self, g, x):
        same_float_dtype(self.name, [g, x])
        if g.shape != x.shape:
            raise ShapeError("the gradient must have the input's shape")
        return x


class LayerNorm(_Forward):
    name = "layer_norm"

    def _stats(self, x):
        return _layer_stats(x, self.axes, self.eps)

    def grad(self, g, out, x):
        return [apply(LayerNormGrad(self.axes, self.eps), g, x)]


def _layer_stats(x: np.ndarray, axes: tuple[int, ...], eps: float) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return mean, 1.0 / np.sqrt(var + np.asarray(eps, x.dtype))


class LayerNormGrad(_Backward):
    """dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), xhat = (x - mean) * rstd."""

    name = "layer_norm_grad"

    def ref(self, g, x):
        mean, rstd = _layer_stats(x, self.axes, self.eps)
        xhat = (x - mean) * rstd
        mean_g = g.mean(axis=self.axes, keepdims=True)
        mean_gx = (g * xhat).mean(axis=self.axes, keepdims=True)
        return rstd * (g - mean_g - xhat * mean_gx)


class RMSNorm(_Forward):
    name = "rms_norm"

    def _stats(self, x):
        return np.zeros((), x.dtype), _rms_rstd(x, self.axes, self.eps)

    def grad(self, g, out, x):
        return [apply(RMSNormGrad(self.axes, self.eps), g, x)]


def _rms_rstd(x: np.ndarray, axes: tuple[int, ...], eps: float) -> np.ndarray:
    return 1.0 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + np.asarray(eps, x.dtype))


class RMSNormGrad(_Backward):
    """dx = rstd * (g - y * mean(g * y)), y = x * rstd."""

    name = "rms_norm_grad"

    def ref(self, g, x):
        rstd = _rms_rstd(x, self.axes, self.eps)
        y = x * rstd
        return rstd * (g - y * (g * y).mean(axis=self.axes, keepdims=True))


def _norm(op_class, x, axis, eps: float):
    if eps < 0:
        raise ShapeError(f"{op_class.name} of {x.describe()}: eps must be >= 0, got {eps}")
    try:
        axes = row_axes(x.shape, axis)
    except ShapeError as error:
        raise ShapeError(f"{op_class.name} of {x.describe()}: {error}") from None
    return apply(op_class(axes, eps), x)


@user_call()
def layer_norm(x: Node, axis: int | Sequence[int] = -1, eps: float = 1e-5) -> Node:
    """(x - mean) / sqrt(var + eps) over the trailing `axis`, with the biased variance like
    PyTorch; no scale or bias (`dg.layers.LayerNorm` adds them). Native forward and backward
    kernels make one pass over a row for its statistics and one to write.

    Args:
        x: A float node.
        axis: The last axis (-1) or a tuple of trailing axes; static (not the batch).
        eps: Added to the variance.

    Returns:
        A node of x's shape and dtype.

    Raises:
        ShapeError: The axes are not trailing, or include the batch; eps < 0.
        DTypeError: x is not float.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 4))
        >>> dg.layer_norm(x).eval(x=np.array([[1.0, 2.0, 3.0, 6.0]], np.float32))
        array([[-1.0690434, -0.5345217,  0.       ,  1.6035651]], dtype=float32)
    """
    return _norm(LayerNorm, x, axis, eps)


@user_call()
def rms_norm(x: Node, axis: int | Sequence[int] = -1, eps: float = 1e-6) -> Node:
    """x / sqrt(mean(x^2) + eps) over the trailing `axis` (no scale: `dg.layers.RMSNorm` adds
    one); fused native kernels like `layer_norm`.

    Args:
        x: A float node.
        axis: The last axis (-1) or a tuple of trailing axes; static (not the batch).
        eps: Added to the mean square.

    Returns:
        A node of x's shape and dtype.

    Raises:
        ShapeError: The axes are not trailing, or include the batch; eps < 0.
        DTypeError: x is not float.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2))
        >>> dg.rms_norm(x).eval(x=np.array([[3.0, 4.0]], np.float32))
        array([[0.8485281, 1.1313708]], dtype=float32)
    """
    return _norm(RMSNorm, x, axis, eps)

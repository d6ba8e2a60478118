"""Pooling over NCHW images: global pooling, and local max/average pooling with a kernel size, a
stride (windows may overlap) and padding.

Windows that tile the image (stride = kernel size, no padding) are a reshape and a reduction, which
fusion turns into one loop with the neighbouring elementwise code. Other windows are ops of their
own (MaxPool2D, AvgPool2D) with native kernels; each comes with its adjoints, so gradients of any
order stay graph ops. Max pooling shares a window's gradient among tied maxima, like `dg.max`."""

from __future__ import annotations

import numpy as np

from ..core.errors import ShapeError
from ..core.node import Node, apply, user_call
from ..core.op import Example, Op, same_float_dtype
from ..core.types import TensorType, format_shape
from .reduce import max as reduce_max
from .reduce import mean
from .reduce import min as reduce_min
from .reduce import sum as reduce_sum
from .shape import reshape

Pads = tuple[tuple[int, int], tuple[int, int]]

_POOLS = {"avg": mean, "mean": mean, "sum": reduce_sum, "max": reduce_max, "min": reduce_min}


@user_call()
def global_pool(x: Node, kind: str = "avg") -> Node:
    """Pool NCHW feature maps over both spatial axes: (N, C, H, W) -> (N, C).

    Args:
        x: A float node (N, C, H, W).
        kind: "avg" (or "mean"), "max", "sum" or "min".

    Returns:
        A node (N, C) of x's dtype.

    Raises:
        ShapeError: x is not 4-D, or kind is unknown.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2, 2, 2))
        >>> dg.global_pool(x, "max").eval(x=np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2))
        array([[3., 7.]], dtype=float32)
    """
    if x.ndim != 4:
        raise ShapeError(f"global_pool needs NCHW input, got {x.describe()}")
    if kind not in _POOLS:
        raise ShapeError(f"global_pool kind must be one of {sorted(_POOLS)}, got {kind!r}")
    return _POOLS[kind](x, (2, 3))


class Pooling(Op):
    """Windows of `kernel` pixels, `stride` apart, over the image padded by `pads` ((top, bottom),
    (left, right)). Padding never wins a max and counts as zero in an average unless
    `count_include_pad` is False (PyTorch's conventions)."""

    arity = 1

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], pads: Pads, in_hw: tuple[int, int]):
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)
        self.pads = tuple(tuple(p) for p in pads)
        self.in_hw = tuple(in_hw)

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple(
            (n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(self.in_hw, self.kernel, self.stride, self.pads)
        )

    def check_image(self, x: TensorType, what: str) -> None:
        if x.ndim != 4 or x.shape[2:] != self.in_hw or x.shape[1] is None:
            raise ShapeError(f"{what} {format_shape(x.shape)} must be NCHW with spatial size {self.in_hw}")

    def check_pooled(self, g: TensorType, x: TensorType, what: str) -> None:
        if g.ndim != 4 or g.shape[:2] != x.shape[:2] or g.shape[2:] != self.out_hw:
            raise ShapeError(f"{what} {format_shape(g.shape)} does not fit pooled {format_shape(x.shape)} windows "
                             f"(expected spatial size {self.out_hw})")  # fmt: skip

    def taps(self):
        """(i, j, valid) per window tap: `valid` (HO, WO) marks the output pixels whose tap (i, j)
        reads a real pixel, and `rows`/`cols` index it in the image (clipped where invalid)."""
        (h, w), (sh, sw), ((top, _), (left, _)) = self.in_hw, self.stride, self.pads
        ho, wo = self.out_hw
        for i in range(self.kernel[0]):
            ys = np.arange(ho) * sh + i - top
            for j in range(self.kernel[1]):
                xs = np.arange(wo) * sw + j - left
                valid = ((ys >= 0) & (ys < h))[:, None] & ((xs >= 0) & (xs < w))[None, :]
                yield valid, np.clip(ys, 0, h - 1)[:, None], np.clip(xs, 0, w - 1)[None, :]

    def gather(self, x: np.ndarray, fill: float):
        """Per tap: the (N, C, HO, WO) pixels it reads (`fill` where it reads padding), and `valid`."""
        for valid, rows, cols in self.taps():
            yield np.where(valid, x[:, :, rows, cols], fill), valid

    def scatter(self, parts, shape, dtype) -> np.ndarray:
        """The sum over taps of each tap's (N, C, HO, WO) values added into the pixels it reads."""
        out = np.zeros(shape, dtype)
        for (valid, rows, cols), part in zip(self.taps(), parts):
            np.add.at(out, (slice(None), slice(None), rows, cols), np.where(valid, part, 0))
        return out

    @classmethod
    def geometry_example(cls, dims):
        """Overlapping windows (stride < kernel) with padding: the ResNet stem's 3x3/2 pool and others."""
        kernel = (2 + dims[0] % 2, 3)
        stride = (1 + dims[1] % 2, 2)
        pads = ((dims[2] % 2, dims[2] % 2), (1, 1))
        return kernel, stride, pads, (dims[0] + 4, 6)


class MaxPool2D(Pooling):
    name = "max_pool2d"

    def infer(self, x):
        same_float_dtype(self.name, [x])
        self.check_image(x, "input")
        return TensorType(x.shape[:2] + self.out_hw, x.dtype)

    def ref(self, x):
        return np.max(np.stack([part for part, _ in self.gather(x, -np.inf)]), axis=0).astype(x.dtype)

    def grad(self, g, out, x):
        return [apply(MaxPool2DGrad(self.kernel, self.stride, self.pads, self.in_hw), x, out, g)]

    @classmethod
    def example(cls, rng, dims):
        kernel, stride, pads, in_hw = cls.geometry_example(dims)
        x = rng.standard_normal((2, 2) + in_hw)
        return cls(kernel, stride, pads, in_hw), Example([x], [True], {0: 0})


def _ties(op: Pooling, x: np.ndarray, out: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Per tap, whether it reads a maximum of its window; and how many taps of each window do."""
    hits = [(part == out) & valid for part, valid in op.gather(x, -np.inf)]
    return hits, np.sum(hits, axis=0)


class _MaxPoolAdjoint(Pooling):
    """The linear maps of max pooling's derivative at x (out = max_pool2d(x)), which route values
    between each window and its maxima (ties share equally). Piecewise constant in x and out."""

    arity = 3

    def check(self, x, out, v, pooled_v: bool) -> None:
        same_float_dtype(self.name, [x, out, v])
        self.check_image(x, "input")
        self.check_pooled(out, x, "pooled output")
        if pooled_v:
            self.check_pooled(v, x, "cotangent")
        elif v.shape != x.shape:
            raise ShapeError(f"tangent {format_shape(v.shape)} must have the input's shape {format_shape(x.shape)}")

    @classmethod
    def example_inputs(cls, rng, dims, pooled_v: bool):
        kernel, stride, pads, in_hw = cls.geometry_example(dims)
        op = cls(kernel, stride, pads, in_hw)
        x = rng.standard_normal((2, 2) + in_hw)
        x[0, 0, :2, :2] = 0.5  # a tie
        out = MaxPool2D(kernel, stride, pads, in_hw).ref(x)
        v = rng.standard_normal(out.shape if pooled_v else x.shape)
        return op, Example([x, out, v], [False, False, True], {0: 0, 1: 0, 2: 0})


class MaxPool2DGrad(_MaxPoolAdjoint):
    """d max_pool2d: each window's cotangent g, shared among the window's maxima, added into them."""

    name = "max_pool2d_grad"

    def infer(self, x, out, g):
        self.check(x, out, g, pooled_v=True)
        return x

    def ref(self, x, out, g):
        hits, count = _ties(self, x, out)
        share = np.divide(g, count, out=np.zeros_like(g), where=count > 0)
        return self.scatter([hit * share for hit in hits], x.shape, x.dtype)

    def grad(self, gg, dx, x, out, g):
        return [None, None, apply(MaxPool2DTangent(self.kernel, self.stride, self.pads, self.in_hw), x, out, gg)]

    @classmethod
    def example(cls, rng, dims):
        return cls.example_inputs(rng, dims, pooled_v=True)


class MaxPool2DTangent(_MaxPoolAdjoint):
    """The adjoint of MaxPool2DGrad (max pooling's forward derivative): per window, the mean of
    the tangent v over the window's maxima."""

    name = "max_pool2d_tangent"

    def infer(self, x, out, v):
        self.check(x, out, v, pooled_v=False)
        return out

    def ref(self, x, out, v):
        hits, count = _ties(self, x, out)
        picked = [np.where(hit, part, 0) for hit, (part, _) in zip(hits, self.gather(v, 0.0))]
        return np.divide(np.sum(picked, axis=0), count, out=np.zeros_like(out), where=count > 0)

    def grad(self, gg, t, x, out, v):
        return [None, None, apply(MaxPool2DGrad(self.kernel, self.stride, self.pads, self.in_hw), x, out, gg)]

    @classmethod
    def example(cls, rng, dims):
        return cls.example_inputs(rng, dims, pooled_v=False)


class _AveragePooling(Pooling):
    def __init__(self, kernel, stride, pads, in_hw, count_include_pad: bool = True):
        super().__init__(kernel, stride, pads, in_hw)
        self.count_include_pad = bool(count_include_pad)

    def divisors(self) -> np.ndarray:
        """(HO, WO): what each window's sum is divided by."""
        if self.count_include_pad:
            return np.full(self.out_hw, float(self.kernel[0] * self.kernel[1]))
        return np.sum([valid for valid, _, _ in self.taps()], axis=0).astype(float)

    @classmethod
    def example(cls, rng, dims):
        kernel, stride, pads, in_hw = cls.geometry_example(dims)
        op = cls(kernel, stride, pads, in_hw, count_include_pad=bool(dims[1] % 2))
        shape = (2, 2) + (op.out_hw if cls is AvgPool2DGrad else in_hw)
        return op, Example([rng.standard_normal(shape)], [True], {0: 0})


class AvgPool2D(_AveragePooling):
    name = "avg_pool2d"

    def infer(self, x):
        same_float_dtype(self.name, [x])
        self.check_image(x, "input")
        return TensorType(x.shape[:2] + self.out_hw, x.dtype)

    def ref(self, x):
        return (np.sum([part for part, _ in self.gather(x, 0.0)], axis=0) / self.divisors()).astype(x.dtype)

    def grad(self, g, out, x):
        return [apply(AvgPool2DGrad(self.kernel, self.stride, self.pads, self.in_hw, self.count_include_pad), g)]


class AvgPool2DGrad(_AveragePooling):
    """The adjoint of AvgPool2D: each window's g / divisor added into its pixels."""

    name = "avg_pool2d_grad"

    def infer(self, g):
        same_float_dtype(self.name, [g])
        image = TensorType(g.shape[:2] + self.in_hw, g.dtype)
        self.check_pooled(g, image, "cotangent")
        return image

    def ref(self, g):
        share = (g / self.divisors()).astype(g.dtype)
        return self.scatter([share] * (self.kernel[0] * self.kernel[1]), g.shape[:2] + self.in_hw, g.dtype)

    def grad(self, gg, out, g):
        return [apply(AvgPool2D(self.kernel, self.stride, self.pads, self.in_hw, self.count_include_pad), gg)]


def _pair(v, what: str, low: int) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, (int, np.integer)) else tuple(v) if isinstance(v, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(e, (int, np.integer)) and e >= low for e in pair):
        raise ShapeError(f"{what} must be an int >= {low} or a pair of them, got {v!r}")
    return int(pair[0]), int(pair[1])


def _geometry(x, kernel_size, stride, padding, op_name: str):
    """(kernel, stride, (ph, pw)) checked against x, or a ShapeError naming the op and the input."""
    if x.ndim != 4:
        raise ShapeError(f"{op_name} needs NCHW input, got {x.describe()}")
    kernel = _pair(kernel_size, f"{op_name} kernel_size", 1)
    stride = kernel if stride is None else _pair(stride, f"{op_name} stride", 1)
    pads = _pair(padding, f"{op_name} padding", 0)
    if any(p > k // 2 for p, k in zip(pads, kernel)):
        raise ShapeError(f"{op_name}: padding {pads} must be at most half the window {kernel}")
    hw = x.shape[2:]
    if None in hw or x.shape[1] is None or any(k > n + 2 * p for k, n, p in zip(kernel, hw, pads)):
        raise ShapeError(f"{op_name}: window {kernel} does not fit the padded spatial size of {x.describe()} "
                         f"(padding {pads})")  # fmt: skip
    return kernel, stride, pads


def _tiling_windows(x, kernel):
    """x (N, C, H, W) viewed as (N, C, H/kh, kh, W/kw, kw) windows; trailing rows and columns that
    do not fill a window are dropped first, like PyTorch's default."""
    (kh, kw), (h, w) = kernel, x.shape[2:]
    oh, ow = h // kh, w // kw
    if (oh * kh, ow * kw) != (h, w):
        x = x[:, :, : oh * kh, : ow * kw]
    return reshape(x, (x.shape[0], x.shape[1], oh, kh, ow, kw))


@user_call()
def max_pool2d(
    x: Node, kernel_size: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
) -> Node:  # fmt: skip
    """The maximum over windows of NCHW input (PyTorch's max_pool2d). Windows that tile the
    image (stride = kernel size, no padding; rows and columns that do not fill a window are
    dropped) are a reshape and one reduction, fused with their neighbours; other windows
    (overlapping, padded: a ResNet's 3x3 stride-2 stem) run in a native kernel of their own.
    Ties share the gradient, as with `max`.

    Args:
        x: A float node (N, C, H, W) with static H and W.
        kernel_size: The window, one int or (height, width).
        stride: Step between windows (default: the kernel size).
        padding: Added on each side (at most half the window); padding never wins.

    Returns:
        A node (N, C, OH, OW), OH = (H + 2 * padding - kernel) // stride + 1.

    Raises:
        ShapeError: x is not 4-D, the window is larger than the padded image, or the padding
            is more than half the window.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 1, 2, 4))
        >>> dg.max_pool2d(x).eval(x=np.arange(8, dtype=np.float32).reshape(1, 1, 2, 4))
        array([[[[5., 7.]]]], dtype=float32)
        >>> dg.max_pool2d(g.input("big", (None, 16, 28, 28)), 3, stride=2, padding=1).shape
        (None, 16, 14, 14)
    """
    kernel, stride, pads = _geometry(x, kernel_size, stride, padding, "max_pool2d")
    if stride == kernel and pads == (0, 0):
        return reduce_max(_tiling_windows(x, kernel), (3, 5))
    return apply(MaxPool2D(kernel, stride, tuple((p, p) for p in pads), x.shape[2:]), x)


@user_call()
def avg_pool2d(
    x: Node, kernel_size: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0, count_include_pad: bool = True,
) -> Node:  # fmt: skip
    """The mean over windows of NCHW input (PyTorch's avg_pool2d; see `max_pool2d` for the
    windows).

    Args:
        x: A float node (N, C, H, W) with static H and W.
        kernel_size: The window, one int or (height, width).
        stride: Step between windows (default: the kernel size).
        padding: Zeros added on each side (at most half the window).
        count_include_pad: Divide by the window size (True) or by its pixels that are not
            padding (False).

    Returns:
        A node (N, C, OH, OW) of x's dtype.

    Raises:
        ShapeError: As `max_pool2d`.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 1, 2, 4))
        >>> dg.avg_pool2d(x).eval(x=np.arange(8, dtype=np.float32).reshape(1, 1, 2, 4))
        array([[[[2.5, 4.5]]]], dtype=float32)
    """
    kernel, stride, pads = _geometry(x, kernel_size, stride, padding, "avg_pool2d")
    if stride == kernel and pads == (0, 0):
        return mean(_tiling_windows(x, kernel), (3, 5))
    return apply(AvgPool2D(kernel, stride, tuple((p, p) for p in pads), x.shape[2:], count_include_pad), x)

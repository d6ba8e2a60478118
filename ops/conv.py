"""2-D convolution (NCHW input, OIHW weight): spatial padding and strided valid convolution,
each with its adjoint, so gradients of any order stay graph ops."""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import ShapeError
from ..core.node import Node, apply, user_call
from ..core.op import Example, Op, same_float_dtype
from ..core.types import TensorType, format_shape

PAD_MODES = ("zeros", "replicate", "reflect")


def pad_index(n: int, lo: int, hi: int, mode: str) -> np.ndarray:
    """Source row in the unpadded axis for each padded position (-1: a zero)."""
    idx = np.arange(-lo, n + hi)
    if mode == "replicate":
        return np.clip(idx, 0, n - 1)
    if mode == "reflect":
        idx = np.abs(idx)
        return np.where(idx > n - 1, 2 * (n - 1) - idx, idx)
    return np.where((idx >= 0) & (idx < n), idx, -1)


def pad_matrix(n: int, lo: int, hi: int, mode: str, dtype) -> np.ndarray:
    """One-hot (n + lo + hi, n) matrix: padding is P @ x, its adjoint P.T @ g."""
    idx = pad_index(n, lo, hi, mode)
    out = np.zeros((idx.size, n), dtype)
    rows = np.nonzero(idx >= 0)[0]
    out[rows, idx[rows]] = 1
    return out


class _Padding(Op):
    arity = 1

    def __init__(self, pads: tuple[tuple[int, int], tuple[int, int]], mode: str, in_hw: tuple[int, int]):
        self.pads = pads
        self.mode = mode
        self.in_hw = in_hw

    def matrices(self, dtype):
        (top, bottom), (left, right) = self.pads
        h, w = self.in_hw
        return pad_matrix(h, top, bottom, self.mode, dtype), pad_matrix(w, left, right, self.mode, dtype)

    def padded_hw(self) -> tuple[int, int]:
        (top, bottom), (left, right) = self.pads
        return self.in_hw[0] + top + bottom, self.in_hw[1] + left + right

    @classmethod
    def example(cls, rng, dims):
        h, w = dims[1] + 1, 3
        op = cls(((1, 1), (0, 2)), PAD_MODES[dims[0] % 3], (h, w))
        shape = (2, 2) + (op.padded_hw() if cls is PadGrad else (h, w))
        return op, Example([rng.standard_normal(shape)], [True], {0: 0})


class Pad(_Padding):
    name = "pad"

    def infer(self, x):
        if x.ndim != 4 or x.shape[2:] != self.in_hw:
            raise ShapeError(f"pad expects NCHW with spatial size {self.in_hw}, got {format_shape(x.shape)}")
        if self.mode == "reflect" and any(max(pad) >= n for pad, n in zip(self.pads, self.in_hw)):
            raise ShapeError(f"reflect padding {self.pads} needs each spatial size {self.in_hw} larger than its pad")
        return TensorType(x.shape[:2] + self.padded_hw(), x.dtype)

    def ref(self, x):
        ph, pw = self.matrices(x.dtype)
        return np.einsum("ph,nchw,qw->ncpq", ph, x, pw, optimize=True)

    def grad(self, g, out, x):
        return [apply(PadGrad(self.pads, self.mode, self.in_hw), g)]


class PadGrad(_Padding):
    """Adjoint of Pad: padded positions add back into the rows they copied."""

    name = "pad_grad"

    def infer(self, g):
        return TensorType(g.shape[:2] + self.in_hw, g.dtype)

    def ref(self, g):
        ph, pw = self.matrices(g.dtype)
        return np.einsum("ph,ncpq,qw->nchw", ph, g, pw, optimize=True)

    def grad(self, gg, out, g):
        return [apply(Pad(self.pads, self.mode, self.in_hw), gg)]


def _windows(stride, out_hw, i, j):
    (sh, sw), (ho, wo) = stride, out_hw
    return (slice(None), slice(None), slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw))


def conv_out_hw(in_hw, k_hw, stride):
    return tuple((n - k) // s + 1 for n, k, s in zip(in_hw, k_hw, stride))


class Conv2D(Op):
    """Valid (unpadded) strided convolution; padding is a separate Pad node."""

    name = "conv2d"
    arity = 2

    def __init__(self, stride: tuple[int, int]):
        self.stride = stride

    def infer(self, x, w):
        dtype = same_float_dtype(self.name, [x, w])
        if x.ndim != 4 or w.ndim != 4:
            raise ShapeError("conv2d needs NCHW input and OIHW weight")
        if None in x.shape[1:]:
            raise ShapeError("only the batch axis of a conv2d input may be None")
        if x.shape[1] != w.shape[1]:
            raise ShapeError(f"input has {x.shape[1]} channels but the weight expects {w.shape[1]}")
        if x.shape[2] < w.shape[2] or x.shape[3] < w.shape[3]:
            raise ShapeError(f"kernel {w.shape[2:]} is larger than the input's spatial size {x.shape[2:]}")
        out_hw = conv_out_hw(x.shape[2:], w.shape[2:], self.stride)
        return TensorType((x.shape[0], w.shape[0]) + out_hw, dtype)

    def flops(self, out, x, w):
        return 2 * math.prod(out) * math.prod(w[1:])

    def ref(self, x, w):
        out_hw = conv_out_hw(x.shape[2:], w.shape[2:], self.stride)
        out = np.zeros((x.shape[0], w.shape[0]) + out_hw, x.dtype)
        for i in range(w.shape[2]):
            for j in range(w.shape[3]):
                out += np.einsum("nchw,oc->nohw", x[_windows(self.stride, out_hw, i, j)], w[:, :, i, j])
        return out

    def grad(self, g, out, x, w):
        return [
            apply(Conv2DGradInput(self.stride, x.shape[2:]), g, w),
            apply(Conv2DGradFilter(self.stride, w.shape[2:]), x, g),
        ]

    @classmethod
    def example(cls, rng, dims):
        stride = (1 + dims[0] % 2, 1)
        x = rng.standard_normal((2, 2, dims[1] + 3, 4))
        w = rng.standard_normal((3, 2, 2, 3))
        return cls(stride), Example([x, w], [True, True], {0: 0})


class Conv2DGradInput(Op):
    """Gradient of Conv2D w.r.t. its input: the transposed convolution of g by w."""

    name = "conv2d_grad_input"
    arity = 2

    def __init__(self, stride: tuple[int, int], in_hw: tuple[int, int]):
        self.stride = stride
        self.in_hw = in_hw

    def infer(self, g, w):
        dtype = same_float_dtype(self.name, [g, w])
        expected = conv_out_hw(self.in_hw, w.shape[2:], self.stride)
        if g.ndim != 4 or w.ndim != 4 or g.shape[1] != w.shape[0] or g.shape[2:] != expected:
            raise ShapeError(
                f"gradient {format_shape(g.shape)} does not fit weight {format_shape(w.shape)} on an input of "
                f"spatial size {self.in_hw} (expected spatial size {expected})"
            )
        return TensorType((g.shape[0], w.shape[1]) + self.in_hw, dtype)

    def flops(self, out, g, w):
        return 2 * math.prod(g) * math.prod(w[1:])

    def ref(self, g, w):
        out = np.zeros((g.shape[0], w.shape[1]) + self.in_hw, g.dtype)
        for i in range(w.shape[2]):
            for j in range(w.shape[3]):
                out[_windows(self.stride, g.shape[2:], i, j)] += np.einsum("nohw,oc->nchw", g, w[:, :, i, j])
        return out

    def grad(self, gg, out, g, w):
        return [apply(Conv2D(self.stride), gg, w), apply(Conv2DGradFilter(self.stride, w.shape[2:]), gg, g)]

    @classmethod
    def example(cls, rng, dims):
        stride, in_hw = (1 + dims[0] % 2, 1), (dims[1] + 3, 4)
        w = rng.standard_normal((3, 2, 2, 3))
        g = rng.standard_normal((2, 3) + conv_out_hw(in_hw, (2, 3), stride))
        return cls(stride, in_hw), Example([g, w], [True, True], {0: 0})


class Conv2DGradFilter(Op):
    """Gradient of Conv2D w.r.t. its weight: correlation of the input with g."""

    name = "conv2d_grad_filter"
    arity = 2

    def __init__(self, stride: tuple[int, int], k_hw: tuple[int, int]):
        self.stride = stride
        self.k_hw = k_hw

    def infer(self, x, g):
        dtype = same_float_dtype(self.name, [x, g])
        if (
            x.ndim != 4
            or g.ndim != 4
            or None in x.shape[1:]
            or g.shape[2:] != conv_out_hw(x.shape[2:], self.k_hw, self.stride)
        ):
            raise ShapeError(
                f"gradient {format_shape(g.shape)} does not fit a {self.k_hw} kernel on input {format_shape(x.shape)}"
            )
        return TensorType((g.shape[1], x.shape[1]) + self.k_hw, dtype)

    def flops(self, out, x, g):
        return 2 * math.prod(g) * math.prod(out[1:])

    def ref(self, x, g):
        out = np.zeros((g.shape[1], x.shape[1]) + self.k_hw, x.dtype)
        for i in range(self.k_hw[0]):
            for j in range(self.k_hw[1]):
                out[:, :, i, j] = np.einsum("nchw,nohw->oc", x[_windows(self.stride, g.shape[2:], i, j)], g)
        return out

    def grad(self, gg, out, x, g):
        return [apply(Conv2DGradInput(self.stride, x.shape[2:]), g, gg), apply(Conv2D(self.stride), x, gg)]

    @classmethod
    def example(cls, rng, dims):
        stride, in_hw, k_hw = (1 + dims[0] % 2, 1), (dims[1] + 3, 4), (2, 3)
        x = rng.standard_normal((2, 2) + in_hw)
        g = rng.standard_normal((2, 3) + conv_out_hw(in_hw, k_hw, stride))
        return cls(stride, k_hw), Example([x, g], [True, True], {0: 0, 1: 0})


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def same_pads(in_hw, k_hw, stride) -> tuple[tuple[int, int], tuple[int, int]]:
    """TensorFlow's 'same': output ceil(n / s), extra padding at the end."""
    pads = []
    for n, k, s in zip(in_hw, k_hw, stride):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


@user_call()
def conv2d(
    x: Node, w: Node, stride: int | tuple[int, int] = 1, padding: str = "valid", pad_mode: str = "zeros"
) -> Node:
    """2-D convolution (cross-correlation, as in PyTorch and TensorFlow) of NCHW images by an
    OIHW kernel. Runs natively as im2col + one GEMM (col2im for the input gradient).

    Args:
        x: Images (N, C, H, W), float; N may be the batch (None).
        w: Kernel (O, C, KH, KW) of x's dtype: O output channels over C input channels.
        stride: Step between windows, one int or (vertical, horizontal).
        padding: "valid" (no padding: output (H - KH) // s + 1) or "same" (output ceil(H / s),
            TensorFlow's rule: the extra row or column of padding goes at the end).
        pad_mode: What "same" pads with: "zeros", "replicate" (the edge value) or "reflect".

    Returns:
        A node (N, O, OH, OW) of x's dtype.

    Raises:
        ShapeError: x or w is not 4-D, channels differ, the kernel is larger than the image, or
            padding / pad_mode is unknown.
        DTypeError: Mixed or non-float dtypes.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 1, 4, 4))
        >>> w = g.parameter("w", (2, 1, 3, 3), init="ones")
        >>> y = dg.conv2d(x, w, padding="same")
        >>> y.shape
        (None, 2, 4, 4)
        >>> y.eval(x=np.ones((1, 1, 4, 4), np.float32))[0, 0]
        array([[4., 6., 6., 4.],
               [6., 9., 9., 6.],
               [6., 9., 9., 6.],
               [4., 6., 6., 4.]], dtype=float32)
    """
    stride = _pair(stride)
    if padding not in ("valid", "same"):
        raise ShapeError(f"conv2d padding must be 'valid' or 'same', got {padding!r}")
    if pad_mode not in PAD_MODES:
        raise ShapeError(f"conv2d pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    if padding == "same":
        if x.ndim != 4 or w.ndim != 4:
            raise ShapeError(f"conv2d needs NCHW input and OIHW weight, got {x.describe()} and {w.describe()}")
        pads = same_pads(x.shape[2:], w.shape[2:], stride)
        if any(p for pair in pads for p in pair):
            x = apply(Pad(pads, pad_mode, x.shape[2:]), x)
    return apply(Conv2D(stride), x, w)

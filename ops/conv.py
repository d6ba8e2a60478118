"""Convolutions (NCHW input, OIHW weight) with stride, zero padding, dilation and groups, the two
adjoints (conv_transpose2d, the filter gradient) so gradients of any order stay graph ops, and
replicate/reflect padding as an op of its own; conv1d is conv2d on height-1 images."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.errors import ShapeError
from ..core.node import Node, apply, user_call
from ..core.op import Example, Op, same_float_dtype
from ..core.types import TensorType, format_shape
from .elementwise import ReluGrad
from .reduce import Sum
from .shape import reshape

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


Pads = tuple[tuple[int, int], tuple[int, int]]
NO_PADS: Pads = ((0, 0), (0, 0))


def conv_out_hw(in_hw, k_hw, stride, pads: Pads = NO_PADS, dilation=(1, 1)) -> tuple[int, ...]:
    """Output size per spatial axis: floor((n + pads - dilation * (k - 1) - 1) / stride) + 1."""
    return tuple(
        (n + lo + hi - d * (k - 1) - 1) // s + 1 for n, k, s, (lo, hi), d in zip(in_hw, k_hw, stride, pads, dilation)
    )


@dataclass(frozen=True)
class ConvGeometry:
    """The static sizes of a convolution (only the number of images may be dynamic), which every
    backend lowers from: an image's patches have `rows` = C*KH*KW entries, and with groups, group
    g's channels, weight rows and output channels are contiguous blocks of `group_rows` and
    `group_outs`."""

    channels: int
    in_hw: tuple[int, int]
    k_hw: tuple[int, int]
    stride: tuple[int, int]
    outs: int
    dtype: np.dtype
    pads: Pads = NO_PADS
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @classmethod
    def of(cls, x_shape, w_shape, op: Convolution, dtype):
        """The convolution of `op` on input `x_shape` (N, C, H, W) by weight `w_shape` (O, C/G, KH, KW)."""
        return cls(x_shape[1], tuple(x_shape[2:]), tuple(w_shape[2:]), tuple(op.stride), w_shape[0], np.dtype(dtype),
                   op.pads, op.dilation, op.groups)  # fmt: skip

    @property
    def out_hw(self) -> tuple[int, int]:
        return conv_out_hw(self.in_hw, self.k_hw, self.stride, self.pads, self.dilation)

    @property
    def rows(self) -> int:
        """Entries of one output pixel's patch: one per (channel, kernel row, kernel column)."""
        return self.channels * self.k_hw[0] * self.k_hw[1]

    @property
    def group_rows(self) -> int:
        """The patch entries of one group (the GEMM depth of the forward)."""
        return self.rows // self.groups

    @property
    def group_outs(self) -> int:
        return self.outs // self.groups

    @property
    def pixels(self) -> int:
        """Output pixels per image."""
        return self.out_hw[0] * self.out_hw[1]

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize


def _tap_window(stride, dilation, out_hw, i: int, j: int) -> tuple[slice, ...]:
    """The index of the padded input that kernel tap (i, j) reads for every output pixel."""
    (sh, sw), (dh, dw), (ho, wo) = stride, dilation, out_hw
    y0, x0 = i * dh, j * dw
    return (slice(None), slice(None), slice(y0, y0 + sh * (ho - 1) + 1, sh), slice(x0, x0 + sw * (wo - 1) + 1, sw))


def _zero_pad(x: np.ndarray, pads: Pads) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0)) + tuple(pads)) if any(p for pair in pads for p in pair) else x


class Convolution(Op):
    """What the convolution ops share: stride, zero padding (top, bottom), (left, right),
    dilation and groups. Input channels split into `groups` blocks, each convolved with its own
    block of output channels; the weight is (O, C / groups, KH, KW)."""

    arity = 2

    def __init__(self, stride: tuple[int, int], pads: Pads = NO_PADS, dilation=(1, 1), groups: int = 1):
        self.stride = tuple(stride)
        self.pads = tuple(tuple(p) for p in pads)
        self.dilation = tuple(dilation)
        self.groups = int(groups)

    def out_hw(self, in_hw, k_hw) -> tuple[int, ...]:
        return conv_out_hw(in_hw, k_hw, self.stride, self.pads, self.dilation)

    def check(self, x_shape, w_shape) -> tuple[int, ...]:
        """The output's spatial size for input `x_shape` (N, C, H, W) and weight `w_shape`, or a
        ShapeError saying what does not fit."""
        channels, outs, g = x_shape[1], w_shape[0], self.groups
        if None in x_shape[1:]:
            raise ShapeError("only the batch axis of a convolution's input may be None")
        if channels % g or outs % g:
            raise ShapeError(
                f"groups={g} must divide both the input's {channels} channels and the weight's {outs} output channels"
            )
        if w_shape[1] * g != channels:
            raise ShapeError(
                f"input has {channels} channels but the weight {format_shape(w_shape)} expects "
                f"{w_shape[1] * g} ({w_shape[1]} per group x {g} groups)"
            )
        spans = tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, w_shape[2:]))
        padded = tuple(n + lo + hi for n, (lo, hi) in zip(x_shape[2:], self.pads))
        if any(s > p for s, p in zip(spans, padded)):
            raise ShapeError(
                f"the kernel {format_shape(w_shape[2:])} with dilation {self.dilation} spans {spans}, more than the "
                f"padded input's spatial size {padded}: no output pixel"
            )
        return self.out_hw(x_shape[2:], w_shape[2:])

    def grouped(self, x: np.ndarray, w: np.ndarray):
        """x as (N, G, C/G, H, W) and w as (G, O/G, C/G, KH, KW)."""
        g = self.groups
        return x.reshape(x.shape[0], g, -1, *x.shape[2:]), w.reshape(g, -1, *w.shape[1:])

    def taps(self, k_hw, out_hw):
        """(i, j, window) per kernel tap: the (batch, group) axes and the padded input's pixels it reads."""
        for i in range(k_hw[0]):
            for j in range(k_hw[1]):
                yield i, j, (slice(None),) + _tap_window(self.stride, self.dilation, out_hw, i, j)

    @property
    def geometry(self) -> dict:
        """The parameters the three convolution ops share, to build one from another."""
        return dict(stride=self.stride, pads=self.pads, dilation=self.dilation, groups=self.groups)


def _example_geometry(dims):
    """A small convolution for the registry tests: per-axis stride, uneven padding, dilation, groups."""
    groups = 1 + dims[2] % 2
    stride = (1 + dims[0] % 2, 1)
    pads = ((dims[1] % 2, 1), (0, dims[0] % 2))
    dilation = (1, 1 + dims[1] % 2)
    in_hw, k_hw = (dims[1] + 3, 5), (2, 2)
    return dict(stride=stride, pads=pads, dilation=dilation, groups=groups), in_hw, k_hw, (2 * groups, 2 * groups)


class Conv2D(Convolution):
    """Cross-correlation of NCHW x with OIHW w (PyTorch's conv2d), zero padding included."""

    name = "conv2d"

    def infer(self, x, w):
        dtype = same_float_dtype(self.name, [x, w])
        if x.ndim != 4 or w.ndim != 4:
            raise ShapeError(f"conv2d needs NCHW input and OIHW weight, got {format_shape(x.shape)} and "
                             f"{format_shape(w.shape)}")  # fmt: skip
        return TensorType((x.shape[0], w.shape[0]) + self.check(x.shape, w.shape), dtype)

    def flops(self, out, x, w):
        return 2 * math.prod(out) * math.prod(w[1:])

    def ref(self, x, w):
        out_hw = self.out_hw(x.shape[2:], w.shape[2:])
        xg, wg = self.grouped(_zero_pad(x, self.pads), w)
        out = np.zeros((x.shape[0], self.groups, wg.shape[1]) + out_hw, x.dtype)
        for i, j, window in self.taps(w.shape[2:], out_hw):
            out += np.einsum("ngchw,goc->ngohw", xg[window], wg[..., i, j])
        return out.reshape(x.shape[0], w.shape[0], *out_hw)

    def grad(self, g, out, x, w):
        return [
            apply(ConvTranspose2D(x.shape[2:], **self.geometry), g, w),
            apply(Conv2DGradFilter(w.shape[2:], **self.geometry), x, g),
        ]

    @classmethod
    def example(cls, rng, dims):
        params, in_hw, k_hw, (c, o) = _example_geometry(dims)
        x = rng.standard_normal((2, c) + in_hw)
        w = rng.standard_normal((o, c // params["groups"]) + k_hw)
        return cls(**params), Example([x, w], [True, True], {0: 0})


class Conv2DBias(Convolution):
    """conv2d(x, w) plus a bias per output channel, then `activation` ("relu", or None for none):
    what a convolution layer computes. Graphs are not written with it: the LLVM backend's
    `compiler.epilogues` pass makes it from those three ops where its convolution kernel adds the
    bias and applies the activation to each tile it stores (no pass over the output after it)."""

    name = "conv2d_bias"
    arity = 3
    ACTIVATIONS = (None, "relu")

    def __init__(self, stride=(1, 1), pads: Pads = NO_PADS, dilation=(1, 1), groups=1, activation: str | None = None):
        super().__init__(stride, pads, dilation, groups)
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"conv2d_bias activation must be one of {self.ACTIVATIONS}, got {activation!r}")
        self.activation = activation

    @property
    def conv(self) -> Conv2D:
        return Conv2D(**self.geometry)

    def infer(self, x, w, b):
        out = self.conv.infer(x, w)
        if b.shape != (w.shape[0],) or b.dtype != out.dtype:
            raise ShapeError(f"conv2d_bias needs a bias of shape ({w.shape[0]},) and dtype {out.dtype} (one per output "
                             f"channel), got {format_shape(b.shape)} {b.dtype}")  # fmt: skip
        return out

    def flops(self, out, x, w, b):
        return self.conv.flops(out, x, w)

    def ref(self, x, w, b):
        out = self.conv.ref(x, w) + b.reshape(-1, 1, 1)
        return np.maximum(out, 0) if self.activation == "relu" else out

    def grad(self, g, out, x, w, b):
        if self.activation == "relu":  # out > 0 exactly where the relu's input is
            g = apply(ReluGrad(), g, out)
        return [
            apply(ConvTranspose2D(x.shape[2:], **self.geometry), g, w),
            apply(Conv2DGradFilter(w.shape[2:], **self.geometry), x, g),
            apply(Sum((0, 2, 3)), g),
        ]

    @classmethod
    def example(cls, rng, dims):
        """Output rows wide enough for the LLVM backend's own convolution kernel (stride 1 along rows)."""
        params, (h, _), k_hw, (c, o) = _example_geometry(dims)
        op = cls(**params, activation=cls.ACTIVATIONS[dims[0] % 2])
        x = rng.standard_normal((2, c, h, 12))
        w = rng.standard_normal((o, c // params["groups"]) + k_hw)
        return op, Example([x, w, rng.standard_normal(o)], [True, True, True], {0: 0})


class ConvTranspose2D(Convolution):
    """The adjoint of Conv2D with respect to its input (PyTorch's conv_transpose2d): g (N, O, HO, WO)
    and the conv's weight (O, C / groups, KH, KW) give (N, C, H, W). `in_hw` is (H, W), the size
    of the convolution's input, which stride > 1 leaves ambiguous (PyTorch's output_padding)."""

    name = "conv_transpose2d"

    def __init__(self, in_hw: tuple[int, int], stride=(1, 1), pads: Pads = NO_PADS, dilation=(1, 1), groups=1):
        super().__init__(stride, pads, dilation, groups)
        self.in_hw = tuple(in_hw)

    def infer(self, g, w):
        dtype = same_float_dtype(self.name, [g, w])
        if g.ndim != 4 or w.ndim != 4:
            raise ShapeError(f"conv_transpose2d needs NCHW input and a 4-D weight, got {format_shape(g.shape)} and "
                             f"{format_shape(w.shape)}")  # fmt: skip
        if None in g.shape[1:]:
            raise ShapeError("only the batch axis of a convolution's input may be None")
        if g.shape[1] != w.shape[0]:
            raise ShapeError(f"input has {g.shape[1]} channels but the weight {format_shape(w.shape)} expects "
                             f"{w.shape[0]}")  # fmt: skip
        x_shape = (g.shape[0], w.shape[1] * self.groups) + self.in_hw
        expected = self.check(x_shape, w.shape)
        if g.shape[2:] != expected:
            raise ShapeError(
                f"input {format_shape(g.shape)} does not fit weight {format_shape(w.shape)}: an output of spatial "
                f"size {self.in_hw} needs an input of spatial size {expected}"
            )
        return TensorType(x_shape, dtype)

    def flops(self, out, g, w):
        return 2 * math.prod(g) * math.prod(w[1:])

    def ref(self, g, w):
        (pt, _), (pl, _) = self.pads
        canvas_hw = tuple(n + lo + hi for n, (lo, hi) in zip(self.in_hw, self.pads))
        canvas = np.zeros((g.shape[0], w.shape[1] * self.groups) + canvas_hw, g.dtype)
        cg, wg = self.grouped(canvas, w)
        gg = g.reshape(g.shape[0], self.groups, -1, *g.shape[2:])
        for i, j, window in self.taps(w.shape[2:], g.shape[2:]):
            cg[window] += np.einsum("ngohw,goc->ngchw", gg, wg[..., i, j])
        return canvas[:, :, pt : pt + self.in_hw[0], pl : pl + self.in_hw[1]].copy()

    def grad(self, gg, out, g, w):
        return [apply(Conv2D(**self.geometry), gg, w), apply(Conv2DGradFilter(w.shape[2:], **self.geometry), gg, g)]

    @classmethod
    def example(cls, rng, dims):
        params, in_hw, k_hw, (c, o) = _example_geometry(dims)
        op = cls(in_hw, **params)
        w = rng.standard_normal((o, c // params["groups"]) + k_hw)
        g = rng.standard_normal((2, o) + op.out_hw(in_hw, k_hw))
        return op, Example([g, w], [True, True], {0: 0})


class Conv2DGradFilter(Convolution):
    """Gradient of Conv2D with respect to its weight: the correlation of the input with g."""

    name = "conv2d_grad_filter"

    def __init__(self, k_hw: tuple[int, int], stride=(1, 1), pads: Pads = NO_PADS, dilation=(1, 1), groups=1):
        super().__init__(stride, pads, dilation, groups)
        self.k_hw = tuple(k_hw)

    def infer(self, x, g):
        dtype = same_float_dtype(self.name, [x, g])
        if x.ndim != 4 or g.ndim != 4 or g.shape[1] is None or g.shape[1] % self.groups:
            raise ShapeError(f"gradient {format_shape(g.shape)} does not fit input {format_shape(x.shape)}")
        w_shape = (g.shape[1], (x.shape[1] or 0) // self.groups) + self.k_hw
        if g.shape[2:] != self.check(x.shape, w_shape):
            raise ShapeError(
                f"gradient {format_shape(g.shape)} does not fit a {self.k_hw} kernel on input {format_shape(x.shape)}"
            )
        return TensorType(w_shape, dtype)

    def flops(self, out, x, g):
        return 2 * math.prod(g) * math.prod(out[1:])

    def ref(self, x, g):
        xg, _ = self.grouped(_zero_pad(x, self.pads), np.zeros((self.groups, 1)))
        gg = g.reshape(g.shape[0], self.groups, -1, *g.shape[2:])
        out = np.zeros((self.groups, gg.shape[2], xg.shape[2]) + self.k_hw, x.dtype)
        for i, j, window in self.taps(self.k_hw, g.shape[2:]):
            out[..., i, j] = np.einsum("ngchw,ngohw->goc", xg[window], gg)
        return out.reshape(g.shape[1], -1, *self.k_hw)

    def grad(self, gg, out, x, g):
        return [apply(ConvTranspose2D(x.shape[2:], **self.geometry), g, gg), apply(Conv2D(**self.geometry), x, gg)]

    @classmethod
    def example(cls, rng, dims):
        params, in_hw, k_hw, (c, o) = _example_geometry(dims)
        op = cls(k_hw, **params)
        x = rng.standard_normal((2, c) + in_hw)
        g = rng.standard_normal((2, o) + op.out_hw(in_hw, k_hw))
        return op, Example([x, g], [True, True], {0: 0, 1: 0})


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(e, (int, np.integer)) for e in v):
        return int(v[0]), int(v[1])
    raise ShapeError(f"{what} must be an int or a pair of ints, got {v!r}")


def _positive_pair(v, what: str) -> tuple[int, int]:
    pair = _pair(v, what)
    if min(pair) < 1:
        raise ShapeError(f"{what} must be positive, got {v!r}")
    return pair


def same_pads(in_hw, k_hw, stride, dilation=(1, 1)) -> Pads:
    """TensorFlow's 'same': output ceil(n / s), the odd pixel of padding at the end."""
    pads = []
    for n, k, s, d in zip(in_hw, k_hw, stride, dilation):
        total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def conv_pads(padding, in_hw, k_hw, stride, dilation, op_name: str) -> Pads:
    """((top, bottom), (left, right)) from 'valid', 'same', an int, (ph, pw) or ((t, b), (l, r))."""
    if isinstance(padding, str):
        if padding == "valid":
            return NO_PADS
        if padding == "same":
            return same_pads(in_hw, k_hw, stride, dilation)
        raise ShapeError(f"{op_name} padding must be 'valid', 'same', an int or a pair, got {padding!r}")
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(isinstance(p, (tuple, list)) for p in padding):
        pads = tuple(_pair(tuple(p), f"{op_name} padding") for p in padding)
    else:
        ph, pw = _pair(padding, f"{op_name} padding")
        pads = ((ph, ph), (pw, pw))
    if min(p for pair in pads for p in pair) < 0:
        raise ShapeError(f"{op_name} padding must not be negative, got {padding!r}")
    return pads


def _check_4d(x, w, op_name: str) -> None:
    if x.ndim != 4 or w.ndim != 4:
        raise ShapeError(f"{op_name} needs NCHW input and a 4-D weight, got {x.describe()} and {w.describe()}")


def _check_groups(groups) -> int:
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ShapeError(f"groups must be a positive int, got {groups!r}")
    return int(groups)


@user_call()
def conv2d(
    x: Node,
    w: Node,
    stride: int | tuple[int, int] = 1,
    padding: str | int | tuple = "valid",
    pad_mode: str = "zeros",
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> Node:
    """2-D convolution (cross-correlation, as in PyTorch and TensorFlow) of NCHW images by an
    OIHW kernel. Runs natively as im2col + one GEMM per group (col2im for the input gradient);
    zero padding is part of the kernel (no padded copy).

    Args:
        x: Images (N, C, H, W), float; N may be the batch (None).
        w: Kernel (O, C / groups, KH, KW) of x's dtype: O output channels.
        stride: Step between windows, one int or (vertical, horizontal).
        padding: "valid" (none), "same" (output ceil(H / stride), TensorFlow's rule: the extra
            row or column of padding goes at the end), an int, (ph, pw) or ((top, bottom),
            (left, right)).
        pad_mode: What the padding holds: "zeros", "replicate" (the edge value) or "reflect".
        dilation: Spacing of the kernel's taps, one int or a pair.
        groups: Input and output channels split into this many blocks, each convolved with its
            own (groups = C: a depthwise convolution).

    Returns:
        A node (N, O, OH, OW) of x's dtype, OH = (H + pads - dilation * (KH - 1) - 1) // stride + 1.

    Raises:
        ShapeError: x or w is not 4-D, groups do not divide the channels, the weight has the
            wrong channels per group, the dilated kernel is wider than the padded image, or
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
        >>> dg.conv2d(x, g.parameter("d", (2, 1, 3, 3)), padding=2, dilation=2).shape
        (None, 2, 4, 4)
    """
    stride, dilation = _positive_pair(stride, "conv2d stride"), _positive_pair(dilation, "conv2d dilation")
    groups = _check_groups(groups)
    if pad_mode not in PAD_MODES:
        raise ShapeError(f"conv2d pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    _check_4d(x, w, "conv2d")
    pads = conv_pads(padding, x.shape[2:], w.shape[2:], stride, dilation, "conv2d")
    if pad_mode != "zeros" and any(p for pair in pads for p in pair):
        x = apply(Pad(pads, pad_mode, x.shape[2:]), x)
        pads = NO_PADS
    return apply(Conv2D(stride, pads, dilation, groups), x, w)


@user_call()
def conv_transpose2d(
    x: Node,
    w: Node,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    output_padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> Node:
    """PyTorch's conv_transpose2d: the gradient of conv2d with respect to its input, as an op
    (upsampling by a learned kernel).

    Args:
        x: Images (N, C_in, H, W), float.
        w: Kernel (C_in, C_out / groups, KH, KW) of x's dtype (PyTorch's layout).
        stride: The stride of the convolution this is the gradient of (one int or a pair).
        padding: Its zero padding (cropped from the output), one int or a pair.
        output_padding: Extra rows and columns at the end of the output (smaller than the
            stride), to pick among the input sizes a strided convolution maps to one size.
        dilation: Spacing of the kernel's taps.
        groups: Channel groups, as in conv2d.

    Returns:
        A node (N, C_out, H_out, W_out) with
        H_out = (H - 1) * stride - 2 * padding + dilation * (KH - 1) + output_padding + 1.

    Raises:
        ShapeError: Not 4-D, channels or groups that do not fit, negative padding,
            output_padding not below the stride, or an empty output.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 4, 7, 7))
        >>> up = dg.conv_transpose2d(x, g.parameter("w", (4, 2, 3, 3)), stride=2, padding=1, output_padding=1)
        >>> up.shape
        (None, 2, 14, 14)
    """
    stride, dilation = _positive_pair(stride, "conv_transpose2d stride"), _positive_pair(dilation, "dilation")
    groups = _check_groups(groups)
    _check_4d(x, w, "conv_transpose2d")
    ph, pw = _pair(padding, "conv_transpose2d padding")
    extra = _pair(output_padding, "conv_transpose2d output_padding")
    if min(ph, pw, *extra) < 0:
        raise ShapeError(f"conv_transpose2d padding and output_padding must not be negative, got {padding!r}, "
                         f"{output_padding!r}")  # fmt: skip
    if any(e >= s for e, s in zip(extra, stride)):  # PyTorch also allows e < dilation: pixels no window reaches
        raise ShapeError(f"output_padding {extra} must be smaller than the stride {stride}")
    out_hw = tuple(
        (n - 1) * s - 2 * p + d * (k - 1) + e + 1
        for n, s, p, d, k, e in zip(x.shape[2:], stride, (ph, pw), dilation, w.shape[2:], extra)
    )
    if min(out_hw) < 1:
        raise ShapeError(f"conv_transpose2d of {x.describe()} by {w.describe()} would have spatial size {out_hw}")
    return apply(ConvTranspose2D(out_hw, stride, ((ph, ph), (pw, pw)), dilation, groups), x, w)


@user_call()
def conv1d(
    x: Node,
    w: Node,
    stride: int = 1,
    padding: str | int | tuple[int, int] = "valid",
    pad_mode: str = "zeros",
    dilation: int = 1,
    groups: int = 1,
) -> Node:
    """1-D convolution of sequences: conv2d on height-1 images (the reshapes are views).

    Args:
        x: Sequences (N, C, L), float.
        w: Kernel (O, C / groups, K) of x's dtype.
        stride: Step between windows.
        padding: "valid", "same", an int or (left, right).
        pad_mode: "zeros", "replicate" or "reflect".
        dilation: Spacing of the kernel's taps.
        groups: Channel groups, as in conv2d.

    Returns:
        A node (N, O, L_out) of x's dtype.

    Raises:
        ShapeError: x or w is not 3-D, or what conv2d refuses.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 3, 16))
        >>> dg.conv1d(x, g.parameter("w", (8, 3, 5)), padding="same").shape
        (None, 8, 16)
    """
    if x.ndim != 3 or w.ndim != 3:
        raise ShapeError(f"conv1d needs (N, C, L) input and an (O, C / groups, K) weight, got {x.describe()} and "
                         f"{w.describe()}")  # fmt: skip
    if not isinstance(padding, str):
        lo, hi = (padding, padding) if isinstance(padding, (int, np.integer)) else _pair(padding, "conv1d padding")
        padding = ((0, 0), (lo, hi))
    for value, what in ((stride, "stride"), (dilation, "dilation")):
        if not isinstance(value, (int, np.integer)):
            raise ShapeError(f"conv1d {what} must be an int, got {value!r}")
    image = reshape(x, (x.shape[0], x.shape[1], 1, x.shape[2]))
    kernel = reshape(w, (w.shape[0], w.shape[1], 1, w.shape[2]))
    y = conv2d(image, kernel, (1, stride), padding, pad_mode, (1, dilation), groups)
    return reshape(y, (y.shape[0], y.shape[1], y.shape[3]))

"""Matrix products: 2-D and batched (leading dimensions broadcast like NumPy's matmul)."""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import ShapeError
from ..core.node import Node, apply, user_call
from ..core.op import Example, Op, same_float_dtype
from ..core.types import TensorType, broadcast_shapes, format_shape
from .elementwise import ReluGrad
from .reduce import Sum
from .shape import transpose


class MatMul(Op):
    name = "matmul"
    arity = 2

    def infer(self, a, b):
        dtype = same_float_dtype(self.name, [a, b])
        if a.ndim < 2 or b.ndim < 2:
            raise ShapeError("matmul needs 2-D or batched (N-D) operands; reshape vectors to matrices")
        if a.shape[-1] != b.shape[-2]:
            raise ShapeError(f"inner dimensions differ: {a.shape[-1]} vs {b.shape[-2]}")
        try:
            lead = broadcast_shapes([a.shape[:-2], b.shape[:-2]])
        except ShapeError:
            raise ShapeError(
                f"batch dimensions {format_shape(a.shape[:-2])} and {format_shape(b.shape[:-2])} do not broadcast"
            ) from None
        return TensorType(lead + (a.shape[-2], b.shape[-1]), dtype)

    def ref(self, a, b):
        return np.matmul(a, b)

    def flops(self, out, a, b):
        return 2 * math.prod(out) * a[-1]

    def grad(self, g, out, a, b):
        if b.ndim == 2 and a.ndim > 2:  # x @ w with x (..., k): dw sums over every leading axis at once
            return [matmul(g, swap_last(b)), apply(ContractLeading(), a, g)]
        return [matmul(g, swap_last(b)), matmul(swap_last(a), g)]

    @classmethod
    def example(cls, rng, dims):
        n, k = dims[0], dims[1]
        batched = len(dims) > 2 and dims[2] % 2 == 0
        a_shape = (2, n, k) if batched else (n, k)
        a, b = rng.standard_normal(a_shape), rng.standard_normal((k, 3))
        return cls(), Example([a, b], [True, True], {} if batched else {0: 0})


class MatMulBias(Op):
    """a @ w plus a bias per column, then `activation` ("relu", or None for none): what a dense
    layer computes, for `a` (..., k) and a matrix `w` (k, n). Graphs are not written with it: the
    LLVM backend's `compiler.epilogues` pass makes it from those three ops, and each thread adds
    the bias and applies the activation to the block of the product it has just computed, while
    that block is in its cache (no pass over the whole output after it)."""

    name = "matmul_bias"
    arity = 3
    ACTIVATIONS = (None, "relu")

    def __init__(self, activation: str | None = None):
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"matmul_bias activation must be one of {self.ACTIVATIONS}, got {activation!r}")
        self.activation = activation

    def infer(self, a, w, bias):
        if w.ndim != 2:
            raise ShapeError(f"matmul_bias needs a matrix of weights, got {format_shape(w.shape)}")
        out = MatMul().infer(a, w)
        if bias.shape != (w.shape[1],) or bias.dtype != out.dtype:
            raise ShapeError(f"matmul_bias needs a bias of shape ({w.shape[1]},) and dtype {out.dtype} (one per "
                             f"column), got {format_shape(bias.shape)} {bias.dtype}")  # fmt: skip
        return out

    def ref(self, a, w, bias):
        out = np.matmul(a, w) + bias
        return np.maximum(out, 0) if self.activation == "relu" else out

    def flops(self, out, a, w, bias):
        return MatMul().flops(out, a, w)

    def grad(self, g, out, a, w, bias):
        if self.activation == "relu":  # out > 0 exactly where the relu's input is
            g = apply(ReluGrad(), g, out)
        leading = tuple(range(a.ndim - 1))
        return [*MatMul().grad(g, out, a, w), apply(Sum(leading), g)]

    @classmethod
    def example(cls, rng, dims):
        n, k = dims[0], dims[1]
        a_shape = (n, 2, k) if dims[2] % 2 == 0 else (n, k)
        a, w, bias = rng.standard_normal(a_shape), rng.standard_normal((k, 3)), rng.standard_normal(3)
        op = cls(activation=cls.ACTIVATIONS[dims[1] % 2])
        return op, Example([a, w, bias], [True, True, True], {0: 0})


class ContractLeading(Op):
    """a^T g over every leading axis: a (..., m) and g (..., n) -> (m, n), the weight gradient of
    x @ w for x with leading (batch, time) axes: one GEMM with the leading axes as its inner
    dimension, instead of a product per leading index summed afterwards."""

    name = "contract_leading"
    arity = 2

    def infer(self, a, g):
        dtype = same_float_dtype(self.name, [a, g])
        if a.ndim < 2 or a.shape[:-1] != g.shape[:-1]:
            raise ShapeError(f"leading axes differ: {format_shape(a.shape)} and {format_shape(g.shape)}")
        return TensorType((a.shape[-1], g.shape[-1]), dtype)

    def ref(self, a, g):
        return a.reshape(-1, a.shape[-1]).T @ g.reshape(-1, g.shape[-1])

    def flops(self, out, a, g):
        return 2 * math.prod(out) * math.prod(a[:-1])

    def grad(self, gg, out, a, g):
        return [matmul(g, swap_last(gg)), matmul(a, gg)]

    @classmethod
    def example(cls, rng, dims):
        a, g = rng.standard_normal((dims[0], 2, dims[1] + 1)), rng.standard_normal((dims[0], 2, 3))
        return cls(), Example([a, g], [True, True], {0: 0, 1: 0})


def swap_last(x: Node) -> Node:
    """x with its last two axes swapped."""
    perm = tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2)
    return transpose(x, perm)


@user_call()
def matmul(a: Node, b: Node) -> Node:
    """The matrix product `a @ b`, like `np.matmul`: 2-D operands, or batches of matrices whose
    leading axes broadcast. Runs as one GEMM of NumPy's own BLAS; transposed operands become
    GEMM flags.

    Args:
        a: A float node (..., n, k); its leading axis may be the batch (None).
        b: A float node (..., k, m) of a's dtype.

    Returns:
        A node (..., n, m) of the operands' dtype.

    Raises:
        ShapeError: Inner sizes differ, an operand has fewer than 2 axes, or the leading axes do
            not broadcast.
        DTypeError: Mixed or non-float dtypes.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2))
        >>> w = g.parameter("w", (2, 3), init="ones")
        >>> (x @ w).eval(x=np.array([[1.0, 2.0]], np.float32))
        array([[3., 3., 3.]], dtype=float32)
    """
    return apply(MatMul(), a, b)

"""Matrix products: 2-D and batched (leading dimensions broadcast like NumPy's matmul)."""

from __future__ import annotations

import numpy as np

from ..compiler.errors import ShapeError
from ..compiler.types import TensorType, broadcast_shapes, format_shape
from .base import Example, Op, apply, same_float_dtype
from .shape import transpose


class MatMul(Op):
    name = "matmul"
    arity = 2
    uses_blas = True

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

    def grad(self, g, out, a, b):
        return [matmul(g, swap_last(b)), matmul(swap_last(a), g)]

    def kernel_supports(self, node) -> bool:
        """Broadcast batched products (leading dimensions that differ) run through the callback."""
        a, b = node.inputs
        lead = node.shape[:-2]
        return b.ndim == 2 or (a.shape[:-2] == lead and b.shape[:-2] == lead)

    def emit_kernel(self, k, node):
        """One GEMM call; 2-D transposed operands become BLAS transpose flags. Leading (batch)
        dimensions of `a` fold into M when `b` is a matrix; otherwise one GEMM per matrix."""
        a, b = node.inputs
        ta, tb = k.is_transposed(a), k.is_transposed(b)
        m, kk = k.dims(a)[-2:]
        n = k.dims(b)[-1]
        lda, ldb = (m if ta else kk), (kk if tb else n)
        if a.ndim == 2 and b.ndim == 2 or b.ndim == 2:
            rows = k.count(a) if a.ndim > 2 else m
            rows = k.b.udiv(rows, kk) if a.ndim > 2 else rows
            k.gemm(node.dtype, ta, tb, rows, n, kk, k.ptr(a), lda, k.ptr(b), ldb, k.ptr(node), n)
            return
        lead = node.shape[:-2]
        if a.shape[:-2] != lead or b.shape[:-2] != lead:
            raise NotImplementedError("broadcast batched matmul runs through the callback")
        from ..compiler.irutil import element_count, for_range

        batches = element_count(k.b, lead, k.batch)
        stride_a, stride_b, stride_c = (k.b.mul(x, y) for x, y in ((m, kk), (kk, n), (m, n)))
        with for_range(k.b, batches, "mat") as i:
            k.gemm(
                node.dtype, ta, tb, m, n, kk,
                k.element(a, k.b.mul(i, stride_a)), lda,
                k.element(b, k.b.mul(i, stride_b)), ldb,
                k.element(node, k.b.mul(i, stride_c)), n,
            )  # fmt: skip

    @classmethod
    def example(cls, rng, dims):
        n, k = dims[0], dims[1]
        batched = len(dims) > 2 and dims[2] % 2 == 0
        a_shape = (2, n, k) if batched else (n, k)
        a, b = rng.standard_normal(a_shape), rng.standard_normal((k, 3))
        return cls(), Example([a, b], [True, True], {} if batched else {0: 0})


def swap_last(x):
    perm = tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2)
    return transpose(x, perm)


def matmul(a, b):
    return apply(MatMul(), a, b)

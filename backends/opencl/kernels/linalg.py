"""The matrix product: one CLBlast GEMM, or one strided-batched GEMM for stacks of matrices; the
weight gradient over leading axes (contract_leading): one GEMM."""

from __future__ import annotations

from ....compiler.grid import Size
from ....core.types import format_shape
from ....ops.linalg import ContractLeading, MatMul
from ..lowering import Gemm, kernel


def _refuses(node) -> str | None:
    a, b = node.inputs
    lead = node.shape[:-2]
    if b.ndim == 2 or (a.shape[:-2] == lead and b.shape[:-2] == lead):
        return None
    return (
        f"batch dimensions {format_shape(a.shape[:-2])} and {format_shape(b.shape[:-2])} broadcast; the opencl "
        "backend multiplies stacks of equal batch dimensions or by a matrix"
    )


@kernel(MatMul, refuses=_refuses)
def _matmul(k, node):
    """2-D transposed operands become CLBlast transpose flags. The leading dimensions of `a` fold
    into M when `b` is a matrix; stacks of equal batch dimensions are one batched GEMM."""
    a, b = node.inputs
    ta, tb = k.is_transposed(a), k.is_transposed(b)
    m, kk, n = Size.of(a.shape[-2:-1]), Size.of(a.shape[-1:]), Size.of(b.shape[-1:])
    lda, ldb = (m if ta else kk), (kk if tb else n)
    if b.ndim == 2:
        rows = Size.of(a.shape[:-1])
        k.gemm(Gemm(node.dtype, ta, tb, rows, n, kk, k.slot(a), k.slot(b), k.slot(node), lda=lda, ldb=ldb, ldc=n))
        return
    k.gemm(Gemm(node.dtype, ta, tb, m, n, kk, k.slot(a), k.slot(b), k.slot(node), lda=lda, ldb=ldb, ldc=n,
                count=Size.of(node.shape[:-2]), stride_a=m * kk, stride_b=kk * n, stride_c=m * n))  # fmt: skip


@kernel(ContractLeading)
def _contract_leading(k, node):
    """a viewed as (K, m) and g as (K, n), K the product of the leading axes: out = a^T g."""
    a, g = node.inputs
    m, n, inner = Size.of(a.shape[-1:]), Size.of(g.shape[-1:]), Size.of(a.shape[:-1])
    k.gemm(Gemm(node.dtype, True, False, m, n, inner, k.slot(a), k.slot(g), k.slot(node), lda=m, ldb=n, ldc=n))

"""The matrix product kernels: one GEMM call through the BLAS the runtime passes in."""

from __future__ import annotations

from llvmlite import ir

from ....ops.linalg import ContractLeading, MatMul, MatMulBias
from ..irutil import element_count, for_range
from ..lowering import kernel


def _matmul_supported(node) -> bool:
    """Broadcast batched products (leading dimensions that differ) run through the callback."""
    a, b = node.inputs
    lead = node.shape[:-2]
    return b.ndim == 2 or (a.shape[:-2] == lead and b.shape[:-2] == lead)


@kernel(MatMul, supports=_matmul_supported, uses_blas=True)
def _matmul(k, node, bias: ir.Value | None = None, relu: bool = False):
    """One GEMM call; 2-D transposed operands become BLAS transpose flags. Leading (batch)
    dimensions of `a` fold into M when `b` is a matrix; otherwise one GEMM per matrix."""
    a, b = node.inputs[:2]
    ta, tb = k.is_transposed(a), k.is_transposed(b)
    m, kk = k.dims(a)[-2:]
    n = k.dims(b)[-1]
    lda, ldb = (m if ta else kk), (kk if tb else n)
    if b.ndim == 2:
        rows = k.count(a) if a.ndim > 2 else m
        rows = k.b.udiv(rows, kk) if a.ndim > 2 else rows
        k.gemm(node.dtype, ta, tb, rows, n, kk, k.ptr(a), lda, k.ptr(b), ldb, k.ptr(node), n, bias=bias, relu=relu,
               packed=k.prepacked(b))  # fmt: skip
        return
    batches = element_count(k.b, node.shape[:-2], k.batch)  # equal on both sides (_matmul_supported)
    stride_a, stride_b, stride_c = (k.b.mul(x, y) for x, y in ((m, kk), (kk, n), (m, n)))
    with for_range(k.b, batches, "mat") as i:
        k.gemm(
            node.dtype, ta, tb, m, n, kk,
            k.element(a, k.b.mul(i, stride_a)), lda,
            k.element(b, k.b.mul(i, stride_b)), ldb,
            k.element(node, k.b.mul(i, stride_c)), n,
        )  # fmt: skip


@kernel(MatMulBias, uses_blas=True)
def _matmul_bias(k, node):
    """The GEMM of `a @ w`, each block finished with the bias (and relu) by its thread."""
    _matmul(k, node, bias=k.ptr(node.inputs[2]), relu=node.op.activation == "relu")


@kernel(ContractLeading, uses_blas=True)
def _contract_leading(k, node):
    """One GEMM: a viewed as (K, m) and g as (K, n), K the product of the leading axes; out = a^T g."""
    a, g = node.inputs
    m, n = k.dims(a)[-1], k.dims(g)[-1]
    inner = k.b.udiv(k.count(a), m, name="leading")
    k.gemm(node.dtype, True, False, m, n, inner, k.ptr(a), m, k.ptr(g), n, k.ptr(node), n)

"""Kernels of reductions that are not loops over one domain: the sum of squares of several
tensors (gradient clipping's squared global norm) in one kernel, each tensor a vectorized sum."""

from __future__ import annotations

from ....ops.reduce import SumOfSquares
from ..irutil import i64
from ..lowering import kernel
from .nn import fold


@kernel(SumOfSquares)
def _sum_of_squares(k, node):
    b, f = k.b, k.scalar(node)
    total = f.const(0.0)
    for index, x in enumerate(node.inputs):

        def add_square(acc, i, x=x):
            value = k.load(x, i)
            return f.accumulate("add", acc, f.mul(value, value))

        total = f.add(total, fold(b, f.const(0.0), k.count(x), add_square, f"squares{index}"))
    k.store(node, i64(0), total)

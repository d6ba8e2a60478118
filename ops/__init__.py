"""Op semantics, one module per family: shape rule, NumPy reference and gradient rule of every
built-in op (no backend code lives here). Importing this package fills the op registry and gives
graph nodes their operators."""

from ..core.node import register_operators
from ..core.op import REGISTRY, Example, Op
from . import collective  # noqa: F401 (registers allreduce_sum)
from .conv import conv1d, conv2d, conv_transpose2d
from .elementwise import (
    Elementwise,
    add,
    div,
    equal,
    exp,
    log,
    mul,
    neg,
    ones_like,
    relu,
    sigmoid,
    sqrt,
    sub,
    tanh,
    zeros_like,
)  # fmt: skip
from .linalg import matmul
from .nn import embedding, one_hot, softmax, softmax_cross_entropy
from .norm import batch_norm
from .pool import avg_pool2d, global_pool, max_pool2d
from .reduce import max, mean, min, sum
from .shape import broadcast_like, concat, getitem, reshape, sum_to, transpose

register_operators(add=add, sub=sub, mul=mul, div=div, neg=neg, matmul=matmul, getitem=getitem, transpose=transpose)

# The public ops: drug exports exactly these as dg.<name> (the rest stay reachable as dg.ops.<name>).
__all__ = [
    "Op", "add", "avg_pool2d", "batch_norm", "concat", "conv1d", "conv2d", "conv_transpose2d", "div", "embedding",
    "exp", "global_pool", "log", "matmul", "max", "max_pool2d", "mean", "min", "mul", "neg", "one_hot", "relu",
    "reshape", "sigmoid", "softmax", "softmax_cross_entropy", "sqrt", "sub", "sum", "tanh", "transpose",
]  # fmt: skip

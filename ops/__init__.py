"""Op semantics, one module per family: shape rule, NumPy reference and gradient rule of every
built-in op (no backend code lives here). Importing this package fills the op registry and gives
graph nodes their operators."""

from ..core.node import register_operators
from ..core.op import REGISTRY, Example, Op
from . import collective  # noqa: F401 (registers allreduce_sum)

# Model language I (transformers): activations, numeric functions, comparisons and masks, casts.
from .activations import elu, gelu, leaky_relu, silu, softplus, stop_gradient
from .attention import attention
from .batchnorm import batch_norm
from .cast import cast
from .conv import conv1d, conv2d, conv_transpose2d
from .elementwise import (
    Elementwise,
    add,
    div,
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
from .indexing import argmax, argmin, cumsum, gather, take
from .linalg import matmul
from .logic import (
    equal,
    greater,
    greater_equal,
    less,
    less_equal,
    logical_and,
    logical_not,
    logical_or,
    logical_xor,
    not_equal,
    where,
)  # fmt: skip
from .nn import embedding, one_hot, softmax, softmax_cross_entropy
from .norm import layer_norm, rms_norm
from .numeric import abs, clip, cos, erf, maximum, minimum, pow, rsqrt, sign, sin, square
from .padding import pad
from .pool import avg_pool2d, global_pool, max_pool2d
from .random import dropout, random_normal, random_uniform
from .reduce import max, mean, min, sum
from .shape import broadcast_like, broadcast_to, concat, expand_dims, getitem, reshape, squeeze, sum_to, transpose

register_operators(add=add, sub=sub, mul=mul, div=div, neg=neg, matmul=matmul, getitem=getitem, transpose=transpose)
register_operators(
    pow=pow, abs=abs, cast=cast, less=less, less_equal=less_equal, greater=greater, greater_equal=greater_equal,
    equal=equal, not_equal=not_equal, logical_and=logical_and, logical_or=logical_or, logical_xor=logical_xor,
    logical_not=logical_not,
)  # fmt: skip

# The public ops: drug exports exactly these as dg.<name> (the rest stay reachable as dg.ops.<name>).
__all__ = [
    "Op", "add", "avg_pool2d", "batch_norm", "concat", "conv1d", "conv2d", "conv_transpose2d", "div", "embedding",
    "exp", "global_pool", "log", "matmul", "max", "max_pool2d", "mean", "min", "mul", "neg", "one_hot", "relu",
    "reshape", "sigmoid", "softmax", "softmax_cross_entropy", "sqrt", "sub", "sum", "tanh", "transpose",
]  # fmt: skip
__all__ += [  # model language I
    "abs", "argmax", "argmin", "attention", "broadcast_to", "cast", "clip", "cos", "cumsum", "dropout", "elu",
    "equal", "erf", "expand_dims", "gather", "gelu", "greater", "greater_equal", "layer_norm", "leaky_relu",
    "less", "less_equal", "logical_and", "logical_not", "logical_or", "logical_xor", "maximum", "minimum",
    "not_equal", "pad", "pow", "random_normal", "random_uniform", "rms_norm", "rsqrt", "sign", "silu", "sin",
    "softplus", "square", "squeeze", "stop_gradient", "take", "where",
]  # fmt: skip

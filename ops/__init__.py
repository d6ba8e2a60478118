"""Every op, one module per family; importing this package fills the registry."""

from . import leaves  # noqa: F401  (registers the leaf ops too, whatever is imported first)
from .base import REGISTRY, Elementwise, Example, Op, apply
from .conv import conv2d
from .elementwise import add, div, equal, exp, log, mul, neg, ones_like, relu, sigmoid, sqrt, sub, tanh
from .linalg import matmul
from .nn import embedding, global_pool, one_hot, softmax, softmax_cross_entropy
from .reduce import max, mean, min, sum
from .shape import broadcast_like, concat, getitem, reshape, sum_to, transpose

__all__ = [
    "REGISTRY", "Elementwise", "Example", "Op", "apply", "add", "broadcast_like", "concat", "conv2d", "div",
    "embedding", "equal", "exp", "getitem", "global_pool", "log", "matmul", "max", "mean", "min", "mul", "neg",
    "one_hot", "ones_like", "relu", "reshape", "sigmoid", "softmax", "softmax_cross_entropy", "sqrt", "sub",
    "sum", "sum_to", "tanh", "transpose",
]  # fmt: skip

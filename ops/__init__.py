"""Every op, one module per family; importing this package fills the registry."""

# leaves, collective, scan and traced register their ops; traced's decorator is exported as dg.elementwise (here
# the name `elementwise` is the module of built-in elementwise ops)
from . import collective, leaves, traced  # noqa: F401
from .base import REGISTRY, Elementwise, Example, Op, apply
from .conv import conv2d
from .elementwise import add, div, equal, exp, log, mul, neg, ones_like, relu, sigmoid, sqrt, sub, tanh
from .linalg import matmul
from .nn import avg_pool2d, embedding, global_pool, max_pool2d, one_hot, softmax, softmax_cross_entropy
from .reduce import max, mean, min, sum
from .scan import scan
from .shape import broadcast_like, concat, getitem, reshape, sum_to, transpose

__all__ = [
    "REGISTRY", "Elementwise", "Example", "Op", "apply", "add", "avg_pool2d", "broadcast_like", "concat", "conv2d",
    "div", "embedding", "equal", "exp", "getitem", "global_pool", "log", "matmul", "max", "max_pool2d", "mean", "min",
    "mul", "neg", "one_hot", "ones_like", "relu", "reshape", "scan", "sigmoid", "softmax", "softmax_cross_entropy",
    "sqrt", "sub", "sum", "sum_to", "tanh", "transpose",
]  # fmt: skip

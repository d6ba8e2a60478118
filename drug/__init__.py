"""drug: a differentiable graph compiler. Declare a graph, compile its whole train step."""

from . import layers
from .compiler.autodiff import grad, jacobian
from .compiler.errors import GraphError, ShapeError
from .compiler.graph import Graph, Node
from .compiler.optimizers import SGD, Adam, Optimizer, RMSProp
from .ops import (
    Op,
    add,
    concat,
    conv2d,
    div,
    embedding,
    exp,
    global_pool,
    log,
    matmul,
    max,
    mean,
    min,
    mul,
    neg,
    one_hot,
    relu,
    reshape,
    sigmoid,
    softmax,
    softmax_cross_entropy,
    sqrt,
    sub,
    sum,
    tanh,
    transpose,
)

__version__ = "0.1.0"

# The compiler and runtime load with the package (networkx, llvmlite and the executors take a
# few hundred milliseconds to import), so that compiling a graph pays for compiling only.
from .runtime import native as _native  # noqa: E402
from .runtime import step as _step  # noqa: E402

_native.warm_up()

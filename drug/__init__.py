"""drug: a differentiable graph compiler. Declare a graph, compile its whole train step."""

from . import decoding, distributed, layers
from .compiler.autodiff import grad, hessian_vector_product, jacobian, jvp
from .compiler.errors import GraphError, ShapeError
from .compiler.graph import Graph, Node
from .compiler.optimizers import SGD, Adam, Optimizer, RMSProp
from .ops import (
    Op,
    add,
    avg_pool2d,
    concat,
    conv2d,
    div,
    embedding,
    exp,
    global_pool,
    log,
    matmul,
    max,
    max_pool2d,
    mean,
    min,
    mul,
    neg,
    one_hot,
    relu,
    reshape,
    scan,
    sigmoid,
    softmax,
    softmax_cross_entropy,
    sqrt,
    sub,
    sum,
    tanh,
    transpose,
)
from .ops.traced import elementwise

__version__ = "0.1.0"

# The compiler and runtime load with the package (networkx, llvmlite and the executors take a
# few hundred milliseconds to import), so that compiling a graph pays for compiling only.
from .runtime import native as _native  # noqa: E402
from .runtime import step as _step  # noqa: E402

_native.warm_up()

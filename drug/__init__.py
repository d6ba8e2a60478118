"""drug: a differentiable graph compiler. Declare a graph, compile its whole train step."""

from . import backends, compiler, core, decoding, distributed, layers, ops, runtime
from .compiler.autodiff import grad, hessian_vector_product, jacobian, jvp
from .compiler.optimizers import SGD, Adam, Optimizer, RMSProp
from .compiler.scan import scan
from .compiler.traced import elementwise
from .core.errors import DTypeError, GraphError, NonFiniteError, ShapeError
from .core.node import Node
from .graph import Graph, evaluate, render_dot
from .ops import *  # noqa: F403 (the public ops, listed in ops.__all__)
from .runtime.profile import Profile
from .runtime.step import CompiledFunction

__version__ = "0.1.0"

# The backends load with the package (networkx, llvmlite and the executors take a few hundred
# milliseconds to import): compiling a graph then pays for compiling only.
backends.llvm.warm_up()

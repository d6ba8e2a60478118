"""The error types users see. All are ValueErrors, so generic handlers still work; a dtype
mismatch is also a TypeError, which is what Python raises for a value of the wrong type."""


class GraphError(ValueError):
    """A graph that cannot be built, compiled or run: bad names, cycles, wrong feeds, a failed step.

    Raised when a graph is built (`g.input`, an op on nodes of two graphs), when it is compiled
    (`g.compile`) or when a compiled function is called; the message names the node and the op."""


class ShapeError(GraphError):
    """Shapes that do not fit; the message names the node, the op and the shapes.

    Raised at build time (`x @ w` with mismatched inner sizes) or at the call (a feed of the wrong
    shape, a label out of range)."""


class DTypeError(ShapeError, TypeError):
    """Dtypes that do not fit: mixed float dtypes, float labels, a feed of the wrong dtype.

    Both a `ShapeError` (so a `GraphError` and a `ValueError`) and a `TypeError`, so either kind
    of handler catches it."""


def with_context(error: GraphError, prefix: str) -> GraphError:
    """The same kind of error with `prefix` before its message (a ShapeError stays a ShapeError,
    a DTypeError a DTypeError), for re-raising with `from None`."""
    return type(error)(f"{prefix}{error}")


class NonFiniteError(GraphError, FloatingPointError):
    """A step compiled with `debug_numerics=True` produced a NaN or an Inf; the message names the
    first node that did, what it computed from, and says that the step changed nothing.

    Also a `FloatingPointError` (what NumPy raises under `np.errstate(all="raise")`).

    Attributes:
        node: The label of the first node whose value was not finite.
    """

    def __init__(self, message: str, node: str | None = None):
        super().__init__(message)
        self.node = node

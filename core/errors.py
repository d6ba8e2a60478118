"""The two error types users see; both are ValueErrors so generic handlers still work."""


class GraphError(ValueError):
    """A graph that cannot be built, compiled or run (bad names, cycles, wrong feeds)."""


class ShapeError(GraphError):
    """Shapes or dtypes that do not fit; the message names the node, the op and the shapes."""

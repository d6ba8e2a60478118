"""The error types users see: GraphError and its subclasses, all ValueErrors so generic handlers still work."""

from __future__ import annotations


class GraphError(ValueError):
    """A graph that cannot be built, compiled or run (bad names, cycles, wrong feeds)."""


class ShapeError(GraphError):
    """Shapes or dtypes that do not fit; the message names the node, the op and the shapes."""


class ResultShapeError(GraphError):
    """An op's forward returned a value of another shape than its own shape rule gave (a bug in a
    custom op). Every backend raises it naming the node, with the same message (`at`)."""

    def __init__(self, shape: tuple, expected: tuple, where: str = ""):
        self.shape, self.expected = tuple(shape), tuple(expected)
        super().__init__(f"{where}produced shape {self.shape}, expected {self.expected}")

    def at(self, node_label: str, op_name: str) -> ResultShapeError:
        return ResultShapeError(self.shape, self.expected, f"node {node_label} (op '{op_name}') ")

"""Ops with several results (attention's gradient): `result` nodes pick them out. The multi-output
node itself is a token; its kernel writes the results' buffers."""

from __future__ import annotations

import numpy as np

from ..core.node import Node, apply
from ..core.op import Op
from ..core.types import TensorType


class Result(Op):
    """Result `index` of a multi-output node."""

    name = "result"
    arity = 1

    def __init__(self, index: int, type_: TensorType):
        self.index = index
        self.type_ = type_

    @property
    def result_index(self) -> int:
        return self.index

    def infer(self, token: TensorType) -> TensorType:
        return self.type_

    def ref(self, results: tuple) -> np.ndarray:
        return results[self.index]

    def grad(self, g: Node, out: Node, token: Node) -> list:
        return [g]  # autodiff files it under this result's index for the multi-output op's rule


def result(node: Node, index: int) -> Node:
    return apply(Result(index, node.op.output_types()[index]), node)

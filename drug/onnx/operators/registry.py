"""The import table: one converter per ONNX op type, from the node's inputs and attributes to drug
ops. Adding an op is one entry (in the module of its family):

    @converts("Relu")
    def _relu(ctx):
        return relu(ctx.input(0))

A converter returns a drug node, an array known at import time (shapes), or a list of them (one
per ONNX output). It refuses what drug cannot compute with `raise ctx.fail("why")`; the importer
adds the file, the node and its op_type to the message."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...core.node import Node
from ..context import NodeContext

Converter = Callable[[NodeContext], "Node | np.ndarray | list"]
CONVERTERS: dict[str, Converter] = {}


def converts(*op_types: str) -> Callable[[Converter], Converter]:
    """Register a converter for these ONNX op types (default domain)."""

    def register(fn: Converter) -> Converter:
        for op_type in op_types:
            CONVERTERS[op_type] = fn
        return fn

    return register


def axis_of(axis: int, ndim: int, ctx: NodeContext) -> int:
    """`axis` of a `ndim`-D value, made non-negative; refused when out of range."""
    if not -ndim <= axis < ndim:
        raise ctx.fail(f"axis {axis} is out of range for a {ndim}-D input")
    return axis % ndim

"""From what a user asks to compile to a finished program: the one place that checks the request,
picks the trained parameters and runs the pipeline (Graph.compile, drug-compile and data-parallel
compile all come through here)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence
from typing import Any

from ..core.errors import GraphError
from ..core.graph import Graph
from ..core.leaves import ParameterOp
from ..core.node import Node, recording
from ..core.program import Program, ancestors
from .passes import PIPELINE, Pass, insert_after, run_pipeline


def as_node_list(nodes: Node | Sequence[Node] | None) -> list[Node]:
    if nodes is None:
        return []
    return [nodes] if isinstance(nodes, Node) else list(nodes)


def build_program(
    graph: Graph,
    loss: Node | None = None,
    outputs: Node | Sequence[Node] | None = None,
    optimizer: Any = None,
    params: Sequence[Node | str] | None = None,
    training: bool | None = None,
    tail: Sequence[tuple[str, Pass]] = (),
    gradient_passes: Sequence[tuple[str, Pass]] = (),
) -> Program:
    """The program computing `loss` (first) and `outputs`, training `params` (default: every
    parameter the loss depends on) with `optimizer`, after the common passes and a backend's
    `tail`. `training` is the mode of mode-dependent ops (default: training when there is an
    optimizer). `gradient_passes` rewrite `program.grads` between autodiff and the optimizer (the
    allreduce of data-parallel training)."""
    user_outputs = as_node_list(outputs)
    if loss is None and not user_outputs:
        raise GraphError("compile needs a loss, outputs, or both")
    if optimizer is not None and loss is None:
        raise GraphError("an optimizer needs a loss to minimize")
    for node in user_outputs + ([loss] if loss is not None else []):
        if not isinstance(node, Node):
            raise GraphError(f"compile expects graph nodes, got {type(node).__name__}")
    wrt: list[Node] = []
    if optimizer is not None:
        if params is None:
            wrt = [n for n in ancestors([loss]) if isinstance(n.op, ParameterOp)]
        else:
            wrt = [graph[p] if isinstance(p, str) else p for p in params]
        if not wrt:
            raise GraphError("nothing to train: the loss depends on no parameter")
    program = Program(
        graph=graph,
        outputs=tuple(([loss] if loss is not None else []) + user_outputs),
        loss=loss,
        wrt=tuple(wrt),
        optimizer=optimizer,
        training=optimizer is not None if training is None else bool(training),
    )
    pipeline = insert_after(PIPELINE + list(tail), "autodiff", list(gradient_passes))
    with _no_collection_pauses(), recording(None):  # the compiler's nodes belong to no user call
        return run_pipeline(program, pipeline)


@contextlib.contextmanager
def _no_collection_pauses() -> Iterator[None]:
    """Compiling allocates tens of thousands of short-lived objects, enough to set off a full
    garbage collection that scans the whole process heap (~65 ms, a tenth of a cold compile);
    the collector runs again as usual afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

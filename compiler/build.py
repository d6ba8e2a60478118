"""From what a user asks to compile to a finished program: the one place that checks the request,
picks the trained parameters and runs the pipeline (Graph.compile, drug-compile and data-parallel
compile all come through here)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from ..core.errors import GraphError
from ..core.graph import Graph
from ..core.leaves import ParameterOp
from ..core.node import Node, id_mark, recording
from ..core.program import Program, ancestors
from .optimizers import Optimizer
from .passes import PIPELINE, Pass, debugging, insert_after, run_pipeline


class ProgramCache(Protocol):
    """Finished programs kept by a backend (which knows what its own passes depend on)."""

    def load(self, request: Program) -> Program | None:
        """The finished program of this request, if one was stored."""

    def store(self, request: Program, finished: Program, mark: int) -> None:
        """Keep `finished`, what the passes made of `request` after `core.node.id_mark()` gave `mark`."""


def as_node_list(nodes: Node | Sequence[Node] | None) -> list[Node]:
    if nodes is None:
        return []
    if isinstance(nodes, Node):
        return [nodes]
    if not isinstance(nodes, (list, tuple)):
        raise GraphError(f"outputs must be a node or a list of nodes, got {type(nodes).__name__}")
    return list(nodes)


def build_program(
    graph: Graph,
    loss: Node | None = None,
    outputs: Node | Sequence[Node] | None = None,
    optimizer: Any = None,
    params: Sequence[Node | str] | None = None,
    training: bool | None = None,
    tail: Sequence[tuple[str, Pass]] = (),
    gradient_passes: Sequence[tuple[str, Pass]] = (),
    cache: ProgramCache | None = None,
) -> Program:
    """The program computing `loss` (first) and `outputs`, training `params` (default: every
    parameter the loss depends on) with `optimizer`, after the common passes and a backend's
    `tail`. `training` is the mode of mode-dependent ops (default: training when there is an
    optimizer). `gradient_passes` rewrite `program.grads` between autodiff and the optimizer (the
    allreduce of data-parallel training). `cache` (which must know the `tail` passes) skips the
    passes for a request it has seen; it is not used with gradient passes or DRUG_DEBUG."""
    user_outputs = as_node_list(outputs)
    if loss is None and not user_outputs:
        raise GraphError("compile needs a loss, outputs, or both")
    if optimizer is not None and loss is None:
        raise GraphError("an optimizer needs a loss to minimize")
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise GraphError(f"optimizer must be a drug optimizer such as dg.Adam(lr=1e-3), got {optimizer!r}")
    for node in user_outputs + ([loss] if loss is not None else []):
        if not isinstance(node, Node):
            raise GraphError(f"compile expects graph nodes, got {type(node).__name__}")
    wrt: list[Node] = []
    if optimizer is not None:
        if params is None:
            wrt = [n for n in ancestors([loss]) if isinstance(n.op, ParameterOp)]
        else:
            wrt = [_parameter(graph, p) for p in ([params] if isinstance(params, (str, Node)) else params)]
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
    if gradient_passes or debugging():
        cache = None
    with _no_collection_pauses(), recording(None):  # the compiler's nodes belong to no user call
        found = cache.load(program) if cache is not None else None
        if found is not None:
            return found
        mark = id_mark()
        finished = run_pipeline(program, pipeline)
        if cache is not None:
            cache.store(program, finished, mark)
        return finished


def _parameter(graph: Graph, item: Any) -> Node:
    """An entry of `params=`: a parameter node of `graph`, or its name."""
    node = graph[item] if isinstance(item, str) else item
    if not isinstance(node, Node) or not isinstance(node.op, ParameterOp):
        got = node.describe() if isinstance(node, Node) else f"{type(item).__name__} {item!r}"
        raise GraphError(f"params lists what to train, parameters (nodes or names): {got} is not a parameter")
    if node.graph is not graph:
        raise GraphError(f"params: parameter {node.name} belongs to another graph")
    return node


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

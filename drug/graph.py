"""The Graph users build: the core graph plus `compile`, which reaches the runtime."""

from __future__ import annotations

from collections.abc import Sequence

from .compiler.optimizers import Optimizer
from .core.graph import Graph as CoreGraph
from .core.node import Node
from .runtime.step import CompiledFunction, compile_step


class Graph(CoreGraph):
    """A DAG declared with inputs, parameters, constants and ops; compiled into callables."""

    def compile(
        self,
        loss: Node | None = None,
        outputs: Node | Sequence[Node] | None = None,
        optimizer: Optimizer | None = None,
        params: Sequence[Node | str] | None = None,
        backend: str | None = None,
        check_finite: bool = False,
        training: bool | None = None,
    ) -> CompiledFunction:
        """Compile a train step (loss + optimizer), an evaluator (loss) or a predictor (outputs).
        `training` picks what dropout and batch norm do (default: training for a train step)."""
        return compile_step(self, loss, outputs, optimizer, params, backend, check_finite, training=training)

"""The pass pipeline: a plain ordered list of named passes, each Program -> Program."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import networkx as nx

from ..core.errors import GraphError, ShapeError, with_context
from ..core.leaves import ParameterOp
from ..core.program import Program, ancestors, format_program, to_networkx
from ..core.types import FLOAT_DTYPES
from .autodiff import gradients
from .modes import specialize_modes
from .random import advance_random

Pass = Callable[[Program], Program]


def verify(program: Program) -> Program:
    """Reject what cannot be compiled: foreign nodes, a non-scalar loss, untrainable targets, cycles."""
    nodes = ancestors(program.roots)
    foreign = [n for n in nodes if n.graph is not program.graph]
    if foreign:
        raise GraphError(f"node {foreign[0].label} belongs to another graph")
    if program.loss is not None and (program.loss.shape != () or program.loss.dtype not in FLOAT_DTYPES):
        raise ShapeError(f"loss {program.loss.describe()} must be a float scalar; reduce it with dg.mean or dg.sum")
    for w in program.wrt:
        if not isinstance(w.op, ParameterOp):
            raise GraphError(f"cannot train {w.label}: it is a '{w.op.name}' node, not a parameter")
    if not nx.is_directed_acyclic_graph(to_networkx(nodes)):
        raise GraphError("the graph has a cycle: " + str(nx.find_cycle(to_networkx(nodes))))
    return program


def infer_shapes(program: Program) -> Program:
    """Re-derive every node's type from its inputs; a pass that broke a shape is caught here."""
    for node in ancestors(program.roots):
        if not node.inputs:
            continue
        try:
            inferred = node.op.infer(*(i.type for i in node.inputs))
        except ShapeError as error:
            raise with_context(error, f"node {node.where}: ") from None
        if inferred != node.type:
            raise ShapeError(f"node {node.where}: type {node.type} but inputs give {inferred}")
    return program


def autodiff(program: Program) -> Program:
    if program.optimizer is None or program.loss is None:
        return program
    return program.with_(grads=tuple(gradients(program.loss, program.wrt)))


def apply_optimizer(program: Program) -> Program:
    if program.optimizer is None or not program.wrt:
        return program
    return program.with_(updates=program.updates + tuple(program.optimizer.updates(program.wrt, program.grads)))


def prune(program: Program) -> Program:
    """Keep only the nodes the outputs and updates need, in a topological order."""
    return program.with_(nodes=tuple(ancestors(program.roots)))


PIPELINE: list[tuple[str, Pass]] = [
    ("verify", verify),
    ("shapes", infer_shapes),
    ("modes", specialize_modes),
    ("random", advance_random),
    ("autodiff", autodiff),
    ("optimizer", apply_optimizer),
    ("prune", prune),
]


def insert_after(
    pipeline: list[tuple[str, Pass]], anchor: str, passes: list[tuple[str, Pass]]
) -> list[tuple[str, Pass]]:
    """A copy of `pipeline` with `passes` right after the pass named `anchor` (e.g. gradient
    rewrites such as data-parallel averaging go after "autodiff", before "optimizer")."""
    names = [name for name, _ in pipeline]
    if anchor not in names:
        raise ValueError(f"no pass named {anchor!r}; the pipeline is {names}")
    at = names.index(anchor) + 1
    return pipeline[:at] + list(passes) + pipeline[at:]


def debugging() -> bool:
    """DRUG_DEBUG is set: the pipeline prints the program after each pass."""
    return os.environ.get("DRUG_DEBUG", "0") not in ("", "0")


def run_pipeline(program: Program, pipeline: list[tuple[str, Pass]] = PIPELINE) -> Program:
    debug = debugging()
    for name, run_pass in pipeline:
        program = run_pass(program)
        if debug:  # the nodes the pass left: before prune fills program.nodes, those the roots reach
            nodes = program.nodes or tuple(ancestors(program.roots + list(program.grads)))
            extra = f", {len(program.grads)} gradients" if program.grads else ""
            extra += f", {len(program.updates)} updates" if program.updates else ""
            print(f"== after {name}: {len(nodes)} nodes{extra}", file=sys.stderr)
            print(format_program(program.with_(nodes=nodes)), file=sys.stderr)
            for index, kernel in enumerate(program.kernels if name == "fuse" else ()):
                members = ", ".join(n.label for n in kernel.nodes)
                print(f"  kernel {index} {kernel.kind} {kernel.domain}: {members}", file=sys.stderr)
    return program

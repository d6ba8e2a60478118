"""Graphviz (DOT) pictures of graphs: the user's graph, with one cluster per layer or composite
op call, and a compiled program, with one cluster per native kernel (what fusion put together).
`render` draws the source with the optional `graphviz` package."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from ..compiler.fusion import is_inline
from ..core.leaves import BufferOp, ConstantOp, InputOp, ParameterOp, StateOp
from ..core.node import COMPILER_KINDS, Call, Node
from ..core.program import Program
from ..core.types import format_shape

_STYLE = {
    InputOp: 'shape=ellipse, style=filled, fillcolor="#dbeafe"',
    ParameterOp: 'shape=box, style=filled, fillcolor="#fef3c7"',
    StateOp: 'shape=box, style="filled,dashed", fillcolor="#f3f4f6"',
    BufferOp: 'shape=box, style="filled,dashed", fillcolor="#fef3c7"',
    ConstantOp: 'shape=box, style=filled, fillcolor="#f3f4f6", fontsize=10',
}
_OP_STYLE = 'shape=box, style="rounded,filled", fillcolor="#ffffff"'


def quote(text: str) -> str:
    """A DOT string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _node_line(node: Node, extra: str = "", origin: bool = False) -> str:
    """One DOT node: label, op (with its scalar constants), shape and dtype; `origin` adds what
    made it when the compiler did (a gradient, an optimizer update)."""
    style = next((s for cls, s in _STYLE.items() if isinstance(node.op, cls)), _OP_STYLE)
    constants = [f"{i.op.value.item():g}" for i in node.inputs if is_inline(i)]
    op = node.op.name + (f" ({', '.join(constants)})" if constants else "")
    made_by = [node.call.name] if origin and node.call is not None and node.call.kind in COMPILER_KINDS else []
    shows_op = node.inputs and not (node.label.startswith(f"{node.op.name}#") and not constants)
    lines = [node.label] + ([op] if shows_op else []) + made_by + [f"{format_shape(node.shape)} {node.dtype}"]
    text = quote("\n".join(lines))
    return f"  n{node.id} [label={text}, {style}{extra}];"


def _edges(nodes: Iterable[Node], shown: set[int]) -> list[str]:
    return [f"  n{i.id} -> n{n.id};" for n in nodes for i in n.inputs if i.id in shown and n.id in shown]


def graph_dot(nodes: Sequence[Node], outputs: Sequence[Node] = (), title: str = "graph") -> str:
    """DOT source of user nodes: one cluster per layer call or composite op call (the nodes a
    call such as `softmax_cross_entropy` made), scalar constants folded into their consumers."""
    shown = [n for n in nodes if not is_inline(n)]
    ids = {n.id for n in shown}
    marked = {o.id for o in outputs}
    lines = [
        "digraph drug {",
        f"  label={quote(title)}; labelloc=t; rankdir=TB;",
        "  graph [fontname=Helvetica]; node [fontname=Helvetica];",
    ]
    calls: dict[int, tuple[Call, list[Node]]] = {}
    for node in shown:
        if node.call is not None:
            calls.setdefault(id(node.call), (node.call, []))[1].append(node)
    clustered = set()
    for number, (call, members) in enumerate(calls.values()):
        if len([m for m in members if m.inputs]) < 2 and call.kind == "op":
            continue  # a call that made one op node: no cluster
        lines.append(f"  subgraph cluster_call{number} {{")
        lines.append(f'    label={quote(str(call))}; style="rounded,dashed"; color="#6b7280";')
        for m in members:
            lines.append("  " + _node_line(m, ", peripheries=2" if m.id in marked else ""))
            clustered.add(m.id)
        lines.append("  }")
    for node in shown:
        if node.id not in clustered:
            lines.append(_node_line(node, ", peripheries=2" if node.id in marked else ""))
    lines += _edges(shown, ids)
    lines.append("}")
    return "\n".join(lines)


def program_dot(program: Program, title: str = "compiled function") -> str:
    """DOT source of a compiled program: one cluster per kernel of its schedule (the fused loops
    and op kernels native code runs, in order), updates as dashed edges into the updated leaf."""
    nodes = [n for n in program.nodes if not is_inline(n)]
    ids = {n.id for n in nodes}
    outputs = {o.id for o in program.outputs}
    kernels = program.schedule.kernels if program.schedule is not None else []
    lines = [
        "digraph drug {",
        f"  label={quote(title)}; labelloc=t; rankdir=TB;",
        "  graph [fontname=Helvetica]; node [fontname=Helvetica];",
    ]
    placed: set[int] = set()
    for index, kernel in enumerate(kernels):
        domain = f" over {format_shape(kernel.domain)}" if kernel.kind == "loop" else ""
        lines.append(f"  subgraph cluster_kernel{index} {{")
        lines.append(f'    label={quote(f"kernel {index}: {kernel.name}{domain}")}; style=filled; color="#e0e7ff";')
        for node in kernel.nodes:
            lines.append("  " + _node_line(node, ", peripheries=2" if node.id in outputs else "", origin=True))
            placed.add(node.id)
        lines.append("  }")
    for node in nodes:
        if node.id not in placed:
            lines.append(_node_line(node, ", peripheries=2" if node.id in outputs else "", origin=True))
    lines += _edges(nodes, ids)
    for leaf, new in program.updates:
        if leaf.id in ids and new.id in ids:
            lines.append(f'  n{new.id} -> n{leaf.id} [style=dashed, color="#b45309", label="update"];')
    lines.append("}")
    return "\n".join(lines)


def render(source: str, path: str | os.PathLike, format: str | None = None) -> str:
    """Draw DOT `source` into `path` (the format from its suffix: svg, png, pdf, ...) with the
    `graphviz` Python package and the Graphviz `dot` program; returns the path written.

    Raises:
        ImportError: The `graphviz` package is missing (`pip install "drug[graphviz]"`).
    """
    try:
        import graphviz  # optional: only rendering needs it
    except ImportError:
        raise ImportError(
            "rendering DOT needs the graphviz package (pip install 'drug[graphviz]') and the Graphviz "
            "program (e.g. apt-get install graphviz); the DOT text itself needs neither"
        ) from None
    path = os.fspath(path)
    chosen = format or os.path.splitext(path)[1].lstrip(".") or "svg"
    return graphviz.Source(source).render(outfile=path, format=chosen, cleanup=True)

"""`Graph.summary()`: the user's graph as a table of layers and op calls, with output shapes,
parameter counts, totals and an estimate of the memory values take per batch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..compiler.fusion import is_inline
from ..core.graph import format_bytes
from ..core.leaves import ConstantOp, InputOp, ParameterOp
from ..core.node import Node
from ..core.types import concrete_shape, format_shape


@dataclass
class SummaryRow:
    """One layer call, op call or leaf of the graph."""

    what: str  # "dense1 (Dense)", "softmax_cross_entropy", "input", "parameter"
    output: str  # the label of the node it returned
    shape: str
    dtype: str
    params: int  # values of the parameters it created
    param_bytes: int
    nodes: int  # graph nodes it made


@dataclass
class Summary:
    """A graph's summary; `print(g.summary())` shows it as a table."""

    rows: list[SummaryRow]
    parameters: int
    parameter_bytes: int
    activation_bytes_per_example: int  # forward values of the batched nodes, per example
    fixed_activation_bytes: int  # forward values of unbatched nodes (once per step)
    batch: int | None

    def activation_bytes(self, batch: int) -> int:
        """Estimated bytes of all forward values at this batch size (no memory reuse)."""
        return self.fixed_activation_bytes + batch * self.activation_bytes_per_example

    def table(self) -> str:
        header = ("layer / op", "output", "shape", "dtype", "params")
        cells = [[r.what, r.output, r.shape, r.dtype, f"{r.params:,}" if r.params else ""] for r in self.rows]
        widths = [max(len(row[c]) for row in [header, *cells]) for c in range(len(header))]
        line = lambda row: "  ".join(v.rjust(w) if c == 4 else v.ljust(w) for c, (v, w) in enumerate(zip(row, widths)))  # noqa: E731
        rule = "-" * len(line(header))
        out = [line(header).rstrip(), rule] + [line(c).rstrip() for c in cells] + [rule]
        out.append(f"parameters: {self.parameters:,} ({format_bytes(self.parameter_bytes)})")
        per = self.activation_bytes_per_example
        values = f"values: {format_bytes(per)} per example"
        if self.fixed_activation_bytes:
            values += f" + {format_bytes(self.fixed_activation_bytes)}"
        if self.batch is not None:
            values += f"; {format_bytes(self.activation_bytes(self.batch))} at batch {self.batch}"
        out.append(values)
        out.append("  (forward values before fusion and memory reuse: an upper bound of the native arena")
        out.append("  for inference; a train step also holds the gradients, about twice as much)")
        return "\n".join(out)

    __str__ = table

    def __repr__(self) -> str:
        return self.table()


def summarize(nodes: Sequence[Node], batch: int | None = None) -> Summary:
    """The summary of `nodes` (a graph's, in creation order): one row per layer call or op call
    (the nodes it made together), per input and per parameter made outside a layer."""
    groups: dict[int, list[Node]] = {}
    for node in nodes:
        if is_inline(node):
            continue
        groups.setdefault(id(node.call) if node.call is not None else -node.id - 1, []).append(node)
    rows = []
    for members in sorted(groups.values(), key=lambda m: max(n.id for n in m)):
        call = members[0].call
        output = call.output if call is not None and call.output is not None else members[-1]
        params = [n for n in members if isinstance(n.op, ParameterOp)]
        what = _what(call, output)
        rows.append(
            SummaryRow(
                what,
                output.label,
                format_shape(output.shape),
                str(output.dtype),
                sum(math.prod(p.shape) for p in params),
                sum(math.prod(p.shape) * p.dtype.itemsize for p in params),
                len(members),
            )
        )
    computed = [n for n in nodes if n.inputs and not n.op.multi_output]
    per_example = sum(_nbytes(n, 1) - _nbytes(n, 0) for n in computed)
    fixed = sum(_nbytes(n, 0) for n in computed)
    parameters = [n for n in nodes if isinstance(n.op, ParameterOp)]
    return Summary(
        rows,
        sum(math.prod(p.shape) for p in parameters),
        sum(math.prod(p.shape) * p.dtype.itemsize for p in parameters),
        per_example,
        fixed,
        batch,
    )


def _what(call, output: Node) -> str:
    if call is not None:
        return f"{call.name} ({call.kind})" if call.kind != "op" else call.name
    if isinstance(output.op, (InputOp, ParameterOp, ConstantOp)):
        return output.op.name
    return output.op.name


def _nbytes(node: Node, batch: int) -> int:
    return math.prod(concrete_shape(node.shape, batch)) * node.dtype.itemsize

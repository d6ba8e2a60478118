"""Fused loop kernels as OpenCL C: the layout of compiler/grid.py (work items over the parallel
axes, a walk over the serial ones) with each member computed by its scalar rule
(compiler/scalar.py) through CScalarBuilder. One renderer serves every elementwise op and
reduction; nothing here knows a particular op."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ...compiler.fusion import Kernel, is_inline, is_reduction
from ...compiler.grid import LoopGrid, Size, loop_grid
from ...compiler.scalar import scalar_rule_of
from ...compiler.schedule import Schedule
from ...core.node import Node
from .scalar import CScalarBuilder
from .source import Function, Params, c_type, literal, offset, size, unflatten

IDENTITY = {"add": 0.0, "max": float("-inf"), "min": float("inf")}


@dataclass
class LoopLaunch:
    """A rendered loop kernel: its function, how many work items it needs and, for shared walks,
    the work-group size its local-memory tree is written for."""

    function: Function
    work_items: Size
    group_size: int | None


def render_loop(kernel: Kernel, schedule: Schedule, lanes: int) -> LoopLaunch:
    """`lanes`: the work-group size of shared walks (a power of two the device allows)."""
    grid = loop_grid(kernel)
    if not grid.shares_walks(lanes):
        renderer = _LoopRenderer(grid, schedule, 1)
        return LoopLaunch(Function(renderer.params, renderer.render()), grid.work_items, None)
    renderer = _LoopRenderer(grid, schedule, lanes)
    function = Function(renderer.params, renderer.render(), lanes)
    return LoopLaunch(function, grid.work_items * lanes, lanes)


class _LoopRenderer:
    def __init__(self, grid: LoopGrid, schedule: Schedule, lanes: int):
        self.grid, self.schedule, self.lanes = grid, schedule, lanes
        self.params = Params()
        self.index = [f"i{a}" for a in range(len(grid.extents))]
        self.lines: list[str] = []
        self._names = itertools.count()
        self.accumulator: dict[int, str] = {}  # register reductions: node id -> accumulator name

    def fresh(self) -> str:
        return f"t{next(self._names)}"

    def buffer(self, node: Node, write: bool = False) -> str:
        return self.params.use(self.schedule.slot(node), node.dtype, write)

    def at(self, node: Node) -> str:
        """`node`'s element at the current indices (its strides skip the axes it does not vary on)."""
        strides = self.grid.accesses[node.id]
        return f"{self.buffer(node)}[{offset(list(zip(self.index, strides)))}]"

    def render(self) -> list[str]:
        grid, lines = self.grid, self.lines
        shared = self.lanes > 1
        parallel = grid.parallel
        if shared:  # a work group per element of the parallel axes, its lanes sharing the walk
            lines += ["    const long lane = get_local_id(0);", "    const long item = get_group_id(0);"]
        else:
            lines += ["    const long item = get_global_id(0);", f"    if (item >= {size(grid.work_items)}) return;"]
        unflatten("item", [grid.extents[a] for a in parallel], [self.index[a] for a in parallel], lines, "    ")
        for node in grid.reductions:
            identity = literal(IDENTITY[node.op.combine], node.dtype)
            if node.id in grid.in_memory:
                self.walk(lambda n=node, v=identity: [f"{self.at(n)} = {v};"], start="0", step="1")
                self.buffer(node, write=True)
            else:
                name = f"acc{len(self.accumulator)}"
                self.accumulator[node.id] = name
                lines.append(f"    {c_type(node.dtype)} {name} = {identity};")
        self.walk(self.elements, start="lane" if shared else "0", step=str(self.lanes))
        if shared:
            self.combine_lanes()
        else:
            for node in grid.reductions:
                if node.id in self.accumulator:
                    lines.append(f"    {self.store(node)} = {self.accumulator[node.id]};")
        return lines

    def store(self, node: Node) -> str:
        self.buffer(node, write=True)
        return self.at(node)

    def walk(self, body, start: str, step: str) -> None:
        """`body()` (lines) at every point of the serial axes this work item takes."""
        grid = self.grid
        if not grid.serial:
            self.lines.extend("    " + line for line in body())
            return
        lines = [f"    for (long s = {start}; s < {size(grid.serial_size)}; s += {step}) {{"]
        unflatten("s", [grid.extents[a] for a in grid.serial], [self.index[a] for a in grid.serial], lines, "        ")
        lines += ["        " + line for line in body()]
        lines.append("    }")
        self.lines.extend(lines)

    def elements(self) -> list[str]:
        """The members at one point of the domain, in order: loads, scalar rules, stores."""
        lines: list[str] = []
        values: dict[int, str] = {}
        members = {n.id for n in self.grid.kernel.nodes}
        outputs = {n.id for n in self.grid.kernel.outputs}

        def value(node: Node) -> str:
            if node.id in values:
                return values[node.id]
            if is_inline(node):
                return literal(float(node.op.value.reshape(())), node.dtype)
            assert node.id not in members, f"member {node.label} read before it is computed"
            name = f"x{len(values)}"
            lines.append(f"const {c_type(node.dtype)} {name} = {self.at(node)};")
            values[node.id] = name
            return name

        for node in self.grid.kernel.nodes:
            if is_reduction(node):
                x = value(node.inputs[0])
                builder = CScalarBuilder(node, lines, self.fresh, "")
                if node.id in self.accumulator:
                    acc = self.accumulator[node.id]
                    lines.append(f"{acc} = {builder.combine(node.op.combine, acc, x)};  // {node.op.name}")
                else:
                    target = self.store(node)
                    lines.append(f"{target} = {builder.combine(node.op.combine, target, x)};  // {node.op.name}")
                continue
            lines.append(f"// {node.op.name}")
            skip = node.op.shape_only_inputs
            args = [None if pos in skip else value(i) for pos, i in enumerate(node.inputs)]
            values[node.id] = scalar_rule_of(node.op)(CScalarBuilder(node, lines, self.fresh, ""), *args)
            if node.id in outputs:
                lines.append(f"{self.store(node)} = {values[node.id]};")
        return lines

    def combine_lanes(self) -> None:
        """The work group's partial results, combined in a tree in local memory; lane 0 stores."""
        lines, lanes = self.lines, self.lanes
        reductions = [n for n in self.grid.reductions if n.id in self.accumulator]
        for k, node in enumerate(reductions):
            lines.append(f"    __local {c_type(node.dtype)} part{k}[{lanes}];")
            lines.append(f"    part{k}[lane] = {self.accumulator[node.id]};")
        lines.append("    barrier(CLK_LOCAL_MEM_FENCE);")
        lines.append(f"    for (long apart = {lanes // 2}; apart > 0; apart >>= 1) {{")
        lines.append("        if (lane < apart) {")
        for k, node in enumerate(reductions):
            builder = CScalarBuilder(node, [], self.fresh, "")
            combined = builder.combine(node.op.combine, f"part{k}[lane]", f"part{k}[lane + apart]")
            lines.append(f"            part{k}[lane] = {combined};")
        lines.append("        }")
        lines.append("        barrier(CLK_LOCAL_MEM_FENCE);")
        lines.append("    }")
        lines.append("    if (lane == 0) {")
        for k, node in enumerate(reductions):
            lines.append(f"        {self.store(node)} = part{k}[0];")
        lines.append("    }")

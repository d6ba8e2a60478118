"""A schedule as one OpenCL program: every kernel's functions in one source (functions alike up to
their buffers shared), and the launches that run a step, kernel by kernel. Also where a
compiler's complaint is traced back to the graph nodes whose kernel it is about."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ...compiler.fusion import Kernel
from ...compiler.grid import Size
from ...compiler.schedule import Schedule, may_fail
from ...core.errors import GraphError
from ...core.types import format_shape
from . import kernels  # noqa: F401 (registers every op's kernel)
from .loops import render_loop
from .lowering import KernelContext, Launch, Run, lowering_of
from .scalar import helpers
from .source import STATUS, Function, Params, size

PERSISTENT = ("param", "buffer", "state", "const")  # buffer kinds that outlive a step
LOCATION = re.compile(r":(\d+):\d+:")  # file:line:column in a compiler's message
GUARD = f"    if ({STATUS}[0] != 0) return;  // an earlier kernel failed: leave parameters and state alone"


@dataclass
class Step:
    """The launches of one schedule kernel (`index`), in order."""

    index: int
    kernel: Kernel
    launches: list[Launch]


@dataclass
class StepProgram:
    schedule: Schedule
    lanes: int  # work-group size of loops whose work items share one reduction
    steps: list[Step] = field(default_factory=list)  # the schedule's kernels, then the final copies
    source: str = ""
    _names: dict[str, str] = field(default_factory=dict)  # function text (placeholder name) -> name
    _users: dict[str, list[str]] = field(default_factory=dict)  # function name -> what runs it
    _texts: dict[str, str] = field(default_factory=dict)  # function name -> text

    def __post_init__(self):
        schedule = self.schedule
        guarded = any(may_fail(k) for k in schedule.kernels)  # a failed step must not update anything
        for index, kernel in enumerate(schedule.kernels):
            launches = self._launches(kernel)
            for launch in launches:
                if isinstance(launch, Run):
                    self._add(launch, index, kernel, guarded and self._writes_persistent(launch))
            self.steps.append(Step(index, kernel, launches))
        for source, target in schedule.copies:
            run = self._copy(source, target)
            self._add(run, len(self.steps), None, guarded)
            self.steps.append(Step(len(self.steps), Kernel("copy", []), [run]))
        self.source = self._assemble()

    def _launches(self, kernel: Kernel) -> list[Launch]:
        if kernel.kind == "loop":
            rendered = render_loop(kernel, self.schedule, self.lanes)
            return [Run(rendered.function, rendered.work_items, rendered.group_size)]
        node = kernel.nodes[0]
        rule = lowering_of(node.op) if kernel.kind == "op" else None
        if rule is None:  # the backend's check pass refuses these before a program is built
            raise GraphError(f"op '{node.op.name}' ({node.label}) has no OpenCL kernel")
        context = KernelContext(self.schedule)
        rule.kernel(context, node)
        return context.launches

    def _writes_persistent(self, run: Run) -> bool:
        buffers = self.schedule.buffers
        return any(w and buffers[s].kind in PERSISTENT for s, w in zip(run.slots, run.function.params.written))

    def _copy(self, source: int, target: int) -> Run:
        """An update that could not be computed in place, copied into its parameter or state."""
        buffer = self.schedule.buffers[source]
        count = Size.of(buffer.shape)
        params = Params()
        src, dst = params.use(source, buffer.dtype), params.use(target, buffer.dtype, write=True)
        body = [
            "    const long item = get_global_id(0);",
            f"    if (item >= {size(count)}) return;",
            f"    {dst}[item] = {src}[item];",
        ]
        return Run(Function(params, body), count)

    def _add(self, run: Run, index: int, kernel: Kernel | None, guard: bool) -> None:
        """Name the run's function, sharing the name of an identical function added before."""
        if guard:
            run.function.body.insert(0, GUARD)
        text = run.function.text("KERNEL")
        if text not in self._names:
            what = kernel.name if kernel is not None else "copy"
            stem = re.sub(r"\W", "_", f"k{index}_{what}")
            name = stem if stem not in self._texts else f"{stem}_{len(self._texts)}"
            self._names[text] = name
            self._texts[name] = run.function.text(name)
            self._users[name] = []
        run.name = self._names[text]
        self._users[run.name].append(describe(index, kernel))

    def _assemble(self) -> str:
        doubles = any(b.dtype == np.float64 for b in self.schedule.buffers)
        head = ["// drug: one step of a compiled function"]
        if doubles:
            head.append("#pragma OPENCL EXTENSION cl_khr_fp64 : enable")
        head.append(helpers(np.float32) + (helpers(np.float64) if doubles else ""))
        parts = ["\n".join(head)]
        for name, text in self._texts.items():
            comment = "".join(f"// {user}\n" for user in self._users[name])
            parts.append(comment + text)
        return "\n".join(parts)

    def functions_at(self, lines: Sequence[int]) -> list[str]:
        """Names of the functions holding these (1-based) source lines."""
        found: dict[str, None] = {}
        starts = [(self.source.count("\n", 0, self.source.index(t)) + 1, n) for n, t in self._texts.items()]
        for line in lines:
            before = [(start, name) for start, name in starts if start <= line]
            if before:
                found[max(before)[1]] = None
        return list(found)

    def users(self, name: str) -> list[str]:
        return self._users.get(name, [])


def describe(index: int, kernel: Kernel | None) -> str:
    """A schedule kernel and the nodes it computes, for comments and error messages."""
    if kernel is None or not kernel.nodes:
        return f"kernel {index}: copy of an update into its parameter or state"
    nodes = ", ".join(f"{n.label} ('{n.op.name}', {format_shape(n.shape)} {n.dtype})" for n in kernel.nodes[:6])
    more = f" and {len(kernel.nodes) - 6} more" if len(kernel.nodes) > 6 else ""
    over = f" over {format_shape(kernel.domain)}" if kernel.kind == "loop" else ""
    return f"kernel {index}: {kernel.kind}{over} computing {nodes}{more}"


def build_error(program: StepProgram, device: str, log: str) -> GraphError:
    """The compiler's log, with the kernels (and nodes) its errors point at."""
    lines = sorted({int(m.group(1)) for row in log.splitlines() if "error" in row for m in [LOCATION.search(row)] if m})
    names = program.functions_at(lines)
    where = "".join(f"\n  function {n}, run by {'; '.join(program.users(n))}" for n in names)
    return GraphError(
        f"the OpenCL compiler of {device} rejected the step's program{where or ' (no line named)'}; "
        f"nothing was run (DRUG_DEBUG=2 prints the program). Build log:\n{log.strip()}"
    )

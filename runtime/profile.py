"""Kernel profiles of compiled steps: what `CompiledFunction.profile` and DRUG_PROFILE=1 report.

The native backend's profiling build records, for every kernel of a step, its start and end time
(CLOCK_MONOTONIC, in ns) and the pool thread that ran it (backends/llvm/probes.py). This module
turns those spans into a table (kernel, nodes, time, share, GFLOP/s or GB/s) and a Chrome /
Perfetto trace."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..compiler.fusion import Kernel, is_inline, storage
from ..core.node import COMPILER_KINDS, Node, user_name
from ..core.program import Program
from ..core.types import concrete_shape

START, END, THREAD = 0, 1, 2


@dataclass
class KernelProfile:
    """One kernel's share of a step."""

    index: int  # position in the step's schedule
    name: str  # kind and ops, e.g. "loop_add_relu" or "op_matmul"
    nodes: list[str]  # the labels of its nodes
    origin: list[str]  # what the user called to make them: layers, op calls, "gradient of fc1", ...
    seconds: float  # median time per step
    share: float  # of the sum of all kernels' times
    flops: int | None  # floating-point operations per step (GEMMs, convolutions), else None
    bytes: int  # bytes its buffers hold (each read or written once at least)

    @property
    def rate(self) -> str:
        """GFLOP/s for kernels that count operations, else GB/s of the buffers they touch."""
        if self.seconds <= 0:
            return ""
        if self.flops:
            return f"{self.flops / self.seconds / 1e9:.1f} GFLOP/s"
        return f"{self.bytes / self.seconds / 1e9:.1f} GB/s"


@dataclass
class Profile:
    """Per-kernel times of `steps` calls of a compiled function at one batch size (medians over
    the steps, so that a step another process preempted does not distort them).

    `str(profile)` (or `profile.table()`) is the table; `profile.write_trace(path)` writes a
    Chrome / Perfetto trace (open it at ui.perfetto.dev or chrome://tracing)."""

    title: str
    batch: int | None
    steps: int
    kernels: list[KernelProfile]
    step_seconds: float  # median time from the first kernel's start to the last one's end
    call_seconds: float | None = None  # median wall time of a whole call, from Python (profile() only)
    spans: list[np.ndarray] = field(default_factory=list, repr=False)  # per step: (kernels, 3) int64

    @property
    def kernel_seconds(self) -> float:
        """The sum of the kernels' median times (kernels run at once in a group overlap)."""
        return sum(k.seconds for k in self.kernels)

    def table(self, top: int | None = None) -> str:
        """The kernels, slowest first (`top` of them), as a text table."""
        call = f", call {_ms(self.call_seconds)}" if self.call_seconds is not None else ""
        lines = [
            f"{self.title}: batch {self.batch}, medians of {self.steps} steps; native step {_ms(self.step_seconds)}"
            f"{call}, {len(self.kernels)} kernels"
        ]
        rows = sorted(self.kernels, key=lambda k: -k.seconds)[:top]
        header = ("#", "kernel", "made by", "time", "share", "rate")
        cells = [[str(k.index), k.name, _shorten(", ".join(k.origin), 44), _ms(k.seconds), f"{100 * k.share:.1f}%",
                  k.rate] for k in rows]  # fmt: skip
        widths = [max(len(r[c]) for r in [header, *cells]) for c in range(len(header))]
        for row in [header, *cells]:
            lines.append("  ".join(v.rjust(w) if c in (0, 3, 4) else v.ljust(w) for c, (v, w) in
                                   enumerate(zip(row, widths))).rstrip())  # fmt: skip
        if top is not None and len(self.kernels) > top:
            rest = sum(k.seconds for k in sorted(self.kernels, key=lambda k: -k.seconds)[top:])
            lines.append(f"... {len(self.kernels) - top} more kernels, {_ms(rest)} together")
        return "\n".join(lines)

    __str__ = table

    def trace_events(self) -> list[dict]:
        """Chrome trace events ("X": complete events, microseconds), one per kernel per step."""
        events: list[dict] = []
        names = {k.index: k for k in self.kernels}
        if not self.spans:
            return events
        origin = min(int(s[s[:, START] > 0, START].min()) for s in self.spans if (s[:, START] > 0).any())
        for step, spans in enumerate(self.spans):
            for index, (start, end, thread) in enumerate(spans.tolist()):
                if start == 0:
                    continue
                kernel = names.get(index)
                events.append(
                    {
                        "name": kernel.name if kernel else f"kernel {index}",
                        "cat": "kernel",
                        "ph": "X",
                        "ts": (start - origin) / 1000,
                        "dur": (end - start) / 1000,
                        "pid": os.getpid(),
                        "tid": int(thread),
                        "args": {"step": step, "kernel": index, "made by": kernel.origin, "nodes": kernel.nodes}
                        if kernel
                        else {"step": step, "kernel": index},
                    }
                )
        return events

    def write_trace(self, path: str | os.PathLike) -> None:
        """Write the steps as a Chrome / Perfetto trace (JSON): one row per thread, one box per kernel."""
        with open(path, "w") as f:
            json.dump({"traceEvents": self.trace_events(), "displayTimeUnit": "ms"}, f)

    def to_dict(self) -> dict:
        """The profile as plain data (for JSON)."""
        return {
            "title": self.title,
            "batch": self.batch,
            "steps": self.steps,
            "step_s": self.step_seconds,
            "call_s": self.call_seconds,
            "kernels": [
                {
                    "index": k.index,
                    "name": k.name,
                    "nodes": k.nodes,
                    "made_by": k.origin,
                    "s": k.seconds,
                    "share": k.share,
                    "flops": k.flops,
                    "bytes": k.bytes,
                }
                for k in self.kernels
            ],  # fmt: skip
        }


def build_profile(
    title: str, program: Program, spans: list[np.ndarray], batch: int | None, call_seconds: float | None = None
) -> Profile:
    """A profile from the recorded spans of some steps (kernels a step did not reach are 0)."""
    schedule = program.schedule
    kernels = schedule.kernels if schedule is not None else []
    stacked = np.stack(spans) if spans else np.zeros((0, len(kernels), 3), np.int64)
    ran = stacked[:, :, START] > 0
    durations = np.where(ran, stacked[:, :, END] - stacked[:, :, START], 0) / 1e9
    # medians: a step preempted by another process would otherwise inflate every figure
    means = np.median(durations, axis=0) if len(spans) else np.zeros(len(kernels))
    total = float(means.sum()) or 1.0
    transposed = schedule.transposed if schedule is not None else set()
    rows = [
        KernelProfile(
            index=i,
            name=kernel.name,
            nodes=[n.label for n in kernel.nodes],
            origin=list(dict.fromkeys(_origin(n) for n in kernel.nodes)),
            seconds=float(means[i]),
            share=float(means[i]) / total,
            flops=_kernel_flops(kernel, batch or 0),
            bytes=_kernel_bytes(kernel, batch or 0, transposed),
        )
        for i, kernel in enumerate(kernels)
    ]
    step = [
        (int(s[r, END].max()) - int(s[r, START].min())) / 1e9 for s, r in zip(stacked, ran) if r.any()
    ]  # fmt: skip
    return Profile(title, batch, len(spans), rows, float(np.median(step)) if step else 0.0, call_seconds, spans)


def _origin(node: Node) -> str:
    """What made the node, as the user knows it: a layer ("fc1"), a call's output ("loss"), the
    compiler's "gradient of fc1" or "update of fc1/w", else the node's label."""
    call = node.call
    if call is not None and call.kind in COMPILER_KINDS:
        return call.name
    return user_name(node)


def _kernel_flops(kernel: Kernel, batch: int) -> int | None:
    counted = [n.op.flops(concrete_shape(n.shape, batch), *(concrete_shape(i.shape, batch) for i in n.inputs))
               for n in kernel.nodes]  # fmt: skip
    return sum(c for c in counted if c) or None


def _kernel_bytes(kernel: Kernel, batch: int, transposed: set[int]) -> int:
    """Bytes of every buffer the kernel reads from outside or writes (each counted once)."""
    members = {n.id for n in kernel.nodes}
    touched: dict[int, Node] = {}
    for node in kernel.nodes:
        for i in node.inputs:
            if i.id not in members and not is_inline(i):
                source = storage(i, transposed)
                touched.setdefault(source.id, source)
    for node in kernel.outputs:
        touched.setdefault(node.id, node)
    return sum(math.prod(concrete_shape(n.shape, batch)) * n.dtype.itemsize for n in touched.values())


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds * 1e3:.3f} ms" if seconds >= 1e-4 else f"{seconds * 1e6:.1f} us"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."

"""The passes that finish a program for the LLVM backend, after the common pipeline."""

from __future__ import annotations

from ...compiler.epilogues import FuseEpilogues
from ...compiler.fusion import Fuse
from ...compiler.passes import Pass
from ...compiler.schedule import Plan
from ...compiler.simplify import simplify
from . import lowering
from .concurrency import concurrent_kernels


class LLVMTarget:
    """What kernel formation and memory planning learn from this backend's lowering rules."""

    fusible = staticmethod(lowering.fusible)
    has_kernel = staticmethod(lowering.has_kernel)
    workspace = staticmethod(lowering.workspace)


TARGET = LLVMTarget()


def passes(concurrent: bool) -> list[tuple[str, Pass]]:
    """simplify, epilogues, fuse, schedule; `concurrent`: also group independent
    kernels to run at once."""
    tail = [("simplify", simplify), ("epilogues", FuseEpilogues(TARGET)), ("fuse", Fuse(TARGET)),
            ("schedule", Plan(TARGET))]  # fmt: skip
    return tail + ([("concurrency", concurrent_kernels)] if concurrent else [])

"""Finished programs in the compile cache, beside the object code: a request seen before skips
every pass (autodiff, simplification, fusion, scheduling), not only LLVM.

An entry is keyed by the request's text (compiler/portable.py), this backend's pass settings,
the code that compiles (jit.code_version, which covers core, ops, compiler and this backend),
llvmlite and the CPU; it holds the encoded program and is checked against its SHA-256 like the
object code. A missing, damaged or unreadable entry is a miss: the passes run and store it again.
No entry is read or written while a kernel or scalar rule from outside drug is registered (what
fusion decides depends on such rules, whose code no key covers)."""

from __future__ import annotations

import pickle
from pathlib import Path

from ...compiler import portable
from ...compiler.scalar import scalar_rules
from ...core.program import Program
from . import bounds, jit, lowering

SUFFIX = ".program"


def rules_from_outside_drug() -> bool:
    """Whether a kernel or scalar rule registered from outside drug is in effect."""
    functions = [f for rule in lowering.rules() for f in (rule.kernel, rule.workspace, rule.supports)]
    functions += scalar_rules()
    return any(f is not None and not getattr(f, "__module__", "").startswith("drug.") for f in functions)


class ProgramCache:
    """compiler.build.ProgramCache for one compile with this backend's passes."""

    def __init__(self, concurrent: bool):
        self.config = f"llvm|concurrent={concurrent}|bounds={bounds.enabled()}"
        self._path: Path | None = None

    def _entry(self, request: Program) -> Path | None:
        if not jit.cache_enabled() or rules_from_outside_drug():
            return None
        text = portable.request_text(request, self.config)
        return None if text is None else jit.cache_dir() / f"{jit.cache_key('program|' + text)}{SUFFIX}"

    def load(self, request: Program) -> Program | None:
        self._path = self._entry(request)
        if self._path is None:
            return None
        data = jit.read_verified(self._path)
        if data is None:
            return None
        try:
            return portable.decode(data, request)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, EOFError, pickle.UnpicklingError):
            return None  # written by another layout of the same code: compile and store it again

    def store(self, request: Program, finished: Program, mark: int) -> None:
        if self._path is None or self._entry(request) != self._path:  # the build changed the request's graph
            return
        try:
            data = portable.encode(request, finished, mark)
        except portable.NotPortable:
            return
        jit.write_verified(self._path, data)

"""Finished programs in the compile cache, beside the object code: a request seen before skips
every pass (autodiff, simplification, fusion, scheduling), not only LLVM.

An entry is keyed by the request's text (compiler/portable.py), this backend's pass settings,
the code that compiles (jit.code_version, which covers core, ops, compiler and this backend),
llvmlite and the CPU; it holds the encoded program and is checked against its SHA-256 like the
object code. A missing, damaged or unreadable entry is a miss: the passes run and store it again.
What fusion decides depends on the kernel and scalar rules registered; drug's own are in the code
version, and a program in which any node runs by a rule from outside drug (a user's own, whose
code no key covers) is neither stored nor served."""

from __future__ import annotations

import pickle
from pathlib import Path

from ...compiler import portable
from ...core.program import Program
from . import bounds, forked, jit, lowering

SUFFIX = ".program"


class ProgramCache:
    """compiler.build.ProgramCache for one compile with this backend's passes."""

    def __init__(self, concurrent: bool):
        self.config = f"llvm|concurrent={concurrent}|bounds={bounds.enabled()}"
        self._path: Path | None = None

    def _entry(self, request: Program) -> Path | None:
        if not jit.cache_enabled():
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
            program = portable.decode(data, request)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, EOFError, pickle.UnpicklingError):
            return None  # written by another layout of the same code: compile and store it again
        return None if lowering.runs_user_code(program.nodes) else program

    def store(self, request: Program, finished: Program, mark: int) -> None:
        """Stored while the native compile of `finished` runs in its child process (forked.py):
        encoding a long program takes about as long as a few kernels' code generation."""
        forked.meanwhile(lambda: self._store(request, finished, mark))

    def _store(self, request: Program, finished: Program, mark: int) -> None:
        if self._path is None or self._entry(request) != self._path:  # the build changed the request's graph
            return
        if lowering.runs_user_code(finished.nodes):
            return
        try:
            data = portable.encode(request, finished, mark)
        except portable.NotPortable:
            return
        jit.write_verified(self._path, data)

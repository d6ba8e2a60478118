"""The random-number step counter: a compiled function that draws random numbers (it reads the
graph's counter, Graph.random_stream) advances it by one per call, so every call draws fresh
numbers (ops/random.py). The update is in-place like a parameter's: it happens after every kernel
that reads the counter and after every kernel that may fail, so a failed step draws again."""

from __future__ import annotations

from ..core.errors import GraphError
from ..core.program import Program, ancestors
from ..ops.elementwise import add


def advance_random(program: Program) -> Program:
    counter = program.graph.random_counter
    if counter is None or not any(n is counter for n in ancestors(program.roots)):
        return program
    if any(leaf is counter for leaf, _ in program.updates):
        raise GraphError(f"state buffer '{counter.label}' is the random-number counter; only drug advances it")
    return program.with_(updates=program.updates + ((counter, add(counter, 1)),))

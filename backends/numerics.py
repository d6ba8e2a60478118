"""debug_numerics for every backend: find the first node whose value is NaN or Inf and say so
in terms of the user's graph (the node, its call, which of its inputs were already bad)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from ..core.errors import NonFiniteError
from ..core.node import Node
from ..core.program import Program, ancestors

NOTHING_CHANGED = "The step changed nothing (parameters, optimizer state and step count are as before the call)"


def _bad(value: object) -> np.ndarray | None:
    """The mask of non-finite elements of a float array, or None if all are finite (or not float)."""
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        return None
    mask = ~np.isfinite(value)
    return mask if mask.any() else None


def _what(value: np.ndarray, mask: np.ndarray) -> str:
    kinds = [k for k, present in (("NaN", np.isnan(value).any()), ("Inf", np.isinf(value).any())) if present]
    first = tuple(int(i) for i in np.argwhere(mask)[0])
    return f"{' and '.join(kinds)} ({int(mask.sum())} of {value.size} values; the first at index {first})"


def first_non_finite(nodes: Iterable[Node], value_of: Callable[[Node], object]) -> Node | None:
    """The first node (in the order given) that computes something and whose value is not finite."""
    for node in nodes:
        if node.inputs and not node.op.multi_output and _bad(value_of(node)) is not None:
            return node
    return None


def compiler_role(node: Node, program: Program) -> str:
    """For a node the compiler made (no user call made it): what it is part of."""
    if node.call is not None or not node.inputs or any(n is node for n in program.graph.nodes()):
        return ""
    for leaf, new in program.updates:
        if any(n is node for n in ancestors([new])) and not any(n is node for n in ancestors(list(program.grads))):
            return f" (made by the compiler: the optimizer update of '{leaf.label}')"
    if any(n is node for n in ancestors(list(program.grads))):
        return " (made by the compiler: the backward pass)"
    return " (made by the compiler)"


def non_finite_error(
    node: Node, value_of: Callable[[Node], object], program: Program, where: str = ""
) -> NonFiniteError:
    """The error naming `node`, with the state of each of its inputs."""
    value = value_of(node)
    mask = _bad(value)
    assert mask is not None and isinstance(value, np.ndarray)
    bad_inputs = [(i, _bad(value_of(i))) for i in node.inputs]
    if all(bad is None for _, bad in bad_inputs):
        cause = "all its inputs were finite"
    else:
        states = [f"'{i.label}' " + ("finite" if bad is None else _what(value_of(i), bad)) for i, bad in bad_inputs]
        cause = "its inputs: " + ", ".join(states)
    return NonFiniteError(
        f"debug_numerics: node {node.where}{compiler_role(node, program)} produced {_what(value, mask)}{where}; "
        f"{cause}. {NOTHING_CHANGED}",
        node=node.label,
    )

"""`dg.scan`: a loop over the leading axis whose body is a graph, differentiated by a reverse
scan and compiled to one native loop (the body is compiled once, whatever the length).

The scan node has several results; `ScanOutput(k)` nodes pick them out. Results, in order: the
final carries, the stacked per-step outputs `ys`, and the stacked carries each step started
from (the history the reverse scan needs; filled only when something reads it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..core.errors import GraphError, ShapeError
from ..core.graph import Graph
from ..core.leaves import Leaf
from ..core.node import Node, apply, user_call
from ..core.op import Op
from ..core.types import TensorType, format_shape
from ..ops.elementwise import add, mul, zeros_like
from ..ops.multi import Result
from ..ops.reduce import sum as total
from .autodiff import gradients
from .subgraph import Body, extract


class ScanSlot(Leaf):
    """A placeholder the body is traced on; `extract` turns it into a body input."""

    def __repr__(self) -> str:
        return "scan_slot"


class Scan(Op):
    """Inputs: initial carries, stacked xs, captured values. Body inputs are the same, with
    one step of each x; body outputs are the new carries, then this step's ys."""

    name = "scan"
    multi_output = True
    may_fail = True  # its body may (ids out of range), and its scratch allocation may

    def __init__(self, body: Body, n_carry: int, n_x: int, length: int, reverse: bool = False):
        self.body, self.n_carry, self.n_x, self.length, self.reverse = body, n_carry, n_x, length, reverse
        self.n_y = len(body.outputs) - n_carry

    def params(self) -> dict[str, Any]:
        return {"length": self.length, "reverse": self.reverse, "carries": self.n_carry, "xs": self.n_x}

    def key(self) -> tuple:
        return ("Scan", self.body.key, self.n_carry, self.n_x, self.length, self.reverse)

    def output_types(self) -> list[TensorType]:
        carries = [o.type for o in self.body.outputs[: self.n_carry]]
        stacked = [TensorType((self.length, *o.shape), o.dtype) for o in self.body.outputs[self.n_carry :]]
        history = [TensorType((self.length, *t.shape), t.dtype) for t in carries]
        return carries + stacked + history

    def infer(self, *inputs: TensorType) -> TensorType:
        expected = [i.type for i in self.body.inputs]
        for k, (got, want) in enumerate(zip(inputs, expected)):
            if self.n_carry <= k < self.n_carry + self.n_x:
                want = TensorType((self.length, *want.shape), want.dtype)
            if got != want:
                raise ShapeError(f"scan input {k} is {got}, the body expects {want}")
        return TensorType((), np.dtype(np.float32))  # a token: the results are ScanOutput nodes

    def _steps(self) -> range:
        return range(self.length - 1, -1, -1) if self.reverse else range(self.length)

    def ref(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        nc, nx = self.n_carry, self.n_x
        carries, xs, captured = list(inputs[:nc]), inputs[nc : nc + nx], list(inputs[nc + nx :])
        types = self.output_types()
        ys: list[list] = [[None] * self.length for _ in range(self.n_y)]
        history: list[list] = [[None] * self.length for _ in range(nc)]
        for t in self._steps():
            for j, c in enumerate(carries):
                history[j][t] = c
            outs = self.body.run_reference(carries + [x[t] for x in xs] + captured)
            carries = list(outs[:nc])
            for m, y in enumerate(outs[nc:]):
                ys[m][t] = y
        return tuple(carries + [np.stack(seq).astype(t.dtype, copy=False) for seq, t in zip(ys + history, types[nc:])])

    def grad(self, cotangents: list[Node | None], node: Node, *inputs: Node) -> list[Node | None]:
        """A reverse scan whose body recomputes the forward step from the saved carry and
        pulls the cotangents back through it; captured values' gradients are summed in carries."""
        nc, nx, ny = self.n_carry, self.n_x, self.n_y
        inits, xs, captured = inputs[:nc], inputs[nc : nc + nx], inputs[nc + nx :]
        if any(i.dtype.kind != "f" for i in inits):
            raise GraphError("scan: gradients need float carries")
        dx = [i for i, x in enumerate(xs) if x.dtype.kind == "f"]
        dk = [k for k, c in enumerate(captured) if c.dtype.kind == "f"]
        seeded = [m for m in range(ny) if cotangents[nc + m] is not None]

        g = Graph(dtype=self.body.graph.dtype)

        def inputs_like(nodes: Sequence[Node | TensorType], step: bool = False) -> list[Node]:
            out = []
            for n in nodes:
                shape = n.shape[1:] if step else n.shape
                out.append(g.input(f"in{len(g._named)}", shape, str(n.dtype)))
            return out

        g_carry = inputs_like(inits)
        g_acc = inputs_like([captured[k] for k in dk])
        carry = inputs_like(inits)
        x = inputs_like(xs, step=True)
        g_y = inputs_like([self.output_types()[nc + m] for m in seeded], step=True)
        cap = inputs_like(captured)
        outs = self.body.inline(g, carry + x + cap)
        terms = [total(mul(outs[j], g_carry[j])) for j in range(nc)]
        terms += [total(mul(outs[nc + m], gy)) for m, gy in zip(seeded, g_y)]
        pulled = gradients(
            add(*terms) if len(terms) > 1 else terms[0], carry + [x[i] for i in dx] + [cap[k] for k in dk]
        )
        new_carry = pulled[:nc] + [add(a, p) for a, p in zip(g_acc, pulled[nc + len(dx) :])]
        body = Body(g, g_carry + g_acc + carry + x + g_y + cap, new_carry + pulled[nc : nc + len(dx)])

        history = [output(node, nc + ny + j) for j in range(nc)]
        init = [cotangents[j] if cotangents[j] is not None else zeros_like(inits[j]) for j in range(nc)]
        init += [zeros_like(captured[k]) for k in dk]
        stacked = history + list(xs) + [cotangents[nc + m] for m in seeded]
        backward = Scan(body, nc + len(dk), len(stacked), self.length, not self.reverse)
        back = apply(backward, *init, *stacked, *captured)
        grads: list[Node | None] = [output(back, j) for j in range(nc)]
        grads += [output(back, backward.n_carry + dx.index(i)) if i in dx else None for i in range(nx)]
        grads += [output(back, nc + dk.index(k)) if k in dk else None for k in range(len(captured))]
        return grads


class ScanOutput(Result):
    """Result `index` of a scan node."""

    name = "scan_output"


def output(scan: Node, index: int) -> Node:
    return apply(ScanOutput(index, scan.op.output_types()[index]), scan)


def _as_list(value: Any, what: str) -> tuple[list[Node], bool]:
    """Nodes as a list, and whether the user gave a single node (not a tuple/list)."""
    if value is None:
        return [], False
    if isinstance(value, Node):
        return [value], True
    if isinstance(value, (tuple, list)) and all(isinstance(v, Node) for v in value):
        return list(value), False
    raise GraphError(f"scan: {what} must be a node or a tuple of nodes, got {type(value).__name__}")


@user_call()
def scan(fn: Callable, init: Any, xs: Any = None, length: int | None = None, reverse: bool = False):
    """Loop `carry, y = fn(carry, x)` over the leading axis of `xs` (or `length` times), like
    `jax.lax.scan`. `fn` is traced once into a loop body (values it closes over, such as
    parameters, become loop inputs); the native backend compiles the body once and runs it in a
    loop, so code size does not grow with the length. Gradients run a reverse scan.

    Args:
        fn: `fn(carry, x) -> (new carry, y)`; carry, x and y may each be a node or a tuple of
            nodes (y may be None). The new carry keeps the carry's shapes and dtypes.
        init: The initial carry (a node or a tuple of nodes).
        xs: Nodes with a static leading axis to loop over (a node, a tuple, or None).
        length: The number of steps when there are no xs (or a check that they agree).
        reverse: Loop from the last element to the first.

    Returns:
        (final carry, ys): ys stacks every step's y along a new leading axis.

    Raises:
        GraphError: fn does not return a pair, or returns the wrong number of carries.
        ShapeError: A carry changes shape or dtype, xs lack a static leading axis, or lengths disagree.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> xs = g.input("xs", (4, None))            # 4 steps over a batch
        >>> total, running = dg.scan(lambda c, x: (c + x, c + x), xs[0] * 0.0, xs)
        >>> running.eval(xs=np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)).ravel()
        array([ 1.,  3.,  6., 10.], dtype=float32)
    """
    carries, single_carry = _as_list(init, "init")
    xlist, single_x = _as_list(xs, "xs")
    nodes = carries + xlist
    if not nodes:
        raise GraphError("scan needs an initial carry or xs")
    graph = nodes[0].graph
    lengths = {x.shape[0] if x.ndim else None for x in xlist}
    if None in lengths:
        bad = next(x for x in xlist if not x.ndim or x.shape[0] is None)
        raise ShapeError(f"scan: xs {bad.describe()} needs a static leading axis to loop over")
    if length is not None:
        lengths.add(int(length))
    if len(lengths) != 1:
        raise ShapeError(f"scan: xs leading axes and length disagree: {sorted(lengths)}")
    steps = lengths.pop()
    if steps < 1:
        raise ShapeError(f"scan: needs at least one step, got length {steps}")
    slots = [Node(graph, ScanSlot(), (), c.type) for c in carries]
    slots += [Node(graph, ScanSlot(), (), TensorType(x.shape[1:], x.dtype)) for x in xlist]
    carry_in = slots[: len(carries)]
    x_in = slots[len(carries) :]
    x_arg = x_in[0] if single_x else (tuple(x_in) if x_in else None)
    result = fn(carry_in[0] if single_carry else tuple(carry_in), x_arg)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise GraphError("scan: fn(carry, x) must return a pair (new carry, y)")
    new_carries, _ = _as_list(result[0], "the new carry")
    ys, single_y = _as_list(result[1], "y")
    if len(new_carries) != len(carries):
        raise GraphError(f"scan: fn returned {len(new_carries)} carries for {len(carries)}")
    for old, new in zip(carries, new_carries):
        if old.type != new.type:
            raise ShapeError(
                f"scan: the carry {old.describe()} comes back from fn as {new.describe()}; it must keep its "
                f"shape {format_shape(old.shape)} and dtype"
            )
    body, captured = extract(graph, slots, new_carries + ys)
    node = apply(Scan(body, len(carries), len(xlist), steps, reverse), *carries, *xlist, *captured)
    final = [output(node, j) for j in range(len(carries))]
    stacked = [output(node, len(carries) + m) for m in range(len(ys))]
    carry_out = final[0] if single_carry else tuple(final)
    ys_out = stacked[0] if single_y else (tuple(stacked) if stacked else None)
    return carry_out, ys_out

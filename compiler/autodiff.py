"""Reverse-mode autodiff: walk the graph backwards, asking each op for its gradient rule."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.errors import GraphError
from ..core.node import Call, Node, apply, recording, user_call, user_name
from ..core.program import ancestors
from ..ops.elementwise import add, mul, ones_like, zeros_like
from ..ops.reduce import sum as total
from ..ops.shape import Slice, concat, reshape, sum_to


def gradients(y: Node, xs: Sequence[Node], seed: Node | None = None) -> list[Node]:
    """d(sum of y)/dx for each x, as new graph nodes; fan-out contributions are summed."""
    wanted = {x.id for x in xs}
    on_path: set[int] = set()  # nodes between some x and y
    for node in ancestors([y]):
        if node.id in wanted or any(i.id in on_path for i in node.inputs):
            on_path.add(node.id)
    contributions: dict[int, list[Node]] = {y.id: [seed if seed is not None else ones_like(y)]}
    grads: dict[int, Node] = {}
    for node in reversed(ancestors([y])):
        parts = contributions.pop(node.id, None)
        if not parts or node.id not in on_path:
            continue
        if node.op.multi_output:  # parts are (result index, cotangent) pairs
            g = [_sum([gi for k, gi in parts if k == index]) for index in range(len(node.op.output_types()))]
        else:
            g = grads[node.id] = _sum(parts)
        if not node.inputs:
            continue
        with recording(Call(f"gradient of {user_name(node)}", "gradient"), force=True):  # named in profiles, errors
            rule = node.op.grad(g, node, *node.inputs)
            if len(rule) != len(node.inputs):
                raise GraphError(
                    f"op '{node.op.name}' gradient rule returned {len(rule)} gradients for {len(node.inputs)} inputs"
                )
            for x, gx in zip(node.inputs, rule):
                if gx is None or x.id not in on_path:
                    continue
                if x.op.multi_output:
                    gx = (node.op.result_index, gx)  # node picks that result of x
                elif gx.shape != x.shape:
                    gx = sum_to(gx, x.shape)
                contributions.setdefault(x.id, []).append(gx)
    # an x that y does not depend on gets a zero gradient, as in PyTorch's allow_unused + zeros
    return [grads[x.id] if x.id in grads else zeros_like(x) for x in xs]


def _sum(parts: list[Node]) -> Node | None:
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else add(*parts)


@user_call()
def grad(y: Node, xs: Node | Sequence[Node]) -> Node | list[Node]:
    """The gradient of (the sum of) `y` with respect to one node or a list of nodes, as new
    graph nodes you can compile, evaluate or differentiate again.

    Args:
        y: A float node (non-scalars are summed first).
        xs: A node (input, parameter or any intermediate) or a list of them.

    Returns:
        A node shaped like `xs` (a list of them for a list); a node `y` does not depend on gets
            zeros.

    Raises:
        GraphError: An op on the path has no gradient rule.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2))
        >>> dx = dg.grad(dg.sum(x * x), x)
        >>> dx.eval(x=np.array([[1.0, -3.0]], np.float32))
        array([[ 2., -6.]], dtype=float32)
    """
    single = isinstance(xs, Node)
    result = gradients(y, [xs] if single else list(xs))
    return result[0] if single else result


@user_call()
def jacobian(y: Node, x: Node) -> Node:
    """The jacobian of `y` with respect to `x` (reverse mode, one gradient per element of y).

    Args:
        y: A float node; only a leading batch axis may be None.
        x: A node y depends on. When y and x both lead with the batch axis, examples are
            independent and the jacobian is per example.

    Returns:
        A node of shape y.shape + x.shape, or (batch, *y.shape[1:], *x.shape[1:]) per example.

    Raises:
        GraphError: y is batched and x is not, or y has a symbolic axis besides the first.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x = g.input("x", (None, 2))
        >>> jac = dg.jacobian(x * x, x)
        >>> jac.shape
        (None, 2, 2)
        >>> jac.eval(x=np.array([[1.0, 3.0]], np.float32))
        array([[[2., 0.],
                [0., 6.]]], dtype=float32)
    """
    batched = y.ndim > 0 and y.shape[0] is None
    if batched and not (x.ndim > 0 and x.shape[0] is None):
        raise GraphError(
            f"jacobian of batched {y.describe()} w.r.t. unbatched {x.describe()} needs per-example "
            "gradients, which are not supported yet"
        )
    y_shape = y.shape[1:] if batched else y.shape
    x_shape = x.shape[1:] if batched else x.shape
    lead = (None,) if batched else ()
    if None in y_shape:
        raise GraphError(f"jacobian of {y.describe()}: only a leading batch axis may be symbolic")
    rows = []
    for position in np.ndindex(*y_shape):
        index = tuple((0, None, 1) for _ in lead) + tuple(int(i) for i in position)
        element = apply(Slice(index), y) if index else y
        rows.append(reshape(gradients(element, [x])[0], lead + (1,) + x_shape))
    stacked = concat(rows, axis=len(lead)) if len(rows) > 1 else rows[0]
    return reshape(stacked, lead + y_shape + x_shape)


@user_call()
def jvp(y: Node, x: Node, v: Node) -> Node:
    """The Jacobian-vector product J·v: the forward-mode derivative of `y` along `v`. Built by
    transposing the reverse pass: u ↦ Jᵀu is linear in u, so the gradient of <Jᵀu, v> with
    respect to u is J·v; u's value never matters.

    Args:
        y: A float node.
        x: A node y depends on.
        v: The tangent, shaped like x.

    Returns:
        A node shaped like y.

    Raises:
        GraphError: v's shape differs from x's.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x, v = g.input("x", (None, 2)), g.input("v", (None, 2))
        >>> dg.jvp(x * x, x, v).eval(x=np.array([[1.0, 3.0]], np.float32), v=np.ones((1, 2), np.float32))
        array([[2., 6.]], dtype=float32)
    """
    if v.shape != x.shape:
        raise GraphError(f"jvp: tangent {v.describe()} must have the shape of {x.describe()}")
    u = zeros_like(y)  # a stand-in cotangent shaped like y (batch included)
    (vjp,) = gradients(y, [x], seed=u)
    return gradients(total(mul(vjp, v)), [u])[0]


@user_call()
def hessian_vector_product(loss: Node, x: Node, v: Node) -> Node:
    """H·v, the Hessian of a scalar `loss` times `v`: the gradient of <∇loss, v> (reverse over
    reverse), without forming H.

    Args:
        loss: A float scalar node.
        x: A node the loss depends on.
        v: A node shaped like x.

    Returns:
        A node shaped like x.

    Raises:
        GraphError: The loss is not a scalar, or v's shape differs from x's.

    Example:
        >>> import drug as dg, numpy as np
        >>> g = dg.Graph()
        >>> x, v = g.input("x", (3,)), g.input("v", (3,))
        >>> hv = dg.hessian_vector_product(dg.sum(x * x * x), x, v)
        >>> hv.eval(x=np.array([1.0, 2.0, 3.0], np.float32), v=np.ones(3, np.float32))
        array([ 6., 12., 18.], dtype=float32)
    """
    if loss.shape != ():
        raise GraphError(f"hessian_vector_product needs a scalar loss, got {loss.describe()}")
    if v.shape != x.shape:
        raise GraphError(f"hessian_vector_product: {v.describe()} must have the shape of {x.describe()}")
    (g,) = gradients(loss, [x])
    return gradients(total(mul(g, v)), [x])[0]

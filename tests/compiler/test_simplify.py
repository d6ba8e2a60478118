"""The simplification pass (compiler/simplify.py) on its own: identities, constant folding,
common subexpressions, slice gradients assembled into one buffer, dead nodes gone. Each rewrite
must also keep the program's value: the reference backend runs the simplified program."""

from __future__ import annotations

import numpy as np

import drug as dg
from drug.compiler.build import build_program
from drug.compiler.interpret import evaluate
from drug.compiler.simplify import FOLD_LIMIT, STACK_MIN, simplify
from drug.ops.linalg import ContractLeading, MatMul
from drug.ops.shape import AssembleSlices, SliceGrad


def simplified(outputs, **compile_args):
    graph = (outputs[0] if isinstance(outputs, list) else outputs).graph
    before = build_program(graph, outputs=outputs, **compile_args)
    return before, simplify(before)


def op_names(program) -> list[str]:
    return [n.op.name for n in program.nodes if n.inputs]


def same_values(before, after, feeds: dict, batch: int) -> None:
    by_id = {n.id: feeds[n.name] for n in before.nodes if n.op.name == "input"}
    old, new = evaluate(before, by_id, {}, batch), evaluate(after, by_id, {}, batch)
    for a, b in zip(before.outputs, after.outputs):
        np.testing.assert_allclose(new[b.id], old[a.id], rtol=1e-6)


def test_identities_disappear():
    g = dg.Graph()
    x = g.input("x", (None, 3))
    out = -(-((x * 1.0 + 0.0) - 0.0) / 1.0)
    out = dg.transpose(dg.transpose(out, (0, 1)), (0, 1))
    out = dg.reshape(out, (None, 3))
    before, after = simplified(out)
    assert op_names(after) == []  # x itself
    assert after.outputs == (x,)
    same_values(before, after, {"x": np.arange(6.0, dtype=np.float32).reshape(2, 3)}, 2)


def test_small_constants_fold_and_large_ones_stay():
    g = dg.Graph()
    x = g.input("x", (None, 4))
    small = g.constant(np.arange(4.0)) * 2.0 + 1.0
    large = g.constant(np.ones(FOLD_LIMIT + 1)) * 2.0
    before, after = simplified([x * small, dg.sum(large) + dg.sum(x)])
    folded = [n for n in after.nodes if n.op.name == "constant" and n.shape == (4,)]
    assert len(folded) == 1 and folded[0].op.value.tolist() == [1.0, 3.0, 5.0, 7.0]
    assert "mul" in [n.op.name for n in after.nodes if n.inputs and n.shape == (FOLD_LIMIT + 1,)]
    same_values(before, after, {"x": np.ones((2, 4), np.float32)}, 2)


def test_common_subexpressions_merge():
    g = dg.Graph()
    x, y = g.input("x", (None, 3)), g.input("y", (None, 3))
    a, b = dg.tanh(x * y), dg.tanh(x * y)  # the same computation twice
    c = dg.tanh(x * x)  # a different one
    before, after = simplified(a + b + c)
    assert op_names(after).count("tanh") == 2 and op_names(after).count("mul") == 2
    same_values(before, after, {"x": np.ones((2, 3), np.float32), "y": np.full((2, 3), 2.0, np.float32)}, 2)


def test_ops_of_one_factory_never_merge():
    """Two op classes made by one function share a qualified name; they are still two ops."""

    def scale_op(factor: float):
        class Scale(dg.Op):
            name = "test_simplify_scale"
            arity = 1

            def infer(self, x):
                return x

            def ref(self, x):
                return x * factor

        return Scale()

    g = dg.Graph()
    x = g.input("x", (None, 2))
    before, after = simplified([scale_op(2.0)(x), scale_op(3.0)(x)])
    assert op_names(after).count("test_simplify_scale") == 2
    same_values(before, after, {"x": np.ones((1, 2), np.float32)}, 1)


def test_disjoint_slice_gradients_become_one_assembly():
    g = dg.Graph()
    x = g.input("x", (None, 6))
    steps = [x[:, i : i + 2] for i in range(0, 6, 2)]  # an unrolled loop reading x piece by piece
    loss = dg.sum(sum(dg.tanh(s) for s in steps[1:]) * steps[0])
    (grad,) = dg.grad(loss, [x])
    before, after = simplified(grad)
    assemblies = [n for n in after.nodes if isinstance(n.op, AssembleSlices)]
    assert len(assemblies) == 1 and len(assemblies[0].inputs) == 3
    assert not any(isinstance(n.op, SliceGrad) for n in after.nodes)
    same_values(before, after, {"x": np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 6)}, 2)


def rnn_weight_gradient(steps: int, hidden: int = 3):
    """The gradient of a recurrent weight used at `steps` time steps, and the states it multiplies."""
    g = dg.Graph(seed=0)
    x = g.input("x", (None, hidden))
    w = g.parameter("w", (hidden, hidden))
    h, loss = x, 0.0
    for _ in range(steps):
        h = dg.tanh(h @ w)
        loss = loss + dg.sum(h * h)
    (grad,) = dg.grad(loss, [w])
    return grad


def test_a_weights_gradients_from_many_steps_become_one_product():
    before, after = simplified(rnn_weight_gradient(STACK_MIN + 2))
    products = [n for n in after.nodes if isinstance(n.op, ContractLeading)]
    assert len(products) == 1 and products[0].inputs[0].shape == (None, STACK_MIN + 2, 3)
    assert not any(isinstance(n.op, MatMul) and n.inputs[0].op.name == "transpose" for n in after.nodes)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    same_values(before, after, {"x": x}, 4)


def test_products_of_other_shapes_stay_beside_the_stacked_ones():
    g = dg.Graph(seed=0)
    x = g.input("x", (None, 3))
    w = g.parameter("w", (3, 3))
    h, loss = x, 0.0
    for _ in range(STACK_MIN):
        h = dg.tanh(h @ w)
        loss = loss + dg.sum(h)
    fixed = g.constant(np.linspace(-1, 1, 15, dtype=np.float32).reshape(5, 3))
    loss = loss + dg.sum(dg.tanh(fixed @ w))  # one use with five rows, not the batch's
    (grad,) = dg.grad(loss, [w])
    before, after = simplified(grad)
    assert sum(isinstance(n.op, ContractLeading) for n in after.nodes) == 1
    assert any(isinstance(n.op, MatMul) and n.inputs[0].shape == (3, 5) for n in after.nodes)
    same_values(before, after, {"x": np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)}, 4)


def test_a_few_products_stay_as_they_are():
    before, after = simplified(rnn_weight_gradient(STACK_MIN - 1))
    assert not any(isinstance(n.op, ContractLeading) for n in after.nodes)
    assert op_names(after).count("matmul") == op_names(before).count("matmul")


def test_dead_nodes_are_dropped_and_updates_remapped():
    g = dg.Graph()
    x = g.input("x", (None, 3))
    w = g.parameter("w", (3, 2))
    _unused = dg.exp(x)  # built, never read
    loss = dg.mean((x @ w) * 1.0)
    program = build_program(g, loss=loss, optimizer=dg.SGD(0.5))
    after = simplify(program)
    assert "exp" not in op_names(after)
    nodes = {n.id for n in after.nodes}
    assert all(new.id in nodes for _, new in after.updates)
    assert any(n is after.loss for n in after.nodes) and after.loss is after.outputs[0]

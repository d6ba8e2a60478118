"""Kernel formation (compiler/fusion.py) on its own: which nodes share a loop, the convexity rule,
reductions ending loops, what the target says it can fuse, aliases, folded transposes and inlined
scalars. The target here is a test double: fusion must take its answers, whatever they are."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

import drug as dg
from drug.compiler.build import build_program
from drug.compiler.fusion import Fuse, form_kernels, storage
from drug.compiler.scalar import scalar_rule_of
from drug.ops.linalg import MatMul


@dataclass
class Target:
    """Fuses what has a scalar rule except the op names in `not_fusible`; kernels for `kernels`."""

    not_fusible: set[str] = field(default_factory=set)
    kernels: set[str] = field(default_factory=lambda: {"matmul", "softmax"})

    def fusible(self, node):
        return scalar_rule_of(node.op) is not None and node.op.name not in self.not_fusible

    def has_kernel(self, node):
        return node.op.name in self.kernels

    def workspace(self, node):
        return None


def kernels_of(outputs, target=None, **compile_args):
    graph = (outputs[0] if isinstance(outputs, list) else outputs).graph
    program = build_program(graph, outputs=outputs, **compile_args)
    return program, form_kernels(program, target or Target())


def members(kernel) -> list[str]:
    return [n.op.name for n in kernel.nodes]


def test_a_chain_of_elementwise_ops_is_one_loop():
    g = dg.Graph()
    x, y = g.input("x", (None, 8)), g.input("y", (None, 8))
    out = dg.tanh(x * y + 1.0) - dg.exp(y)
    _, kernels = kernels_of(out)
    assert len(kernels) == 1
    (loop,) = kernels
    assert loop.kind == "loop" and loop.domain == (None, 8)
    assert sorted(members(loop)) == ["add", "exp", "mul", "sub", "tanh"]
    assert loop.outputs == [out]  # only the result leaves the loop
    assert all(n.op.name != "constant" for n in loop.nodes)  # the scalar 1.0 is inlined, not a member


def test_the_target_decides_what_fuses():
    g = dg.Graph()
    x = g.input("x", (None, 8))
    out = dg.exp(dg.tanh(x * 2.0) + 1.0)
    _, kernels = kernels_of(out, Target(not_fusible={"tanh"}))
    kinds = [(k.kind, members(k)) for k in kernels]
    assert kinds == [("loop", ["mul"]), ("callback", ["tanh"]), ("loop", ["add", "exp"])]
    _, kernels = kernels_of(out, Target(not_fusible={"tanh"}, kernels={"tanh"}))
    assert [k.kind for k in kernels] == ["loop", "op", "loop"]


def test_a_reduction_ends_a_loop_and_its_readers_start_another():
    g = dg.Graph()
    x = g.input("x", (None, 8))
    e = dg.exp(x)
    total = dg.sum(e, axis=1)  # exp and the sum: one loop over (None, 8)
    out = dg.log(total) * 3.0  # over (None,): a loop of its own
    _, kernels = kernels_of(out)
    assert [(k.domain, members(k)) for k in kernels] == [((None, 8), ["exp", "sum"]), ((None,), ["log", "mul"])]
    # a reader over the reduction's own input domain cannot join it either (it needs the finished sum)
    normalized = e / dg.reshape(total, (None, 1))
    _, kernels = kernels_of(normalized)
    assert [(k.domain, members(k)) for k in kernels] == [((None, 8), ["exp", "sum"]), ((None, 8), ["div"])]
    assert kernels[0].outputs == [e, total]


def test_loops_over_different_domains_stay_apart():
    g = dg.Graph()
    x, b = g.input("x", (None, 8)), g.input("b", (8,))
    out = x * dg.exp(b)  # exp runs over (8,), the product over (None, 8)
    _, kernels = kernels_of(out)
    assert [(k.domain, members(k)) for k in kernels] == [((8,), ["exp"]), ((None, 8), ["mul"])]


def test_merging_keeps_every_kernel_convex():
    """a -> softmax (a kernel) -> c and a -> c: merging a into c would put the softmax kernel both
    before and after the merged loop, so they stay apart."""
    g = dg.Graph()
    x = g.input("x", (None, 8))
    a = dg.exp(x)
    c = a * dg.softmax(a)
    _, kernels = kernels_of(c)
    assert [(k.kind, members(k)) for k in kernels] == [("loop", ["exp"]), ("op", ["softmax"]), ("loop", ["mul"])]
    assert kernels[0].outputs == [a]  # read by two kernels


def test_reshapes_are_aliases_and_transposes_fold_into_gemms():
    g = dg.Graph()
    x, w = g.input("x", (None, 4, 2)), g.input("w", (3, 8))
    flat = dg.reshape(x, (None, 8))
    out = flat @ w.T  # the transpose is a GEMM flag
    program, kernels = kernels_of(out)
    assert [members(k) for k in kernels] == [["matmul"]]
    (gemm,) = kernels[0].nodes
    assert isinstance(gemm.op, MatMul)
    a, b = gemm.inputs
    transposed = {n.id for n in program.nodes if n.op.name == "transpose"}
    assert storage(a, transposed).name == "x" and storage(b, transposed).name == "w"


def test_a_returned_transpose_is_computed():
    g = dg.Graph()
    w = g.input("w", (3, 8))
    _, kernels = kernels_of([w.T], Target(kernels={"transpose"}))
    assert [(k.kind, members(k)) for k in kernels] == [("op", ["transpose"])]


def test_results_of_a_multi_output_op_join_its_kernel():
    g = dg.Graph()
    xs = g.input("xs", (5, None, 3))
    h0 = g.input("h0", (None, 3))
    final, ys = dg.scan(lambda h, x: (dg.tanh(h + x),) * 2, h0, xs)
    _, kernels = kernels_of([final, ys], Target(kernels={"scan"}))
    scan_kernels = [k for k in kernels if "scan" in members(k)]
    assert len(scan_kernels) == 1
    assert sorted(members(scan_kernels[0])) == ["scan", "scan_output", "scan_output"]


def test_the_pass_records_its_partition_on_the_program():
    g = dg.Graph()
    x = g.input("x", (None, 8))
    program = build_program(g, outputs=dg.relu(x) + 1.0)
    assert program.kernels == ()
    fused = Fuse(Target())(program)
    assert len(fused.kernels) == 1 and fused.nodes == program.nodes  # a new program; nodes untouched


@pytest.mark.parametrize("optimizer", [dg.SGD(0.1), dg.Adam(1e-3)])
def test_each_parameter_update_is_one_loop(optimizer):
    g = dg.Graph()
    x = g.input("x", (None, 4))
    w = g.parameter("w", (4, 3))
    loss = dg.mean(dg.relu(x @ w))
    program = build_program(g, loss=loss, optimizer=optimizer)
    kernels = form_kernels(program, Target())
    new_w = dict((leaf.id, new) for leaf, new in program.updates)[w.id]
    owners = [k for k in kernels if any(n is new_w for n in k.nodes)]
    assert len(owners) == 1 and owners[0].kind == "loop" and owners[0].domain == (4, 3)

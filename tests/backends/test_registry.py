"""A third backend, defined here in the tests: it registers itself and compiles graphs through the
same registry, pipeline, fusion and memory plan as the LLVM backend, touching no op file. It runs
each planned kernel's nodes with their NumPy references on buffers placed as the schedule says,
so it checks the plan too (in-place updates, copies, aliases)."""

from __future__ import annotations

import numpy as np
import pytest

import drug as dg
from drug.backends import Backend, Executor, available, get_backend, register
from drug.compiler.fusion import Fuse
from drug.compiler.scalar import scalar_rule_of
from drug.compiler.schedule import Plan
from drug.compiler.simplify import simplify
from drug.core.types import concrete_shape


class EveryKernelTarget:
    """Fuses what has a scalar rule; every other op is a 'kernel' (run by its reference)."""

    def fusible(self, node):
        return scalar_rule_of(node.op) is not None

    def has_kernel(self, node):
        return True

    def workspace(self, node):
        return None


class PlannedExecutor(Executor):
    """Kernels in schedule order; one array per buffer slot, as the schedule assigns them."""

    def __init__(self, program, state):
        self.program, self.state = program, state
        self.schedule = program.schedule
        self.kernels_run = 0

    def run(self, feeds, batch, out=None):
        s, graph = self.schedule, self.program.graph
        slots: dict[int, np.ndarray] = {}
        for b in s.buffers:
            if b.kind == "input":
                continue
            if b.kind == "temp":
                slots[b.slot] = np.zeros(concrete_shape(b.shape, batch or 0), b.dtype)
            else:
                live = {"param": graph.params, "buffer": graph.state, "state": self.state}.get(b.kind)
                slots[b.slot] = live[b.key] if live is not None else np.asarray(b.key)
        for node in self.program.nodes:
            if node.op.name == "input":
                slots[s.slot(node)] = feeds[node.id]

        def value(node):
            array = slots[s.slot(node)]
            return array.T if node.id in s.transposed else array.reshape(concrete_shape(node.shape, batch or 0))

        for kernel in s.kernels:
            results = {}
            for node in kernel.nodes:
                inputs = [results[i.id] if i.id in results else value(i) for i in node.inputs]
                results[node.id] = np.asarray(node.op.ref(*inputs))
            for node in kernel.outputs:
                target = slots[s.slot(node)]
                np.copyto(target, results[node.id].reshape(target.shape))
            self.kernels_run += 1
        for source, target in s.copies:
            np.copyto(slots[target], slots[source])
        return [value(o).copy() for o in self.program.outputs]


class PlannedBackend(Backend):
    name = "test-planned"

    def passes(self):
        target = EveryKernelTarget()
        return [("simplify", simplify), ("fuse", Fuse(target)), ("schedule", Plan(target))]

    def executor(self, program, state):
        return PlannedExecutor(program, state)


register(PlannedBackend())


def _mlp(seed: int):
    g = dg.Graph(seed=seed, dtype="float64")
    x, y = g.input("x", (None, 6)), g.input("y", (None,), dtype="int32")
    w1, b1 = g.parameter("w1", (6, 5)), g.parameter("b1", (5,), init="zeros")
    w2 = g.parameter("w2", (5, 3))
    logits = dg.tanh(x @ w1 + b1) @ w2
    return g, logits, dg.softmax_cross_entropy(logits, y)


def test_the_registry_lists_and_finds_backends():
    assert {"numpy", "llvm", "test-planned"} <= set(available())
    assert isinstance(get_backend("test-planned"), PlannedBackend)
    with pytest.raises(dg.GraphError, match="unknown backend 'nope'.*test-planned"):
        get_backend("nope")


def test_a_backend_registered_outside_drug_trains_like_the_reference():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 6)), rng.integers(0, 3, 8).astype(np.int32)
    runs = {}
    for backend in ("numpy", "test-planned"):
        g, logits, loss = _mlp(seed=3)
        train = g.compile(loss=loss, optimizer=dg.Adam(0.05), backend=backend)
        predict = g.compile(outputs=logits, backend=backend)
        losses = [train(x=x, y=y) for _ in range(4)]
        runs[backend] = (losses, predict(x=x), {k: v.copy() for k, v in g.params.items()})
        if backend == "test-planned":
            assert train.backend == "test-planned" and train._executor.kernels_run > 0
            assert train.kernel_count == len(train.program.schedule.kernels) > 0
    (ref_losses, ref_out, ref_params), (losses, out, params) = runs["numpy"], runs["test-planned"]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-10)
    np.testing.assert_allclose(out, ref_out, rtol=1e-10)
    for name in ref_params:
        np.testing.assert_allclose(params[name], ref_params[name], rtol=1e-10)


def test_the_new_backend_has_no_llvm_ir():
    g, logits, _ = _mlp(seed=0)
    predict = g.compile(outputs=logits, backend="test-planned")
    with pytest.raises(dg.GraphError, match="no LLVM IR"):
        predict.ir()

"""Independent kernels run at once (the default; backends/llvm/concurrency.py): the
groups never hold two kernels that touch a buffer one of them writes, the arena never lets two
kernels of a group share memory, results equal the one-by-one run, and a failure inside a group
stops the step as it would serially (the right node named, no parameter changed)."""

from __future__ import annotations

import numpy as np
import pytest
from graph_fuzz import build, check, size, specs
from hypothesis import HealthCheck, assume, given, settings

import drug as dg
from drug.backends.llvm import arena, bounds, codegen, pipeline
from drug.backends.llvm.concurrency import find_groups, kernel_access, runs_alone
from drug.compiler.build import build_program
from drug.compiler.schedule import may_fail

pytestmark = pytest.mark.skipif(bounds.enabled(), reason="DRUG_BOUNDS_CHECK=1 runs kernels one by one")


@pytest.fixture(autouse=True)
def at_once(monkeypatch, tmp_path_factory):
    """Every group runs on the threads, however small its kernels."""
    monkeypatch.setenv("DRUG_CONCURRENT_KERNELS", "1")  # the default, unless the environment says 0
    monkeypatch.setenv("DRUG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "concurrency-cache"))
    monkeypatch.setattr(codegen, "GROUP_MIN_WORK", 0)


def assert_groups_are_safe(schedule, batch: int = 7) -> int:
    """The grouping rules and the arena's separation; returns how many groups have several kernels."""
    groups = schedule.groups
    assert [k for start, end in groups for k in range(start, end)] == list(range(len(schedule.kernels)))
    offsets, _ = arena.pack(schedule.buffers, batch)
    several = 0
    for start, end in groups:
        kernels = schedule.kernels[start:end]
        if len(kernels) == 1:
            continue
        several += 1
        assert not any(runs_alone(k) for k in kernels)
        access = [kernel_access(schedule, k) for k in kernels]
        for i, (reads, writes) in enumerate(access):
            for other_reads, other_writes in access[i + 1 :]:
                assert not writes & (other_reads | other_writes) and not reads & other_writes
        updates = any(schedule.buffers[s].kind in ("param", "buffer", "state") for _, w in access for s in w)
        assert not (updates and any(may_fail(k) for k in kernels))
        touched = {s for reads, writes in access for s in reads | writes if s in offsets}
        spans = sorted((offsets[s], offsets[s] + schedule.buffers[s].nbytes(batch)) for s in touched)
        for (_, end_a), (start_b, _) in zip(spans, spans[1:]):
            assert end_a <= start_b, "two buffers of one group share arena memory"
    return several


def _branches(g: dg.Graph):
    a, b, c, d = (g.input(n, (None, 64)) for n in "abcd")
    return [dg.sum(dg.tanh(a) * b, axis=1), dg.max(c * d, axis=1), dg.softmax(a - d), dg.mean(dg.exp(c), axis=0)]


def test_independent_reductions_run_at_once_and_agree(monkeypatch):
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((33, 64)).astype(np.float32) for n in "abcd"}
    fn = _branches_compiled()
    schedule = fn._executor.program.schedule
    assert assert_groups_are_safe(schedule) >= 1
    ir = fn.ir()
    assert 'define internal void @"drug_step.run.group"' in ir and "drug_pool_run" in ir
    monkeypatch.setenv("DRUG_CONCURRENT_KERNELS", "0")
    serial = _branches_compiled()
    assert serial._executor.program.schedule.groups is None
    for _ in range(20):  # repeated: a race would show as an occasional difference
        for x, y in zip(fn(**feeds), serial(**feeds)):
            np.testing.assert_array_equal(x, y)


def _branches_compiled():
    g = dg.Graph()
    return g.compile(outputs=_branches(g), backend="llvm")


# ~1 s of CPU per graph; the groups are checked on the compiled schedule, results against numpy
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(specs())
def test_random_graphs_group_safely_and_agree_with_the_reference(spec):
    assume(size(spec) <= 4096)
    built = build(spec)
    optimizer = dg.Adam(0.01) if spec.train else None
    try:
        fn = built.graph.compile(loss=built.loss, outputs=built.values[-3:], optimizer=optimizer, backend="llvm")
    except (dg.GraphError, dg.ShapeError):
        return  # refused alike by both backends: check() below compares that
    assert_groups_are_safe(fn._executor.program.schedule, spec.batch)
    check(spec)


def test_failure_inside_a_group_names_the_node_and_changes_nothing():
    g = dg.Graph(seed=1)
    ids_a, ids_b = g.input("ids_a", (None,), dtype="int32"), g.input("ids_b", (None,), dtype="int32")
    a = dg.layers.Embedding(10, 8, name="emb_a")(ids_a)
    b = dg.layers.Embedding(12, 8, name="emb_b")(ids_b)
    loss = dg.mean(dg.tanh(a) * dg.sigmoid(b))
    step = g.compile(loss=loss, optimizer=dg.Adam(0.1), backend="llvm")
    schedule = step._executor.program.schedule
    assert assert_groups_are_safe(schedule) >= 1
    gathers = [i for i, k in enumerate(schedule.kernels) if k.nodes[0].op.name == "embedding"]
    assert any(start <= gathers[0] and gathers[1] < end for start, end in schedule.groups)  # side by side
    before = {k: v.copy() for k, v in g.params.items()}
    good = np.array([1, 2, 3], np.int32)
    with pytest.raises(dg.GraphError, match="out of range") as error:
        step(ids_a=good, ids_b=np.array([1, 12, 3], np.int32))
    assert b.label in str(error.value) and "12 out of range [0, 12)" in str(error.value)
    for key, value in before.items():
        np.testing.assert_array_equal(g.params[key], value)
    step(ids_a=good, ids_b=good)  # the step still works afterwards
    assert any(not np.array_equal(g.params[k], before[k]) for k in before)


# ---- the grouping rules on their own (find_groups on small schedules) ----


def _groups_of(outputs, **compile_args):
    """The schedule's kernels as op-name lists, grouped as find_groups groups them."""
    graph = outputs[0].graph
    program = build_program(graph, outputs=outputs, tail=pipeline.passes(concurrent=False), **compile_args)
    schedule = program.schedule
    names = [[n.op.name for n in k.nodes] for k in schedule.kernels]
    return [names[start:end] for start, end in find_groups(schedule)], schedule


def test_independent_kernels_share_a_group_and_dependent_ones_do_not():
    g = dg.Graph()
    x, y = g.input("x", (None, 8)), g.input("y", (None, 8))
    a, b = dg.sum(dg.exp(x), axis=1), dg.max(y * 2.0, axis=1)  # independent reductions
    groups, _ = _groups_of([a, b])
    assert groups == [[["exp", "sum"], ["mul", "max"]]]
    c = dg.sum(dg.softmax(x), axis=1)  # a softmax kernel, then a reduction reading it
    groups, _ = _groups_of([c])
    assert [len(group) for group in groups] == [1, 1]


def test_gemms_and_callbacks_run_alone():
    class Plus(dg.Op):  # no native kernel: a Python callback
        name = "test_concurrency_plus"
        arity = 1

        def infer(self, x):
            return x

        def ref(self, x):
            return x + 1.0

    g = dg.Graph()
    x, w = g.input("x", (None, 8)), g.input("w", (8, 8))
    groups, _ = _groups_of([x @ w, Plus()(x), dg.sum(dg.exp(x), axis=1), dg.max(x, axis=1)])
    assert groups == [[["matmul"]], [["test_concurrency_plus"]], [["exp", "sum"], ["max"]]]


def test_a_kernel_that_may_fail_never_shares_a_group_with_an_update():
    g = dg.Graph()
    ids, y = g.input("ids", (None,), dtype="int32"), g.input("y", (None,), dtype="int32")
    table, w = g.parameter("table", (10, 4)), g.parameter("w", (4, 10))
    loss = dg.softmax_cross_entropy(dg.embedding(ids, table) @ w, y)
    _, schedule = _groups_of([loss], loss=loss, optimizer=dg.SGD(0.1))
    for start, end in find_groups(schedule):
        kernels = schedule.kernels[start:end]
        writes = {s for k in kernels for s in kernel_access(schedule, k)[1]}
        updates = any(schedule.buffers[s].kind in ("param", "buffer", "state") for s in writes)
        assert not (updates and any(may_fail(k) for k in kernels))

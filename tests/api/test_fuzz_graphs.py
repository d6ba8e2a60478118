"""Differential fuzzing: random graphs of up to 30 ops (broadcasting, reductions, matmul, conv,
pooling, slicing, concat, softmax, cross-entropy, embedding) give the same outputs, gradients and
train steps with backend="llvm" as with the NumPy reference, or the same dg error
(tests/graph_fuzz.py builds and compares them). Every failing graph the fuzzer found is kept
below as an explicit regression test."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from graph_fuzz import Spec, check, outcome, size, specs
from hypothesis import HealthCheck, assume, given, settings

import drug as dg


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path_factory):
    """Random graphs overflow and divide by zero in both backends alike; their machine code would
    only fill the user's compile cache."""
    monkeypatch.setenv("DRUG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "fuzz-cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# ~1 s of CPU per graph (two compilations of ~15 ops on average); tests/fuzz_campaign.py runs thousands
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(specs())
def test_random_graphs_agree_with_the_reference(spec):
    assume(size(spec) <= 4096)
    check(spec)


# ---- regressions: graphs the fuzzer found, reduced by hand or by hypothesis ----


def test_negative_step_slice_through_element_zero():
    """x[:, ::-1]: slice.indices() gives stop -1, which NumPy read as 'the last element', so the
    reference produced an empty slice (GraphError) while the native kernel was right."""
    check(Spec([(None,)], [], [("unary", (0,) * 5), ("embedding", (0,) * 5), ("slice", (5, 0, 3, 0, 0))], 1, 0, 0))
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 4))
    outs = [x[:, ::-1], x[:, 2::-2], dg.grad(dg.sum(x[:, ::-1] * x), [x])[0]]  # d/dx: 2 x[:, ::-1]
    xv = np.arange(8.0).reshape(2, 4)
    for backend in ("numpy", "llvm"):
        got = g.compile(outputs=outs, backend=backend)(x=xv)
        np.testing.assert_array_equal(got[0], xv[:, ::-1])
        np.testing.assert_array_equal(got[1], xv[:, 2::-2])
        np.testing.assert_array_equal(got[2], 2 * xv[:, ::-1])


def test_outputs_sharing_one_buffer():
    """Found by the campaign: div#14 repeats div#6 (common subexpressions merge them) and a reshape
    of div#6 is an output too, so three outputs share one buffer. The native runtime pointed that
    buffer at the first output's array and handed the same array to the others, then refused it as
    the wrong shape (ShapeError) where the reference returned the values."""
    step = ("binary", (15379, 7903, 12865, 7142, 18977))
    steps = [step, ("embedding", (477, 9550, 850, 58, 2164)), ("reshape", (313, 589, 2607, 38420, 21)), step]
    check(Spec([(None,)], [(4, 3, 3), (2, 1, 2, 4)], steps, 2, 467, 0))
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 3))
    y = dg.tanh(x)
    fn = g.compile(outputs=[dg.reshape(y, (None, 3, 1)), dg.tanh(x), y, dg.transpose(y)], backend="llvm")
    column, again, y_value, transposed = fn(x=np.arange(6.0).reshape(2, 3))
    for got in (column[:, :, 0], again, transposed.T):  # one buffer: exactly the same values
        np.testing.assert_array_equal(got, y_value)
    np.testing.assert_allclose(y_value, np.tanh(np.arange(6.0).reshape(2, 3)), rtol=1e-15)  # polynomial tanh


def test_broadcast_batched_matmul_runs_through_the_callback():
    """Found by the campaign: (None, 1) @ (3, 1, 2) broadcasts the leading dimensions, which the
    GEMM kernel does not handle; fusion still chose it and code generation raised
    NotImplementedError. MatMul.kernel_supports now sends such products to the callback."""
    steps = [("conv", (3605, 895, 1, 38, 65536)), ("binary", (53716, 157, 1, 65535, 1362))]
    steps += [("matmul", (241, 8031, 108, 3582, 0)), ("reduce", (511, 1253, 227, 173, 251))]
    for train in (0, 1):
        check(Spec([(None, 1, 3), (None, 1)], [(3, 4, 4, 1), (3, 1, 2)], steps, 2, 292, train))
    g = dg.Graph(dtype="float64")
    a, b = g.input("a", (2, None, 4)), g.input("b", (4, 3))
    c = g.input("c", (3, 1, 4, 2))
    fn = g.compile(outputs=[a @ b, a @ c], backend="llvm")
    kinds = {n.shape: k.kind for k in fn.program.schedule.kernels for n in k.nodes if n.op.name == "matmul"}
    assert kinds == {(2, None, 3): "op", (3, 2, None, 2): "callback"}
    av, bv, cv = np.ones((2, 5, 4)), np.arange(12.0).reshape(4, 3), np.arange(24.0).reshape(3, 1, 4, 2)
    got = fn(a=av, b=bv, c=cv)
    np.testing.assert_array_equal(got[0], av @ bv)
    np.testing.assert_array_equal(got[1], av @ cv)


@pytest.mark.parametrize("train", [0, 2])
@pytest.mark.parametrize("kind", ["cross_entropy", "embedding"])
def test_both_backends_refuse_an_id_out_of_range(kind, train):
    """The generator feeds an id out of range in one spec of eleven; both backends must raise
    ShapeError (the same error), never read outside the table."""
    spec = Spec([(None, 3)], [(3, 4)], [("matmul", (0, 2, 0, 0, 0)), (kind, (1, 1, 2, 1, 10))], 3, 5, train)
    reference = outcome(spec, "numpy")
    assert reference == ("error", "ShapeError")
    assert outcome(spec, "llvm") == reference


def test_a_second_batch_dimension_is_refused_when_built():
    """Found by the campaign: (None, 1) * (None, 1, 4) broadcast to (None, None, 4), the batch
    twice (every example paired with every other). Reshapes and means assume one batch axis: the
    reference then failed with a bare NumPy ValueError and the native reshape silently read the
    wrong elements. Such results are now refused where they are built."""
    steps = [("slice", (161, 1097, 7704, 735, 0)), ("nary", (198, 1360, 1526, 36404, 392))]
    steps += [("cross_entropy", (45535, 285, 388, 624, 146)), ("reshape", (54836, 8883, 1186, 788, 2960))]
    steps += [("matmul", (2226, 474, 1408, 820, 6)), ("softmax", (27161, 65536, 1605, 1467, 48696))]
    check(Spec([(None, 1), (None, 1, 4, 2)], [], steps, 3, 137, 1))
    g = dg.Graph()
    a, b = g.input("a", (None, 1)), g.input("b", (None, 1, 4))
    with pytest.raises(dg.ShapeError, match=r"'mul'.*result \(None, None, 4\) would have the batch dimension twice"):
        a * b
    with pytest.raises(dg.ShapeError, match="batch dimension twice"):
        g.input("c", (None, 4)) @ g.input("d", (None, 4, 3))

"""Constant weights packed for the sgemm when a program is built (backends/llvm/prepack.py):
which constants are packed, and that programs reading them agree with the NumPy backend for
every shape the GEMM can take (batch of one, tiles of a few rows, shared-out blocks by rows and
by columns, edges of panels), transposed or not, with the bias and relu epilogue."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import drug as dg
from drug.backends.llvm import gemm, prepack

RNG = np.random.default_rng(0)


def _predictor(weights: np.ndarray, transposed: bool = False, bias: bool = False, extra=None, reference=False):
    """relu(x @ W (+ b)) with W a constant (read transposed when `transposed`), compiled with
    backend="llvm" (and "numpy" when `reference`); `extra(g, w, out)` may add readers of W and
    returns the outputs."""
    g = dg.Graph(seed=0)
    depth = weights.shape[1] if transposed else weights.shape[0]
    x = g.input("x", (None, depth))
    w = g.constant(weights)
    out = x @ (dg.transpose(w) if transposed else w)
    if bias:
        out = dg.relu(out + g.constant(np.linspace(-1, 1, out.shape[-1], dtype=np.float32)))
    outputs = extra(g, w, out) if extra is not None else out
    fn = g.compile(outputs=outputs, backend="llvm")
    return (fn, g.compile(outputs=outputs, backend="numpy")) if reference else (fn, w)


def _packed(fn) -> dict[int, tuple[tuple[int, ...], bool]]:
    return fn._executor._prepacked


def test_a_constant_only_gemms_read_is_packed_once_per_layout():
    weights = RNG.standard_normal((40, 24)).astype(np.float32)
    fn, w = _predictor(weights)
    slot = fn._executor.schedule.buffer_of[w.id]
    assert _packed(fn) == {slot: ((40, 24), False)}
    held, panel = fn._executor.persistent[slot], gemm.prepacked_panel()
    assert held.shape == (-(-24 // panel), 40, panel) and not held.flags.writeable
    np.testing.assert_array_equal(held, prepack.pack(weights, False, panel))
    first = min(24, panel)
    np.testing.assert_array_equal(held[0, :, :first], weights[:, :first])  # panel 0: every step's first columns
    transposed, _ = _predictor(weights.T.copy(), transposed=True)
    assert list(_packed(transposed).values()) == [((24, 40), True)]


@pytest.mark.parametrize(
    "extra",
    [
        lambda g, w, out: [out, dg.relu(w)],  # a fused loop reads it too
        lambda g, w, out: [out, w],  # an output
        lambda g, w, out: [out, g.input("z", (None, 24)) @ dg.transpose(w)],  # read both ways
    ],
    ids=["loop", "output", "both-ways"],
)
def test_constants_read_otherwise_stay_as_they_are(extra):
    weights = RNG.standard_normal((40, 24)).astype(np.float32)
    fn, reference = _predictor(weights, extra=extra, reference=True)
    assert _packed(fn) == {}
    feeds = {"x": RNG.standard_normal((3, 40)).astype(np.float32)}
    if any(n.name == "z" for n in fn.program.graph.nodes()):
        feeds["z"] = RNG.standard_normal((3, 24)).astype(np.float32)
    for got, want in zip(fn(**feeds), reference(**feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_parameters_float64_and_the_blas_are_never_packed(monkeypatch):
    g = dg.Graph(seed=0)
    x = g.input("x", (None, 8))
    assert _packed(g.compile(outputs=x @ g.parameter("w", (8, 4)))) == {}
    g64 = dg.Graph(seed=0, dtype="float64")
    x64 = g64.input("x", (None, 8))
    assert _packed(g64.compile(outputs=x64 @ g64.constant(np.ones((8, 4))))) == {}
    monkeypatch.setenv(gemm.ENV, "blas")
    assert _packed(_predictor(np.ones((8, 4), np.float32))[0]) == {}


@settings(max_examples=30, deadline=None)
@given(
    batch=st.sampled_from([1, 2, 3, 4, 5, 9, 64, 130, 700]),
    depth=st.one_of(st.sampled_from([1, 7, 256, 300, 784]), st.integers(1, 80)),
    columns=st.one_of(st.sampled_from([1, 10, 16, 31, 32, 33, 100, 512]), st.integers(1, 140)),
    transposed=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_programs_reading_packed_constants_agree_with_numpy(batch, depth, columns, transposed, bias, seed):
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((columns, depth) if transposed else (depth, columns)).astype(np.float32)
    fn, reference = _predictor(weights, transposed, bias, reference=True)
    assert len(_packed(fn)) == 1
    x = rng.standard_normal((batch, depth)).astype(np.float32)
    want = reference(x=x)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(fn(x=x), want, rtol=1e-5, atol=1e-5 * scale * np.sqrt(depth))


@pytest.mark.parametrize("transposed", [False, True])
def test_a_non_finite_value_is_traced_through_a_packed_constant(transposed):
    """debug_numerics recomputes the failing kernel's nodes from their inputs: a packed constant
    (or its transpose) must read as its value there, not as the sgemm's panels."""
    weights = RNG.standard_normal((24, 40) if transposed else (40, 24)).astype(np.float32)
    g = dg.Graph(seed=0)
    x = g.input("x", (None, 40))
    w = g.constant(weights)
    logits = dg.relu(x @ (dg.transpose(w) if transposed else w) + g.constant(np.ones(24, np.float32)))
    fn = g.compile(outputs=logits, debug_numerics=True)
    assert len(_packed(fn)) == 1
    feed = np.ones((2, 40), np.float32)
    np.testing.assert_allclose(fn(x=feed), np.maximum(feed @ (weights.T if transposed else weights) + 1, 0), rtol=1e-5)
    feed[1, 3] = np.inf
    with pytest.raises(dg.NonFiniteError, match=r"'matmul_bias#\d+' .* produced Inf \(\d+ of 48 values"):
        fn(x=feed)


@pytest.mark.parametrize("transposed", [False, True])
def test_a_constant_read_through_a_reshape_is_packed_as_the_gemm_reads_it(transposed):
    """A reshape of a constant shares its buffer: the GEMM reads the values in the reshape's shape
    (packed in the constant's own shape, a (20, 12) weight read as (12, 20) gave wrong products)."""
    weights = RNG.standard_normal((20, 12)).astype(np.float32)  # too large to be folded into a new constant
    g = dg.Graph(seed=0)
    x = g.input("x", (None, 12 if not transposed else 20))
    matrix = dg.reshape(g.constant(weights), (12, 20))
    out = x @ (dg.transpose(matrix) if transposed else matrix)
    fn, reference = g.compile(outputs=out), g.compile(outputs=out, backend="numpy")
    assert list(_packed(fn).values()) == [((12, 20), transposed)]
    feed = RNG.standard_normal((3, 20 if transposed else 12)).astype(np.float32)
    np.testing.assert_allclose(fn(x=feed), reference(x=feed), rtol=1e-5, atol=1e-5)

"""Frozen predictors (`g.compile(outputs=..., freeze=True)`, compiler/freeze.py): a snapshot of
the parameters and state buffers as constants, which the native backend packs for its GEMM."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import drug as dg

RNG = np.random.default_rng(0)


def classifier(width: int = 48, depth: int = 32, seed: int = 0):
    """Dense + relu, dropout, batch norm (state buffers), and a second Dense: the graph and its logits."""
    g = dg.Graph(seed=seed)
    x = g.input("x", (None, depth))
    h = dg.layers.Dense(width, activation="relu", name="fc1")(x)
    h = dg.dropout(h, 0.25)
    h = dg.reshape(dg.layers.BatchNorm(name="bn")(dg.reshape(h, (None, width, 1, 1))), (None, width))
    return g, dg.layers.Dense(10, name="out")(h)


@pytest.mark.parametrize("backend", ["llvm", "numpy"])
def test_a_frozen_predictor_computes_what_the_live_one_does(backend):
    g, logits = classifier()
    mean = g.state["bn/running_mean"]
    mean[...] = RNG.standard_normal(mean.shape)  # statistics a training run left
    live = g.compile(outputs=logits, backend=backend)
    frozen = g.compile(outputs=[logits, dg.softmax(logits)], backend=backend, freeze=True)
    x = RNG.standard_normal((5, 32)).astype(np.float32)
    got, probabilities = frozen(x=x)
    np.testing.assert_allclose(got, live(x=x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_a_frozen_predictor_keeps_its_snapshot_and_packs_its_weights():
    g, logits = classifier()
    y = g.input("y", (None,), dtype="int32")
    train = g.compile(loss=dg.softmax_cross_entropy(logits, y), optimizer=dg.SGD(0.5))
    frozen = g.compile(outputs=logits, freeze=True)
    assert len(frozen._executor._prepacked) == 2  # both weight matrices
    x = RNG.standard_normal((8, 32)).astype(np.float32)
    before = frozen(x=x).copy()
    train(x=x, y=np.arange(8, dtype=np.int32) % 10)
    g.params["out/w"][...] += 1.0
    np.testing.assert_array_equal(frozen(x=x), before)
    np.testing.assert_allclose(g.compile(outputs=logits, freeze=True)(x=x), g.compile(outputs=logits)(x=x), rtol=1e-5)
    assert "fc1/w" in g.params and not frozen.program.graph.params  # the graph keeps its own


def test_a_frozen_predictor_names_the_users_inputs_in_errors():
    g, logits = classifier()
    frozen = g.compile(outputs=logits, freeze=True)
    with pytest.raises(dg.ShapeError, match="'x'"):
        frozen(x=np.ones((2, 31), np.float32))


@pytest.mark.parametrize(
    "arguments",
    [{"loss": "loss"}, {"loss": "loss", "optimizer": dg.SGD(0.1)}, {"outputs": "logits", "training": True}],
    ids=["loss", "optimizer", "training"],
)
def test_freezing_anything_but_an_inference_predictor_is_refused(arguments):
    g, logits = classifier()
    loss = dg.mean(logits * logits)
    named = {"loss": loss, "logits": logits}
    with pytest.raises(dg.GraphError, match="freeze=True compiles a predictor"):
        g.compile(**{k: named.get(v, v) if isinstance(v, str) else v for k, v in arguments.items()}, freeze=True)


@settings(max_examples=15, deadline=None)
@given(width=st.integers(1, 70), depth=st.integers(1, 90), batch=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_frozen_native_predictors_agree_with_the_numpy_backend(width, depth, batch, seed):
    g, logits = classifier(width, depth, seed)
    native = g.compile(outputs=logits, freeze=True)
    reference = g.compile(outputs=logits, freeze=True, backend="numpy")
    x = np.random.default_rng(seed).standard_normal((batch, depth)).astype(np.float32)
    want = reference(x=x)
    np.testing.assert_allclose(native(x=x), want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
def test_a_frozen_recurrent_predictor_matches_the_live_one(scan):
    """The cell's weights reach the loop body as captured values of the copy's constants."""
    g = dg.Graph(seed=0)
    ids, h0 = g.input("ids", (None, 7), dtype="int32"), g.input("h0", (None, 16))
    embedded = dg.layers.Embedding(20, 8, name="emb")(ids)
    states, last = dg.layers.GRUCell(16, name="gru").sequence(embedded, h0, scan=scan)
    out = dg.layers.Dense(5, name="head")(last)
    feeds = dict(ids=RNG.integers(0, 20, (3, 7)).astype(np.int32), h0=RNG.standard_normal((3, 16)).astype(np.float32))
    np.testing.assert_allclose(g.compile(outputs=out, freeze=True)(**feeds), g.compile(outputs=out)(**feeds), rtol=1e-5)


def test_a_frozen_predictor_refuses_checkpoints(tmp_path):
    """Its parameters are constants: a checkpoint of it would hold nothing, loading one would do nothing."""
    g, logits = classifier()
    path = tmp_path / "model.npz"
    g.compile(outputs=logits).save(path)
    frozen = g.compile(outputs=logits, freeze=True)
    for call in (frozen.save, frozen.load):
        with pytest.raises(dg.GraphError, match="frozen predictor"):
            call(path)
    assert not g.compile(outputs=logits).frozen and frozen.frozen

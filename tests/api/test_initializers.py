"""Initializers (dg.initializers) and the layers' PyTorch-like defaults.

Statistical checks use tensors of 250,000 values: the sample standard deviation of n draws is
within ~3/sqrt(2n) = 0.4% of the true one with overwhelming probability, so a 2% tolerance
separates a right scale from a wrong one (the closest alternative, Glorot vs He, differs by
sqrt(2))."""

from __future__ import annotations

import math

import numpy as np
import pytest

import drug as dg

inits = dg.initializers
SHAPE = (500, 500)  # fan_in 500


def draw(init, shape=SHAPE, dtype="float64"):
    g = dg.Graph(seed=0, dtype=dtype)
    return g.params[g.parameter("p", shape, init=init).name]


@pytest.mark.parametrize(
    "init, std",
    [
        ("he_normal", math.sqrt(2 / 500)),
        (inits.he_normal(negative_slope=0.2), math.sqrt(2 / 1.04 / 500)),
        ("xavier_normal", math.sqrt(2 / 1000)),
        (inits.normal(0.3, mean=1.0), 0.3),
    ],
)
def test_normal_scales(init, std):
    value = draw(init)
    assert value.std() == pytest.approx(std, rel=0.02)


@pytest.mark.parametrize(
    "init, bound",
    [
        ("he_uniform", math.sqrt(6 / 500)),
        (inits.he_uniform(negative_slope=math.sqrt(5)), 1 / math.sqrt(500)),  # PyTorch's Linear/Conv default
        ("xavier", math.sqrt(6 / 1000)),
        (inits.uniform(-0.25, 0.75), None),
    ],
)
def test_uniform_bounds(init, bound):
    value = draw(init)
    low, high = (-bound, bound) if bound is not None else (-0.25, 0.75)
    assert low <= value.min() < low + 0.01 * (high - low) and high - 0.01 * (high - low) < value.max() <= high


def test_truncated_normals():
    value = draw(inits.truncated_normal(std=0.5, mean=1.0, a=0.2, b=1.6))
    assert 0.2 <= value.min() and value.max() <= 1.6
    lecun = draw("lecun_normal")  # JAX's: within two standard deviations of the untruncated normal, variance 1/fan_in
    assert lecun.std() == pytest.approx(math.sqrt(1 / 500), rel=0.02)
    assert np.abs(lecun).max() <= 2 * math.sqrt(1 / 500) / inits.TRUNCATED_STD


@pytest.mark.parametrize("shape", [(6, 6), (4, 9), (9, 4), (8, 2, 3, 3)])
def test_orthogonal(shape):
    q = draw(inits.orthogonal(gain=2.0), shape).reshape(shape[0], -1) / 2.0
    small = min(q.shape)
    gram = q @ q.T if q.shape[0] == small else q.T @ q
    np.testing.assert_allclose(gram, np.eye(small), atol=1e-12)


def test_bad_initializers_name_the_parameter():
    g = dg.Graph()
    with pytest.raises(dg.GraphError, match="parameter 'w': unknown init 'kaiming'"):
        g.parameter("w", (3, 3), init="kaiming")
    with pytest.raises(dg.GraphError, match="parameter 'v': orthogonal needs a parameter of at least 2"):
        g.parameter("v", (3,), init="orthogonal")


def test_layers_start_as_pytorch_layers_do():
    g = dg.Graph(seed=0, dtype="float64")
    x = g.input("x", (None, 6, 40, 40))
    dg.layers.Conv2D(300, 5, groups=3, name="conv")(x)  # fan_in = 6 / 3 * 5 * 5 = 50
    dg.layers.Dense(400, name="fc")(g.input("v", (None, 900)))
    dg.layers.Embedding(300, 500, name="emb")(g.input("ids", (None,), dtype="int32"))
    dg.layers.GRUCell(400, name="gru")(g.input("s", (None, 100)))
    dg.layers.BatchNorm(name="bn")(x)
    p = g.params
    for name, bound in (("conv/w", 1 / math.sqrt(50)), ("conv/b", 1 / math.sqrt(50)), ("fc/w", 1 / 30),
                        ("fc/b", 1 / 30), ("gru/w_z", 1 / 20), ("gru/u_n", 1 / 20), ("gru/b_r", 1 / 20)):  # fmt: skip
        assert np.abs(p[name]).max() <= bound and np.abs(p[name]).max() > 0.9 * bound, name
    assert p["emb/table"].std() == pytest.approx(1.0, rel=0.02)
    assert (p["bn/scale"] == 1).all() and (p["bn/bias"] == 0).all()
    assert (g.state["bn/running_mean"] == 0).all() and (g.state["bn/running_var"] == 1).all()


def test_layer_init_overrides():
    g = dg.Graph(seed=0)
    dg.layers.Dense(4, init="zeros", bias_init=inits.constant(0.5), name="fc")(g.input("x", (None, 3)))
    assert (g.params["fc/w"] == 0).all() and (g.params["fc/b"] == 0.5).all()

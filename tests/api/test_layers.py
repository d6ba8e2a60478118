"""dg.layers: shapes, parameter names, parameter sharing across calls, and their gradients."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FD_ATOL, FD_EPS, FD_RTOL, numeric_grad

import drug as dg
from drug import layers as L


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_dense_names_shapes_and_forward(rng):
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 5))
    h = L.Dense(4, activation="tanh")(x)
    out_layer = L.Dense(3, bias=False, name="head")
    out = out_layer(h)
    assert h.shape == (None, 4) and out.shape == (None, 3)
    assert sorted(g.params) == ["dense1/b", "dense1/w", "head/w"]
    assert [p.name for p in out_layer.parameters] == ["head/w"]
    xv = rng.standard_normal((7, 5))
    expected = np.tanh(xv @ g.params["dense1/w"] + g.params["dense1/b"]) @ g.params["head/w"]
    for backend in ("numpy", "llvm"):
        np.testing.assert_allclose(g.compile(outputs=out, backend=backend)(x=xv), expected, rtol=1e-12)


def test_default_names_are_unique_per_graph():
    g = dg.Graph()
    x = g.input("x", (None, 3))
    g.parameter("dense1/w", (1,))  # a user's parameter already takes the first name
    a, b = L.Dense(2), L.Dense(2)
    a(x), b(x)
    assert (a.name, b.name) == ("dense2", "dense3")
    other = dg.Graph()
    c = L.Dense(2)
    c(other.input("x", (None, 3)))
    assert c.name == "dense1"


def test_reusing_a_layer_shares_its_parameters(rng):
    g = dg.Graph(dtype="float64")
    a, b = g.input("a", (None, 4)), g.input("b", (None, 4))
    dense = L.Dense(4, activation="sigmoid", name="shared")
    y = dense(dense(a)) + dense(b)  # three applications, one parameter set
    assert sorted(g.params) == ["shared/b", "shared/w"]
    loss = dg.sum(y * y)
    feeds = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal((3, 4))}
    f_loss = g.compile(outputs=loss, backend="numpy")
    grads = g.compile(outputs=dg.grad(loss, dense.parameters), backend="llvm")(**feeds)
    for node, got in zip(dense.parameters, grads):
        expected = numeric_grad(lambda: float(f_loss(**feeds)), g.params[node.name], FD_EPS)
        np.testing.assert_allclose(got, expected, rtol=FD_RTOL, atol=FD_ATOL, err_msg=node.name)


def test_layer_refuses_an_input_of_another_size():
    g = dg.Graph()
    dense = L.Dense(2, name="fc")
    dense(g.input("x", (None, 3)))
    with pytest.raises(dg.ShapeError, match=r"dense layer 'fc'.*'y' \(None, 5\).*features 3"):
        dense(g.input("y", (None, 5)))
    with pytest.raises(dg.GraphError, match="another graph"):
        dense(dg.Graph().input("x", (None, 3)))
    with pytest.raises(dg.GraphError, match="unknown activation 'swish'"):
        L.Dense(2, activation="swish")


@pytest.mark.parametrize("pad_mode", ["zeros", "replicate", "reflect"])
def test_conv_block_is_conv_bias_activation(rng, pad_mode):
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 2, 6, 5))
    conv = L.Conv2D(3, 3, stride=2, padding="same", pad_mode=pad_mode, activation="relu", name="c1")
    y = conv(x)
    assert y.shape == (None, 3, 3, 3)
    assert g.params["c1/w"].shape == (3, 2, 3, 3) and g.params["c1/b"].shape == (3,)
    g.params["c1/b"][:] = rng.standard_normal(3)
    xv = rng.standard_normal((2, 2, 6, 5))
    plain = g.compile(outputs=dg.conv2d(x, conv.params["w"], 2, "same", pad_mode), backend="numpy")(x=xv)
    expected = np.maximum(plain + g.params["c1/b"][:, None, None], 0)
    for backend in ("numpy", "llvm"):
        np.testing.assert_allclose(g.compile(outputs=y, backend=backend)(x=xv), expected, rtol=1e-12)


def test_embedding_layer(rng):
    g = dg.Graph(dtype="float64")
    ids = g.input("ids", (None, 3), dtype="int32")
    emb = L.Embedding(7, 4, name="emb")
    out = emb(ids)
    assert out.shape == (None, 3, 4) and list(g.params) == ["emb/table"]
    iv = rng.integers(0, 7, (2, 3)).astype(np.int32)
    np.testing.assert_array_equal(g.compile(outputs=out, backend="llvm")(ids=iv), g.params["emb/table"][iv])


def _gru_reference(params, xs, h):
    """PyTorch's GRU formula in NumPy, one step at a time."""
    p = params
    states = []
    for t in range(xs.shape[1]):
        x = xs[:, t]
        r = _sigmoid(x @ p["w_r"] + h @ p["u_r"] + p["b_r"])
        z = _sigmoid(x @ p["w_z"] + h @ p["u_z"] + p["b_z"])
        n = np.tanh(x @ p["w_n"] + p["b_n"] + r * (h @ p["u_n"]))
        h = (1 - z) * n + z * h
        states.append(h)
    return np.stack(states, axis=1), h


def test_gru_sequence_matches_the_formula(rng):
    g = dg.Graph(dtype="float64")
    xs, h0 = g.input("xs", (None, 4, 3)), g.input("h0", (None, 5))
    cell = L.GRUCell(5, name="gru1")
    states, last = cell.sequence(xs, h0)
    assert states.shape == (None, 4, 5) and last.shape == (None, 5)
    roles = [f"{m}_{gate}" for m in "wub" for gate in "rzn"]
    assert sorted(g.params) == sorted(f"gru1/{r}" for r in roles)
    for r in roles:  # non-zero biases so that every term is exercised
        g.params[f"gru1/{r}"][:] = rng.standard_normal(g.params[f"gru1/{r}"].shape) * 0.5
    feeds = {"xs": rng.standard_normal((2, 4, 3)), "h0": rng.standard_normal((2, 5))}
    expected = _gru_reference({r: g.params[f"gru1/{r}"] for r in roles}, feeds["xs"], feeds["h0"])
    for backend in ("numpy", "llvm"):
        got = g.compile(outputs=[states, last], backend=backend)(**feeds)
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    zero_state = cell.sequence(xs)[1]  # h0=None is the zero state
    np.testing.assert_allclose(
        g.compile(outputs=zero_state, backend="llvm")(xs=feeds["xs"]),
        _gru_reference({r: g.params[f"gru1/{r}"] for r in roles}, feeds["xs"], np.zeros((2, 5)))[1],
        rtol=1e-10,
    )


@pytest.mark.parametrize("cell_type", [L.RNNCell, L.GRUCell])
def test_cell_applied_t_times_has_one_parameter_set_and_summed_gradients(rng, cell_type):
    """The gradient of a shared parameter is the sum of the per-step gradients: compare with
    finite differences on the live parameter buffers, and with the sum of per-step gradients of
    an unshared copy of the same weights."""
    T = 3
    g = dg.Graph(dtype="float64")
    xs = [g.input(f"x{t}", (None, 2)) for t in range(T)]
    cell = cell_type(4, name="cell")
    h = None
    for x in xs:
        h = cell(x, h)
    loss = dg.sum(h * h)
    assert sorted(g.params) == sorted(p.name for p in cell.parameters)
    for name in g.params:
        g.params[name][:] = rng.standard_normal(g.params[name].shape) * 0.7
    feeds = {f"x{t}": rng.standard_normal((3, 2)) for t in range(T)}
    f_loss = g.compile(outputs=loss, backend="numpy")
    got = g.compile(outputs=dg.grad(loss, cell.parameters), backend="llvm")(**feeds)
    for node, value in zip(cell.parameters, got):
        expected = numeric_grad(lambda: float(f_loss(**feeds)), g.params[node.name], FD_EPS)
        np.testing.assert_allclose(value, expected, rtol=FD_RTOL, atol=FD_ATOL, err_msg=node.name)

    # the same computation with a cell of its own per step, all holding the same weights
    u = dg.Graph(dtype="float64")
    cells = [cell_type(4, name=f"step{t}") for t in range(T)]
    h = None
    for t, step_cell in enumerate(cells):
        h = step_cell(u.input(f"x{t}", (None, 2)), h)
    for step_cell in cells:
        for role, node in step_cell.params.items():
            u.params[node.name][:] = g.params[f"cell/{role}"]
    per_step = u.compile(outputs=dg.grad(dg.sum(h * h), [p for c in cells for p in c.parameters]), backend="numpy")
    values = per_step(**feeds)
    n = len(cell.parameters)
    for i, node in enumerate(cell.parameters):
        summed = sum(values[t * n + i] for t in range(T))
        np.testing.assert_allclose(got[i], summed, rtol=1e-10, atol=1e-12, err_msg=node.name)

"""The layers a transformer (and an LSTM) is built from: parameters, shapes, modes, and agreement
with PyTorch's modules where torch is installed."""

from __future__ import annotations

import math

import numpy as np
import pytest

import drug as dg

BACKENDS = ("numpy", "llvm")


def test_layer_norm_and_rms_norm_layers_own_scale_and_bias(rng):
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 3, 8))
    ln, rms = dg.layers.LayerNorm(name="ln"), dg.layers.RMSNorm(name="rms")
    outs = [ln(x), rms(x)]
    assert sorted(g.params) == ["ln/bias", "ln/scale", "rms/scale"]
    g.params["ln/scale"][...] = 2.0
    g.params["ln/bias"][...] = 0.5
    xv = rng.standard_normal((2, 3, 8))
    got = g.compile(outputs=outs)(x=xv)
    normed = (xv - xv.mean(-1, keepdims=True)) / np.sqrt(xv.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(got[0], 2.0 * normed + 0.5, rtol=1e-10)
    with pytest.raises(dg.ShapeError, match="must have features 8"):
        ln(g.input("y", (None, 4)))


def test_sinusoidal_and_learned_positions():
    table = dg.layers.sinusoidal_positions(50, 6)
    assert table.shape == (50, 6)
    np.testing.assert_allclose(table[7, 2], math.sin(7 / 10000 ** (2 / 6)))
    np.testing.assert_allclose(table[7, 3], math.cos(7 / 10000 ** (2 / 6)))
    g = dg.Graph()
    x = g.input("x", (None, 10, 6))
    fixed, learned = dg.layers.PositionalEmbedding(50, "sinusoidal"), dg.layers.PositionalEmbedding(10)
    outs = [fixed(x), learned(x)]
    assert list(g.params) == [f"{learned.name}/table"]
    got = g.compile(outputs=outs)(x=np.zeros((2, 10, 6), np.float32))
    np.testing.assert_allclose(got[0][1], table[:10], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got[1][0], g.params[f"{learned.name}/table"])
    with pytest.raises(dg.ShapeError, match="T <= 10"):
        learned(g.input("long", (None, 11, 6)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_transformer_block_trains_and_drops_out_only_in_training(backend, rng):
    g = dg.Graph(seed=1)
    x = g.input("x", (None, 6, 8))
    block = dg.layers.TransformerBlock(2, dropout=0.3, causal=True, name="block")
    out = block(x)
    assert out.shape == (None, 6, 8)
    assert {name.split("/", 1)[1] for name in g.params} == {
        "ln1/scale",
        "ln1/bias",
        "attn/w_q",
        "attn/w_k",
        "attn/w_v",
        "attn/w_o",
        "attn/b_q",
        "attn/b_k",
        "attn/b_v",
        "attn/b_o",
        "ln2/scale",
        "ln2/bias",
        "fc1/w",
        "fc1/b",
        "fc2/w",
        "fc2/b",
    }
    assert set(block.params) == set(g.params)
    xv = rng.standard_normal((3, 6, 8)).astype(np.float32)
    predict = g.compile(outputs=out, backend=backend)
    np.testing.assert_array_equal(predict(x=xv), predict(x=xv))  # no dropout
    noisy = g.compile(outputs=out, backend=backend, training=True)
    assert not np.array_equal(noisy(x=xv), noisy(x=xv))
    # causal: the first position sees only itself, whatever the later ones hold
    later = xv.copy()
    later[:, 1:] = rng.standard_normal((3, 5, 8))
    np.testing.assert_allclose(predict(x=later)[:, 0], predict(x=xv)[:, 0], rtol=1e-5, atol=1e-6)
    train = g.compile(loss=dg.mean(out * out), optimizer=dg.Adam(0.01), backend=backend)
    losses = [train(x=xv) for _ in range(30)]
    assert losses[-1] < 0.7 * losses[0]


torch = pytest.importorskip("torch", reason="the comparisons with PyTorch's modules need PyTorch")


@pytest.mark.parametrize("scan", [False, True])
def test_lstm_cell_matches_torch_lstm(scan, rng):
    batch, steps, features, hidden = 3, 5, 4, 6
    g = dg.Graph(dtype="float32", seed=2)
    xs = g.input("xs", (None, steps, features))
    cell = dg.layers.LSTMCell(hidden, name="lstm")
    states, (h, c) = cell.sequence(xs, scan=scan)
    r = g.input("r", (None, steps, hidden))
    loss = dg.sum(states * r) + dg.sum(c)
    grads = dg.grad(loss, [xs] + cell.parameters)
    xv, rv = (
        rng.standard_normal((batch, steps, features)).astype(np.float32),
        rng.standard_normal((batch, steps, hidden)),
    )
    lstm = torch.nn.LSTM(features, hidden, batch_first=True)
    p = g.params
    with torch.no_grad():  # drug's (in, 4h) gate blocks i, f, g, o are torch's weight rows, transposed
        lstm.weight_ih_l0.copy_(torch.tensor(np.concatenate([p[f"lstm/w_{q}"] for q in "ifgo"], 1).T))
        lstm.weight_hh_l0.copy_(torch.tensor(np.concatenate([p[f"lstm/u_{q}"] for q in "ifgo"], 1).T))
        lstm.bias_ih_l0.copy_(torch.tensor(np.concatenate([p[f"lstm/b_{q}"] for q in "ifgo"])))
        lstm.bias_hh_l0.zero_()
    tx = torch.tensor(xv, requires_grad=True)
    out, (th, tc) = lstm(tx)
    ((out * torch.tensor(rv, dtype=torch.float32)).sum() + tc.sum()).backward()
    for backend in BACKENDS:
        got = g.compile(outputs=[states, h] + grads, backend=backend)(xs=xv, r=rv.astype(np.float32))
        np.testing.assert_allclose(got[0], out.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[1], th.detach().numpy()[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[2], tx.grad.numpy(), rtol=1e-4, atol=1e-5)
        w_grad = np.concatenate([got[3 + i] for i in range(4)], 1).T  # w_i, w_f, w_g, w_o
        np.testing.assert_allclose(w_grad, lstm.weight_ih_l0.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_multi_head_attention_matches_torch(rng):
    batch, t, d, heads = 2, 5, 8, 2
    g = dg.Graph(seed=4)
    x = g.input("x", (None, t, d))
    mha = dg.layers.MultiHeadAttention(heads, causal=True, name="mha")
    out = mha(x)
    p = g.params
    module = torch.nn.MultiheadAttention(d, heads, batch_first=True)
    with torch.no_grad():
        module.in_proj_weight.copy_(torch.tensor(np.concatenate([p[f"mha/w_{q}"] for q in "qkv"], 1).T))
        module.in_proj_bias.copy_(torch.tensor(np.concatenate([p[f"mha/b_{q}"] for q in "qkv"])))
        module.out_proj.weight.copy_(torch.tensor(p["mha/w_o"].T))
        module.out_proj.bias.copy_(torch.tensor(p["mha/b_o"]))
    xv = rng.standard_normal((batch, t, d)).astype(np.float32)
    causal = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)  # True: masked out, in torch's module
    want, _ = module(torch.tensor(xv), torch.tensor(xv), torch.tensor(xv), attn_mask=causal, need_weights=False)
    for backend in BACKENDS:
        np.testing.assert_allclose(
            g.compile(outputs=out, backend=backend)(x=xv), want.detach().numpy(), rtol=1e-5, atol=1e-6
        )

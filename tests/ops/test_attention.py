"""dg.attention: against the composite formula (matmul, where, softmax) on both backends, forward and
gradients; against torch.nn.functional.scaled_dot_product_attention where torch is installed;
blocked kernels (queries and keys over several blocks, the online softmax); fully masked rows;
bad masks refused at build time."""

from __future__ import annotations

import math

import numpy as np
import pytest

import drug as dg

BACKENDS = ("numpy", "llvm")


def composite(q, k, v, mask=None, causal=False, scale=None):
    """softmax(q k^T * scale + mask) v from plain graph ops, (batch, heads, time, dim)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ dg.transpose(k, (0, 1, 3, 2))) * scale
    tq, tk = q.shape[2], k.shape[2]
    if mask is not None and mask.dtype == np.bool_:
        s = dg.where(mask, s, -1e30)
    elif mask is not None:
        s = s + mask
    if causal:
        s = dg.where(s.graph.constant(np.tril(np.ones((tq, tk), bool))), s, -1e30)
    return dg.softmax(s, axis=-1) @ v


def _feeds(rng, shapes: dict, batch: int) -> dict:
    return {
        name: rng.standard_normal(tuple(batch if d is None else d for d in shape)) for name, shape in shapes.items()
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", [None, "bool", "float"])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_the_composite_formula(backend, kind, causal, rng):
    g = dg.Graph(dtype="float64")
    b, h, tq, tk, d = 3, 2, 5, 5 if causal else 7, 4
    shapes = {"q": (None, h, tq, d), "k": (None, h, tk, d), "v": (None, h, tk, 3), "r": (None, h, tq, 3)}
    q, k, v, r = (g.input(n, s) for n, s in shapes.items())
    feeds = _feeds(rng, shapes, b)
    mask = None
    if kind == "bool":  # every row keeps at least its first key: the composite's -1e30 equals -inf there
        mask = g.input("m", (None, 1, tq, tk), dtype="bool")
        feeds["m"] = rng.uniform(size=(b, 1, tq, tk)) < 0.6
        feeds["m"][..., 0] = True
    elif kind == "float":
        mask = g.input("m", (h, tq, tk))
        feeds["m"] = rng.standard_normal((h, tq, tk))
    ours, theirs = dg.attention(q, k, v, mask, causal), composite(q, k, v, mask, causal)
    outs = [ours, theirs] + dg.grad(dg.sum(ours * r), [q, k, v]) + dg.grad(dg.sum(theirs * r), [q, k, v])
    got = g.compile(outputs=outs, backend=backend)(**feeds)
    np.testing.assert_allclose(got[0], got[1], rtol=1e-12, atol=1e-12)
    for ours_grad, their_grad in zip(got[2:5], got[5:]):
        np.testing.assert_allclose(ours_grad, their_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", ["bhtd", "bthd"])
@pytest.mark.parametrize("sizes", [(70, 300), (130, 130), (1, 257)])
def test_blocked_native_kernels_match_the_reference(layout, sizes, rng):
    """Query blocks of 64 and key blocks of 256: several of each, ragged ends, the online softmax
    across key blocks and the backward pass's separate log-sum-exp pass."""
    tq, tk = sizes
    g = dg.Graph(dtype="float64")
    shape = (lambda t, d: (None, 2, t, d)) if layout == "bhtd" else (lambda t, d: (None, t, 2, d))
    shapes = {"q": shape(tq, 8), "k": shape(tk, 8), "v": shape(tk, 6), "r": shape(tq, 6)}
    q, k, v, r = (g.input(n, s) for n, s in shapes.items())
    mask = g.input("m", (None, 1, 1, tk), dtype="bool")
    feeds = _feeds(rng, shapes, 2) | {"m": rng.uniform(size=(2, 1, 1, tk)) < 0.8}
    for causal in (False, True):
        out = dg.attention(q, k, v, mask, causal, layout=layout)
        targets = [out] + dg.grad(dg.sum(out * r), [q, k, v])
        got = g.compile(outputs=targets, backend="llvm")(**feeds)
        want = g.compile(outputs=targets, backend="numpy")(**feeds)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_query_no_key_may_attend_to_gets_zeros(backend, rng):
    g = dg.Graph(dtype="float64")
    q, k, v = (g.input(n, (None, 1, 3, 2)) for n in "qkv")
    mask = g.constant(np.array([[True, False, True], [False, False, False], [True, True, True]]))
    out = dg.attention(q, k, v, mask)
    grads = dg.grad(dg.sum(out), [q, k, v])
    got = g.compile(outputs=[out] + grads, backend=backend)(**_feeds(rng, {n: (None, 1, 3, 2) for n in "qkv"}, 2))
    assert np.all(np.isfinite(np.concatenate([a.ravel() for a in got])))
    np.testing.assert_array_equal(got[0][:, :, 1], 0.0)
    np.testing.assert_array_equal(got[1][:, :, 1], 0.0)  # dq of that query


def test_bad_masks_and_shapes_are_refused_at_build_time():
    g = dg.Graph()
    q, k, v = (g.input(n, (None, 2, 5, 4)) for n in "qkv")
    with pytest.raises(dg.ShapeError, match=r"mask \(3, 5\) does not broadcast to the scores"):
        dg.attention(q, k, v, g.input("m", (3, 5), dtype="bool"))
    with pytest.raises(dg.ShapeError, match="mask must be bool or float32"):
        dg.attention(q, k, v, g.input("ids", (5, 5), dtype="int32"))
    with pytest.raises(dg.ShapeError, match="do not fit"):
        dg.attention(q, g.input("k3", (None, 2, 5, 3)), v)
    with pytest.raises(dg.ShapeError, match="op 'attention' on inputs 'q'"):
        dg.attention(q, k, v, g.input("m2", (None, 2, 5, 6), dtype="bool"))


torch = pytest.importorskip("torch", reason="the comparison with scaled_dot_product_attention needs PyTorch")


@pytest.mark.parametrize("kind", [None, "bool", "float"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_matches_torch_scaled_dot_product_attention(kind, causal, scale, rng):
    b, h, tq, tk, d = 2, 3, 6, 6 if causal else 9, 5
    arrays = {
        n: rng.standard_normal(s).astype(np.float32)
        for n, s in (("q", (b, h, tq, d)), ("k", (b, h, tk, d)), ("v", (b, h, tk, 4)), ("r", (b, h, tq, 4)))
    }
    g = dg.Graph()
    q, k, v, r = (g.input(n, (None,) + arrays[n].shape[1:]) for n in "qkvr")
    mask, t_mask, t_causal = None, None, causal
    if kind == "bool":
        arrays["m"] = rng.uniform(size=(b, 1, tq, tk)) < 0.6
        mask = g.input("m", (None, 1, tq, tk), "bool")
        # torch takes a bool mask or is_causal, not both: its mask then carries the causal part
        t_mask = torch.tensor(arrays["m"] & np.tril(np.ones((tq, tk), bool)) if causal else arrays["m"])
        t_causal = False
    elif kind == "float":  # with causal, torch gets the causal part as -inf in its float mask
        value = rng.standard_normal((h, tq, tk)).astype(np.float32)
        mask = g.constant(value)
        t_mask = torch.tensor(np.where(np.tril(np.ones((tq, tk), bool)), value, -np.inf) if causal else value)
        t_causal = False
    t = {n: torch.tensor(arrays[n], requires_grad=n != "r") for n in "qkvr"}
    t_out = torch.nn.functional.scaled_dot_product_attention(
        t["q"], t["k"], t["v"], attn_mask=t_mask, is_causal=t_causal, scale=scale
    )
    (t_out * t["r"]).sum().backward()
    want = [t_out.detach().numpy()] + [t[n].grad.numpy() for n in "qkv"]
    out = dg.attention(q, k, v, mask, causal, scale)
    targets = [out] + dg.grad(dg.sum(out * r), [q, k, v])
    for backend in BACKENDS:
        got = g.compile(outputs=targets, backend=backend)(**arrays)
        for a, w in zip(got, want):
            np.testing.assert_allclose(a, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("t", [5, 130])
def test_packed_qkv_is_attention_of_its_three_parts(backend, t, rng):
    """The layers' self-attention reads q, k and v from one (batch, T, 3, heads, dim) projection in
    place; it and its single gradient node equal attention of the three parts."""
    from drug.ops.attention import attention_packed

    g = dg.Graph(dtype="float64")
    qkv, r = g.input("qkv", (None, t, 3, 2, 4)), g.input("r", (None, t, 2, 4))
    mask = g.input("m", (None, 1, 1, t), dtype="bool")
    packed = attention_packed(qkv, mask, causal=True)
    parts = dg.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask, causal=True, layout="bthd")
    outs = [packed, parts, dg.grad(dg.sum(packed * r), qkv), dg.grad(dg.sum(parts * r), qkv)]
    feeds = {"qkv": rng.standard_normal((2, t, 3, 2, 4)), "r": rng.standard_normal((2, t, 2, 4))}
    feeds["m"] = rng.uniform(size=(2, 1, 1, t)) < 0.8
    got = g.compile(outputs=outs, backend=backend)(**feeds)
    np.testing.assert_allclose(got[0], got[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[2], got[3], rtol=1e-10, atol=1e-12)

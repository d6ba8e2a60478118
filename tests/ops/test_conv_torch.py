"""conv2d (stride, padding forms, dilation, groups), conv_transpose2d and conv1d against PyTorch's
own ops, forward and gradients, on both backends, in float64 (where both sides round to ~1e-16,
so 1e-10 leaves room only for summation order)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import drug as dg

torch = pytest.importorskip("torch", reason="PyTorch is the peer these tests compare with")
F = torch.nn.functional

BACKENDS = ("numpy", "llvm")
TOL = dict(rtol=1e-10, atol=1e-10)


def _grads_vs_torch(backend, build, torch_fn, arrays: dict, seed: int):
    """build(graph, inputs) -> node; the node and d sum(node * r)/d inputs against PyTorch."""
    g = dg.Graph(dtype="float64")
    nodes = {name: g.input(name, a.shape) for name, a in arrays.items()}
    y = build(**nodes)
    tensors = {name: torch.tensor(a, requires_grad=True) for name, a in arrays.items()}
    expected = torch_fn(**tensors)
    assert y.shape == tuple(expected.shape)
    r = np.random.default_rng(seed).standard_normal(y.shape)
    (expected * torch.tensor(r)).sum().backward()
    grads = dg.grad(dg.sum(y * g.input("r", y.shape)), list(nodes.values()))
    got = g.compile(outputs=[y, *grads], backend=backend)(**arrays, r=r)
    np.testing.assert_allclose(got[0], expected.detach().numpy(), **TOL, err_msg="forward")
    for (name, t), value in zip(tensors.items(), got[1:]):
        np.testing.assert_allclose(value, t.grad.numpy(), **TOL, err_msg=f"d/d {name}")


@st.composite
def conv2d_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c, o = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.sampled_from(["int", "pair", "valid", "same"]))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    if padding == "same":
        stride = (1, 1)  # PyTorch's 'same' exists for stride 1 only
    pad = {"int": draw(st.integers(0, 2)), "pair": (draw(st.integers(0, 2)), draw(st.integers(0, 2)))}.get(padding)
    hw = (draw(st.integers(5, 9)), draw(st.integers(5, 9)))
    return dict(n=draw(st.integers(1, 3)), c=c, o=o, hw=hw, k=k, stride=stride, dilation=dilation, groups=groups,
                padding=pad if pad is not None else padding, seed=draw(st.integers(0, 2**16)))  # fmt: skip


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # PyTorch notes it copies the input for this case
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=20, deadline=None)
@given(case=conv2d_cases())
def test_conv2d_matches_torch(backend, case):
    rng = np.random.default_rng(case["seed"])
    arrays = {
        "x": rng.standard_normal((case["n"], case["c"]) + case["hw"]),
        "w": rng.standard_normal((case["o"], case["c"] // case["groups"]) + case["k"]),
    }
    geometry = {key: case[key] for key in ("stride", "padding", "dilation", "groups")}
    _grads_vs_torch(backend, lambda x, w: dg.conv2d(x, w, **geometry), lambda x, w: F.conv2d(x, w, **geometry),
                    arrays, case["seed"])  # fmt: skip


@st.composite
def transpose_cases(draw):
    groups = draw(st.sampled_from([1, 2]))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    output_padding = tuple(draw(st.integers(0, s - 1)) for s in stride)
    pair = lambda low, high: (draw(st.integers(low, high)), draw(st.integers(low, high)))  # noqa: E731
    return dict(n=draw(st.integers(1, 2)), c_in=groups * draw(st.integers(1, 2)), hw=pair(2, 6), k=pair(1, 3),
                c_out=groups * draw(st.integers(1, 2)), stride=stride, padding=pair(0, 1), dilation=dilation,
                output_padding=output_padding, groups=groups, seed=draw(st.integers(0, 2**16)))  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=20, deadline=None)
@given(case=transpose_cases())
def test_conv_transpose2d_matches_torch(backend, case):
    rng = np.random.default_rng(case["seed"])
    arrays = {
        "x": rng.standard_normal((case["n"], case["c_in"]) + case["hw"]),
        "w": rng.standard_normal((case["c_in"], case["c_out"] // case["groups"]) + case["k"]),
    }
    geometry = {key: case[key] for key in ("stride", "padding", "output_padding", "dilation", "groups")}
    out_hw = [
        (n - 1) * s - 2 * p + d * (k - 1) + e + 1
        for n, s, p, d, k, e in zip(
            case["hw"], case["stride"], case["padding"], case["dilation"], case["k"], case["output_padding"]
        )  # fmt: skip
    ]
    if min(out_hw) < 1:
        return  # no output: refused by both (checked in test_conv_errors)
    _grads_vs_torch(backend, lambda x, w: dg.conv_transpose2d(x, w, **geometry),
                    lambda x, w: F.conv_transpose2d(x, w, **geometry), arrays, case["seed"])  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "geometry",
    [
        dict(stride=1, padding=0, dilation=1, groups=1),
        dict(stride=2, padding=2, dilation=1, groups=1),
        dict(stride=1, padding="same", dilation=3, groups=2),
        dict(stride=3, padding=1, dilation=2, groups=4),  # depthwise: one channel per group
    ],
)
def test_conv1d_matches_torch(backend, geometry):
    rng = np.random.default_rng(3)
    arrays = {"x": rng.standard_normal((3, 4, 17)), "w": rng.standard_normal((8, 4 // geometry["groups"], 3))}
    _grads_vs_torch(backend, lambda x, w: dg.conv1d(x, w, **geometry), lambda x, w: F.conv1d(x, w, **geometry),
                    arrays, 0)  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_depthwise_conv2d_matches_torch(backend):
    """groups = channels (MobileNet's depthwise convolution), with a channel multiplier of 2."""
    rng = np.random.default_rng(5)
    arrays = {"x": rng.standard_normal((2, 6, 11, 9)), "w": rng.standard_normal((12, 1, 3, 3))}
    geometry = dict(stride=2, padding=1, groups=6)
    _grads_vs_torch(backend, lambda x, w: dg.conv2d(x, w, **geometry), lambda x, w: F.conv2d(x, w, **geometry),
                    arrays, 1)  # fmt: skip

"""Local pooling (`dg.max_pool2d`, `dg.avg_pool2d`). Tiling windows are a reshape into windows and a
reduction over two axes, so the checks are that this composition computes NumPy's window max/mean (remainders dropped,
like PyTorch), that its gradient matches finite differences with both backends, and that the native
backend runs it without the Python callback. Overlapping and padded windows are ops of their own,
checked against PyTorch's pooling (forward and gradient) and for their vectorized native loop.

Tolerances: forward values and float64 gradients follow test_native_ops (1e-10 relative to the
largest magnitude; max picks an element exactly, mean sums at most 6 terms); finite differences use
conftest's FD_EPS/FD_RTOL/FD_ATOL, whose derivation holds for these piecewise-linear functions away
from ties (standard-normal inputs are at least ~1e-3 apart in a window, far above eps = 1e-6)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FD_ATOL, FD_EPS, FD_RTOL, numeric_grad

import drug as dg

POOLS = {"max": (dg.max_pool2d, np.max), "avg": (dg.avg_pool2d, np.mean)}
BACKENDS = ("numpy", "llvm")
# (N, C, H, W) and window: square and rectangular windows, sizes that divide and that leave a remainder
CASES = [((2, 3, 4, 6), 2), ((3, 2, 7, 5), 2), ((2, 2, 6, 6), (3, 2)), ((1, 1, 5, 7), 3)]


def windows_reference(x: np.ndarray, size, reduce) -> np.ndarray:
    """NumPy: the reduce over each non-overlapping window, trailing rows/columns dropped."""
    sh, sw = (size, size) if isinstance(size, int) else size
    n, c, h, w = x.shape
    oh, ow = h // sh, w // sw
    out = np.empty((n, c, oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = reduce(x[:, :, i * sh : (i + 1) * sh, j * sw : (j + 1) * sw], axis=(2, 3))
    return out


def pool_problem(kind: str, shape, size, dtype: str):
    """y = pool(x), loss = sum(y * r) and its gradient w.r.t. x, with random feeds."""
    g = dg.Graph(dtype=dtype)
    x = g.input("x", (None,) + shape[1:])
    y = POOLS[kind][0](x, size)
    r = g.input("r", (None,) + y.shape[1:])
    loss = dg.sum(y * r)
    (gx,) = dg.grad(loss, [x])
    rng = np.random.default_rng(12345)
    feeds = {"x": rng.standard_normal(shape).astype(dtype), "r": rng.standard_normal((shape[0],) + y.shape[1:])}
    feeds["r"] = feeds["r"].astype(dtype)
    return g, y, loss, gx, feeds


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,size", CASES)
@pytest.mark.parametrize("kind", sorted(POOLS))
def test_forward_matches_numpy(kind, shape, size, dtype, backend):
    g, y, _, _, feeds = pool_problem(kind, shape, size, dtype)
    got = g.compile(outputs=y, backend=backend)(x=feeds["x"])
    want = windows_reference(feeds["x"], size, POOLS[kind][1])
    assert got.shape == want.shape and got.dtype == np.dtype(dtype)
    rtol = 1e-10 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,size", CASES)
@pytest.mark.parametrize("kind", sorted(POOLS))
def test_gradient_matches_finite_differences(kind, shape, size, backend):
    g, _, loss, gx, feeds = pool_problem(kind, shape, size, "float64")
    f_loss = g.compile(outputs=loss, backend=backend)
    got = g.compile(outputs=gx, backend=backend)(**feeds)
    expected = numeric_grad(lambda: float(f_loss(**feeds)), feeds["x"], FD_EPS)
    np.testing.assert_allclose(got, expected, rtol=FD_RTOL, atol=FD_ATOL)


@pytest.mark.parametrize("kind", sorted(POOLS))
def test_native_train_step_has_no_callback(kind):
    """The reshape is an alias and the reductions and their gradients are fused loops."""
    g, _, loss, _, feeds = pool_problem(kind, (2, 3, 4, 6), 2, "float32")
    kernels = g.compile(outputs=dg.grad(loss, [g["x"]]), backend="llvm").program.schedule.kernels
    assert kernels and all(k.kind != "callback" for k in kernels), [(k.kind, k.name) for k in kernels]


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool_ties_share_the_gradient(backend):
    """Like `dg.max`: every maximal element of a window gets an equal share (JAX's convention)."""
    g = dg.Graph(dtype="float64")
    x = g.input("x", (1, 1, 2, 4))
    (gx,) = dg.grad(dg.sum(dg.max_pool2d(x, 2)), [x])
    value = np.array([[[[1.0, 1.0, 5.0, 2.0], [1.0, 1.0, 5.0, 0.0]]]])
    got = g.compile(outputs=gx, backend=backend)(x=value)
    np.testing.assert_array_equal(got, [[[[0.25, 0.25, 0.5, 0.0], [0.25, 0.25, 0.5, 0.0]]]])


@pytest.mark.parametrize("pool", [dg.max_pool2d, dg.avg_pool2d])
def test_errors_name_the_op_and_shape(pool):
    g = dg.Graph()
    with pytest.raises(dg.ShapeError, match=rf"{pool.__name__} needs NCHW input, got .*\(None, 8\)"):
        pool(g.input("flat", (None, 8)), 2)
    small = g.input("small", (None, 1, 4, 4))
    with pytest.raises(dg.ShapeError, match=rf"{pool.__name__}: window \(5, 5\) does not fit .*\(None, 1, 4, 4\)"):
        pool(small, 5)
    with pytest.raises(
        dg.ShapeError, match=rf"{pool.__name__}: window \(7, 7\) does not fit the padded .*padding \(1, 1\)"
    ):
        pool(small, 7, stride=1, padding=1)
    with pytest.raises(dg.ShapeError, match=rf"{pool.__name__}: padding \(2, 2\) must be at most half the window"):
        pool(small, 3, padding=2)
    with pytest.raises(dg.ShapeError, match=rf"{pool.__name__} stride must be an int >= 1"):
        pool(small, 2, stride=0)


def test_max_pool_window_loop_vectorizes():
    """The 2-wide window axis is reduced innermost in the pooling view; the loop over the window
    runs outside the output's columns instead, so that loop vectorizes (strided loads)."""
    from drug.backends.llvm import bounds

    if bounds.enabled():
        pytest.skip("DRUG_BOUNDS_CHECK=1: the checks keep loops from vectorizing")
    g = dg.Graph()
    x = g.input("x", (None, 2, 28, 28))  # at 28 wide, LLVM left the window-innermost loop scalar
    fn = g.compile(outputs=dg.max_pool2d(x, 2), backend="llvm")
    asm = fn.asm()
    assert any(f"vmaxps\t%{reg}" in asm or f"vmaxps %{reg}" in asm for reg in ("ymm", "zmm")), "no vector max"
    xv = np.random.default_rng(0).standard_normal((5, 2, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(fn(x=xv), xv.reshape(5, 2, 14, 2, 14, 2).max(axis=(3, 5)))


torch_cases = [
    # (kind, input shape, kernel, stride, padding, count_include_pad)
    ("max", (2, 3, 28, 28), 3, 2, 1, True),  # the ResNet stem's pool
    ("max", (1, 2, 9, 7), (3, 2), (2, 1), (1, 0), True),
    ("max", (2, 1, 6, 6), 2, 1, 1, True),
    ("avg", (2, 3, 8, 9), 3, 2, 1, True),
    ("avg", (2, 3, 8, 9), 3, 2, 1, False),
    ("avg", (1, 2, 7, 10), (2, 4), (1, 3), (1, 2), False),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,shape,kernel,stride,padding,include", torch_cases)
def test_strided_padded_pooling_matches_torch(kind, shape, kernel, stride, padding, include, backend):
    torch = pytest.importorskip("torch", reason="PyTorch is the peer this test compares with")
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None,) + shape[1:])
    if kind == "max":
        y = dg.max_pool2d(x, kernel, stride, padding)
        reference = lambda t: torch.nn.functional.max_pool2d(t, kernel, stride, padding)  # noqa: E731
    else:
        y = dg.avg_pool2d(x, kernel, stride, padding, count_include_pad=include)
        reference = lambda t: torch.nn.functional.avg_pool2d(t, kernel, stride, padding, count_include_pad=include)  # noqa: E731
    r = g.input("r", y.shape)
    (gx,) = dg.grad(dg.sum(y * r), [x])
    rng = np.random.default_rng(7)
    xv = rng.standard_normal(shape)
    t = torch.tensor(xv, requires_grad=True)
    expected = reference(t)
    rv = rng.standard_normal(tuple(expected.shape))
    (expected * torch.tensor(rv)).sum().backward()
    got, got_gx = g.compile(outputs=[y, gx], backend=backend)(x=xv, r=rv)
    np.testing.assert_allclose(got, expected.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_gx, t.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_overlapping_max_pool_shares_ties(backend):
    """A pixel that is the maximum of two overlapping windows collects both windows' shares; tied
    maxima of one window split it."""
    g = dg.Graph(dtype="float64")
    x = g.input("x", (1, 1, 1, 5))
    (gx,) = dg.grad(dg.sum(dg.max_pool2d(x, (1, 3), stride=(1, 1))), [x])
    got = g.compile(outputs=gx, backend=backend)(x=np.array([[[[1.0, 4.0, 2.0, 4.0, 0.0]]]]))
    # windows [1 4 2] -> 4 at 1; [4 2 4] -> ties at 1 and 3; [2 4 0] -> 4 at 3
    np.testing.assert_array_equal(got, [[[[0.0, 1.5, 0.0, 1.5, 0.0]]]])


def test_resnet_stem_pool_is_native_and_vectorized():
    """The 3x3 stride-2 max pool with padding 1 runs in its own native kernel, whose loops over
    output columns use vector max instructions."""
    from drug.backends.llvm import bounds

    if bounds.enabled():
        pytest.skip("DRUG_BOUNDS_CHECK=1: the checks keep loops from vectorizing")
    g = dg.Graph()
    x = g.input("x", (None, 16, 28, 28))
    fn = g.compile(outputs=dg.max_pool2d(x, 3, stride=2, padding=1), backend="llvm")
    assert [k.kind for k in fn.program.schedule.kernels] == ["op"]
    asm = fn.asm()
    assert any(f"vmaxps\t%{reg}" in asm or f"vmaxps %{reg}" in asm for reg in ("ymm", "zmm")), "no vector max"
    xv = np.random.default_rng(0).standard_normal((3, 16, 28, 28)).astype(np.float32)
    padded = np.pad(xv, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    want = np.max([padded[:, :, i : i + 27 : 2, j : j + 27 : 2] for i in range(3) for j in range(3)], axis=0)
    np.testing.assert_array_equal(fn(x=xv), want)

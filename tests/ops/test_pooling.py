"""Local pooling (`dg.max_pool2d`, `dg.avg_pool2d`): a reshape into windows and a reduction over two
axes, so the checks are that this composition computes NumPy's window max/mean (remainders dropped,
like PyTorch), that its gradient matches finite differences with both backends, and that the native
backend runs it without the Python callback.

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
    with pytest.raises(dg.ShapeError, match=rf"{pool.__name__}: window \(5, 5\) does not fit .*\(None, 1, 4, 4\)"):
        pool(g.input("small", (None, 1, 4, 4)), 5)


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

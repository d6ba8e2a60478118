"""Native convolution and padding kernels (im2col / col2im around GEMMs) against the NumPy reference.

Tolerances: every compared value is a sum of products (the convolution and its adjoints are linear
in each argument), summed in a different order by BLAS than by NumPy. Whatever the order, a float
sum of n terms is off by at most about n * eps * sum(|terms|) (Higham's gamma_n bound), so each
element is compared with `scale`, the same computation on |x|, |w|, |r| (which is exactly
sum(|terms|) per element), and not with its own value, which may cancel to ~0. The longest sums
here have a few hundred terms (the filter gradient sums over batch and output pixels):
float64 at 1e-10 * scale leaves a margin of ~1000x over the bound; float32 at 1e-4 * scale is
about 2 * 700 * 6e-8, the bound for both sides' rounding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import drug as dg
from drug.backends.llvm.kernels.conv import (
    BAND_MIN_WORK,
    DIRECT_MIN_WIDTH,
    _adjoint,
    _direct,
    _direct_filter,
    _Geometry,
)
from drug.ops.conv import PAD_MODES, Conv2D, Conv2DBias, Conv2DGradFilter, ConvTranspose2D, Pad, PadGrad, same_pads

NATIVE_OPS = (Conv2D, Conv2DBias, ConvTranspose2D, Conv2DGradFilter, Pad, PadGrad)
TOLERANCE = {"float64": 1e-10, "float32": 1e-4}


def conv_problem(n, c, o, hw, k_hw, stride, padding, mode, dtype, seed=0):
    """y = conv2d(x, w), the loss sum(y * r) and its gradients w.r.t. x and w, with feeds."""
    g = dg.Graph(dtype=dtype)
    x = g.input("x", (None, c) + hw)
    w = g.input("w", (o, c) + k_hw)
    y = dg.conv2d(x, w, stride=stride, padding=padding, pad_mode=mode)
    r = g.input("r", (None,) + y.shape[1:])
    gx, gw = dg.grad(dg.sum(y * r), [x, w])
    rng = np.random.default_rng(seed)
    shapes = {"x": (n, c) + hw, "w": (o, c) + k_hw, "r": (n,) + y.shape[1:]}
    feeds = {name: rng.standard_normal(shape).astype(dtype) for name, shape in shapes.items()}
    return g, [y, gx, gw], feeds


def assert_native_kernels(fn):
    """Every convolution and padding node runs in its own native kernel, none through a callback."""
    found = set()
    for kernel in fn.program.schedule.kernels:
        for node in kernel.nodes:
            if isinstance(node.op, NATIVE_OPS):
                assert kernel.kind == "op", f"{node.op.name} runs in a {kernel.kind} kernel"
                found.add(type(node.op))
    return found


def check_against_reference(g, outputs, feeds, dtype):
    native = g.compile(outputs=outputs, backend="llvm")
    reference = g.compile(outputs=outputs, backend="numpy")
    found = assert_native_kernels(native)
    assert {Conv2D, ConvTranspose2D, Conv2DGradFilter} <= found
    got, want = native(**feeds), reference(**feeds)
    scales = reference(**{name: np.abs(value) for name, value in feeds.items()})
    for name, a, b, scale in zip(("y", "dx", "dw"), got, want, scales):
        assert a.shape == b.shape and a.dtype == np.dtype(dtype)
        error = np.abs(a.astype(np.float64) - b)
        bound = TOLERANCE[dtype] * scale.astype(np.float64) + np.finfo(dtype).tiny
        worst = np.unravel_index(np.argmax(error - bound), error.shape)
        assert np.all(error <= bound), f"{name}{worst}: native {a[worst]}, reference {b[worst]}, scale {scale[worst]}"
    return found


@st.composite
def conv_cases(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    padding = draw(st.sampled_from(["valid", "same"]))
    hw = (draw(st.integers(max(kh, 3), 13)), draw(st.integers(max(kw, 3), 13)))  # reflect needs size > pad
    return dict(
        n=draw(st.sampled_from([1, 2, 3, 5])),
        c=draw(st.integers(1, 3)),
        o=draw(st.integers(1, 4)),
        hw=hw,
        k_hw=(kh, kw),
        stride=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
        padding=padding,
        mode=draw(st.sampled_from(PAD_MODES)),
        seed=draw(st.integers(0, 2**16)),
    )


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=15, deadline=None)
@given(case=conv_cases())
def test_conv_matches_reference(dtype, case):
    g, outputs, feeds = conv_problem(dtype=dtype, **case)
    found = check_against_reference(g, outputs, feeds, dtype)
    padded = case["padding"] == "same" and any(map(any, same_pads(case["hw"], case["k_hw"], case["stride"])))
    # zero padding is part of the convolution kernels; the other modes pad in a kernel of their own
    assert ({Pad, PadGrad} <= found) == (padded and case["mode"] != "zeros")


@pytest.mark.parametrize(
    "n, hw, k_hw, stride, layout",
    [
        (3, (24, 26), (3, 3), (1, 1), "in place"),  # a wide image: one per GEMM, no staging copies
        (37, (24, 26), (3, 3), (1, 1), "in place"),  # filter gradient: several chunks per task, a short last task
        (7, (10, 10), (3, 3), (1, 1), "partial"),  # small images side by side; a shorter last chunk
        (13, (9, 11), (2, 4), (2, 1), "partial"),
    ],
)
@pytest.mark.parametrize("mode", PAD_MODES)
def test_conv_chunking(n, hw, k_hw, stride, layout, mode):
    """Both GEMM layouts (images in place / staged side by side), a partial last chunk, and more
    chunks than the filter gradient has tasks."""
    g, outputs, feeds = conv_problem(n, 2, 3, hw, k_hw, stride, "same", mode, "float64")
    conv = outputs[0]
    chunk = _Geometry.of(conv.inputs[0].shape, (3, 2) + k_hw, conv.op, "float64").chunk
    assert chunk == 1 if layout == "in place" else 1 < chunk < n and n % chunk
    check_against_reference(g, outputs, feeds, "float64")


@pytest.mark.parametrize("n", [1, 2, 3, 9])
@pytest.mark.parametrize("stride, dilation, groups, padding", [(1, 1, 1, "same"), (2, 1, 2, "valid"), (1, 2, 4, 2)])
def test_conv_of_a_small_batch_in_bands(n, stride, dilation, groups, padding):
    """A batch with fewer images than tasks wanted cuts each image into bands of output rows (one
    task each: its rows' im2col and GEMM); every band, group and stride lands where it should."""
    g = dg.Graph(dtype="float32")
    x = g.input("x", (None, 16, 48, 49))
    w = g.input("w", (32, 16 // groups, 3, 3))
    y = dg.conv2d(x, w, stride=stride, dilation=dilation, groups=groups, padding=padding)
    geo = _Geometry.of(x.shape, w.shape, y.op, "float32")
    assert geo.chunk == 1 and min(geo.out_hw[0], geo.pixels * geo.rows * geo.outs // BAND_MIN_WORK) >= 2
    rng = np.random.default_rng(n)
    feeds = {"x": rng.standard_normal((n, 16, 48, 49)).astype(np.float32)}
    feeds["w"] = rng.standard_normal(w.shape).astype(np.float32)
    native, reference = (g.compile(outputs=y, backend=b) for b in ("llvm", "numpy"))
    scale = reference(x=np.abs(feeds["x"]), w=np.abs(feeds["w"]))
    error = np.abs(native(**feeds).astype(np.float64) - reference(**feeds))
    assert np.all(error <= TOLERANCE["float32"] * scale)


@st.composite
def direct_cases(draw):
    """float32 convolutions drug's own kernel runs: stride 1 along rows, output rows >= 16 wide."""
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    padding = draw(st.sampled_from(["valid", "same", 1, ((0, 2), (3, 1))]))
    return dict(
        n=draw(st.sampled_from([1, 2, 3])),
        c=groups * draw(st.integers(1, 8)),  # the filter gradient's own kernel from 8 taps per group
        # up to a few row tiles, the last one partial; the filter gradient's narrow tile (a vector
        # of output channels) and its wide one, whole and partial, its transposed blocks likewise
        o=groups * draw(st.one_of(st.integers(1, 13), st.integers(14, 40))),
        # reflect padding (up to 3 pixels) needs a size larger than the pad
        hw=(draw(st.integers(max(dh * (kh - 1) + 1, 4), 20)), draw(st.integers(DIRECT_MIN_WIDTH + dw * (kw - 1), 45))),
        k_hw=(kh, kw),
        stride=(draw(st.integers(1, 3)), 1),
        dilation=(dh, dw),
        groups=groups,
        padding=padding,
        mode=draw(st.sampled_from(PAD_MODES)),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=40, deadline=None)
@given(case=direct_cases())
def test_direct_convolution_matches_reference(case):
    """drug's convolution kernels (no column matrix: the GEMM reads the padded image through a
    table of tap offsets, a vector's pixels from two or three output rows) against the reference,
    for a convolution, (stride 1) its input gradient, itself a convolution of the padded
    gradient by the flipped filter, and its filter gradient (rows of taps by the transposed
    output gradient): zero and other padding, dilation, groups, vertical strides, partial row and
    column tiles, a batch of one cut into bands; nothing written outside the outputs."""
    g = dg.Graph(dtype="float32")
    x = g.input("x", (None, case["c"]) + case["hw"])
    w = g.input("w", (case["o"], case["c"] // case["groups"]) + case["k_hw"])
    y = dg.conv2d(x, w, stride=case["stride"], padding=case["padding"], pad_mode=case["mode"],
                  dilation=case["dilation"], groups=case["groups"])  # fmt: skip
    r = g.input("r", (None,) + y.shape[1:])
    dx, dw = dg.grad(dg.sum(y * r), [x, w])
    geo = _Geometry.of(y.inputs[0].shape, w.shape, y.op, "float32")
    if geo.out_hw[1] < DIRECT_MIN_WIDTH:
        return  # "same" padding of a strided image; the case is the im2col kernel's
    assert _direct(geo)
    reach = [d * (k - 1) for k, d in zip(geo.k_hw, geo.dilation)]  # the adjoint's padding is reach - padding
    fits = all(max(pair) <= most for pair, most in zip(geo.pads, reach))
    assert (_adjoint(geo) is not None) == (geo.stride == (1, 1) and fits)
    rng = np.random.default_rng(case["seed"])
    feeds = {"x": rng.standard_normal((case["n"],) + x.shape[1:]).astype(np.float32)}
    feeds["w"] = rng.standard_normal(w.shape).astype(np.float32)
    feeds["r"] = rng.standard_normal((case["n"],) + r.shape[1:]).astype(np.float32)
    native, reference = (g.compile(outputs=[y, dx, dw], backend=b) for b in ("llvm", "numpy"))
    assert "sconv" in native.ir() and ("sconv_filter" in native.ir()) == _direct_filter(geo)
    outs = tuple(np.full((case["n"],) + node.shape[1:], np.nan, np.float32) for node in (y, dx))
    outs += (np.full(dw.shape, np.nan, np.float32),)
    native(**feeds, out=outs)
    scales = reference(**{name: np.abs(value) for name, value in feeds.items()})
    for out, want, scale in zip(outs, reference(**feeds), scales):
        error = np.abs(out.astype(np.float64) - want)
        assert np.all(error <= TOLERANCE["float32"] * scale + np.finfo(np.float32).tiny)


@st.composite
def channel_cases(draw):
    """float32 convolutions that go by channel tiles where the host has them (AVX-512): 14 or more
    output channels per group (tiles of 16 or 32 channels), rows from 7 wide (tiles of 7 to 14
    pixels, or 14 to 28, a row's last one moved back), depths past one block of 512 steps."""
    kh, kw = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 3, 5]))
    groups, dh = draw(st.sampled_from([1, 1, 2])), draw(st.integers(1, 2))
    return dict(
        n=draw(st.sampled_from([1, 2, 3])),
        c=groups * draw(st.integers(1, 24)),
        o=groups * draw(st.integers(14, 70)),
        hw=(draw(st.integers(dh * (kh - 1) + 1, 12)), draw(st.integers(max(DIRECT_MIN_WIDTH, 7) + kw - 1, 40))),
        k_hw=(kh, kw),
        stride=(draw(st.integers(1, 2)), 1),
        dilation=(dh, 1),
        groups=groups,
        padding=draw(st.sampled_from(["valid", "same"])),
        relu=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=40, deadline=None)
@given(case=channel_cases())
def test_convolution_by_channel_tiles_matches_reference(case):
    """drug's convolution by tiles of output channels (vectors of channels, broadcast pixels, the
    sums transposed into the output's rows at the end) against the reference: with its bias and
    relu finished in the kernel or not, in bands of rows for a small batch, groups, dilation,
    vertical strides, two blocks of the depth; nothing written outside the output."""
    g = dg.Graph(dtype="float32")
    x = g.input("x", (None, case["c"]) + case["hw"])
    w = g.input("w", (case["o"], case["c"] // case["groups"]) + case["k_hw"])
    bias = g.input("b", (case["o"],))
    conv = dg.conv2d(x, w, stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                     groups=case["groups"])  # fmt: skip
    y = conv + dg.reshape(bias, (case["o"], 1, 1))
    y = dg.relu(y) if case["relu"] else y
    geo = _Geometry.of(x.shape, w.shape, conv.op, "float32")
    rng = np.random.default_rng(case["seed"])
    feeds = {"x": rng.standard_normal((case["n"],) + x.shape[1:]).astype(np.float32)}
    feeds["w"] = rng.standard_normal(w.shape).astype(np.float32)
    feeds["b"] = rng.standard_normal(bias.shape).astype(np.float32)
    native, reference = (g.compile(outputs=y, backend=b) for b in ("llvm", "numpy"))
    if _direct(geo):
        assert "sconv" in native.ir()
    out = np.full((case["n"],) + y.shape[1:], np.nan, np.float32)
    native(**feeds, out=out)
    scale = reference(x=np.abs(feeds["x"]), w=np.abs(feeds["w"]), b=np.abs(feeds["b"]))
    error = np.abs(out.astype(np.float64) - reference(**feeds))
    assert np.all(error <= TOLERANCE["float32"] * scale + np.finfo(np.float32).tiny)


def test_conv_with_a_static_batch_axis():
    """Images counted from the input's own (static) first axis, not the step's batch size."""
    g = dg.Graph(dtype="float64")
    x = g.input("x", (3, 2, 6, 7))
    w = g.input("w", (4, 2, 3, 3))
    y = dg.conv2d(x, w, padding="same")
    r = g.input("r", y.shape)
    outputs = [y, *dg.grad(dg.sum(y * r), [x, w])]
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((3, 2, 6, 7)), "w": rng.standard_normal((4, 2, 3, 3))}
    feeds["r"] = rng.standard_normal(y.shape)
    check_against_reference(g, outputs, feeds, "float64")


@pytest.mark.parametrize("mode", PAD_MODES)
def test_pad_kernels(mode):
    """Pad and PadGrad alone, with uneven pads on each side."""
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 2, 5, 6))
    padded = Pad(((2, 1), (0, 3)), mode, (5, 6))(x)
    back = PadGrad(((2, 1), (0, 3)), mode, (5, 6))(padded * padded)
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((3, 2, 5, 6))}
    native = g.compile(outputs=[padded, back], backend="llvm")
    assert assert_native_kernels(native) == {Pad, PadGrad}
    for a, b in zip(native(**feeds), g.compile(outputs=[padded, back], backend="numpy")(**feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_benchmark_cnn_train_steps_match_numpy():
    """The benchmark CNN (conv 5x5 1->16 same, relu, conv 5x5 16->32 same, relu, global average
    pool, dense 10, Adam), at a smaller batch: five float32 train steps agree with the NumPy
    backend within the benchmark's own loss tolerance."""
    from drug.bench.peers.drug_impl import build_cnn
    from drug.bench.workloads import CNN

    workload = CNN(batch=16)
    data = workload.make_data()
    steps = {}
    for backend in ("llvm", "numpy"):
        g = dg.Graph(seed=0)
        fn = g.compile(loss=build_cnn(workload, data, g), optimizer=dg.Adam(lr=workload.lr), backend=backend)
        if backend == "llvm":
            # zero padding inside; the bias and relu finish the forward convolutions
            assert assert_native_kernels(fn) == {Conv2DBias, ConvTranspose2D, Conv2DGradFilter}
        steps[backend] = [fn(data.batches[i % len(data.batches)]) for i in range(5)]
    np.testing.assert_allclose(steps["llvm"], steps["numpy"], rtol=workload.rtol, atol=workload.atol)

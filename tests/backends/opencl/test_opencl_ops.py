"""The OpenCL backend against the NumPy backend, driven by the op registry: for every builtin op
with an example, the output and the gradients of sum(out * r) compiled with backend="opencl"
agree with backend="numpy" (float32, and float64 where the device has cl_khr_fp64), or the
compile is refused naming the node. Then the kernels' edge cases: special values, bad ids,
repeated ids, slices with negative steps, integer data, and ops that are refused."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import OPS_WITH_EXAMPLE, call, output_and_gradients
from hypothesis import given, settings
from hypothesis import strategies as st

import drug as dg
from drug.backends.opencl.lowering import refusal

pytestmark = pytest.mark.usefixtures("opencl")
# ops with OpenCL code (scalar rules or kernels): the registry test fails if one of them is refused
OPENCL_OPS = {
    "abs", "add", "assemble_slices", "broadcast_like", "broadcast_to", "cast", "clip", "concat", "contract_leading",
    "conv2d", "conv2d_grad_filter", "conv_transpose2d", "cos", "count", "div", "elu", "embedding", "embedding_grad",
    "equal", "erf", "exp", "gelu", "greater", "greater_equal", "leaky_relu", "less", "less_equal", "log",
    "logical_and", "logical_not", "logical_or", "logical_xor", "matmul", "max", "maximum", "min", "minimum", "mul",
    "neg", "not_equal", "one_hot", "ones_like", "pad", "pad_grad", "pow", "relu", "relu_grad", "reshape", "rsqrt",
    "sigmoid", "sign", "silu", "sin", "slice", "slice_grad", "softmax", "softmax_cross_entropy_rows", "softplus",
    "sqrt", "square", "stop_gradient", "sub", "sum", "sum_to", "tanh", "traced", "transpose", "where",
}  # fmt: skip

DIMS = st.lists(st.integers(1, 4), min_size=3, max_size=3)
SEED = st.integers(0, 2**32 - 1)
# Every distinct shape is a new program for the device's compiler (~0.1-0.2 s a kernel on pocl, cached
# on disk afterwards): a few derandomized examples per op keep the suite's time bounded and repeatable.
FEW = settings(max_examples=4, deadline=None, derandomize=True)

# Tolerances relative to the largest magnitude expected (as in tests/backends/llvm/test_native_ops.py):
# float64 kernels differ from NumPy in summation order and in the device's exp/log/tanh (a few ulps);
# float32 also in CLBlast's blocked GEMM sums, ~n * eps * sum|x| for the few dozen terms here.
RTOL = {"float64": 1e-10, "float32": 1e-5}


def assert_close(got, want, dtype: str, what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, f"{what}: {got.shape} {got.dtype} vs {want.dtype}"
    if got.dtype.kind != "f":  # bools and integers (comparisons, casts) match exactly
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=RTOL[dtype] * scale, err_msg=what)


def both(g, outputs):
    return g.compile(outputs=outputs, backend="opencl"), g.compile(outputs=outputs, backend="numpy")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", OPS_WITH_EXAMPLE)
@FEW
@given(dims=DIMS, seed=SEED, int_dtype=st.sampled_from(["int32", "int64"]))
def test_opencl_matches_numpy(name, dtype, dims, seed, int_dtype, opencl):
    if dtype == "float64" and not opencl.fp64:
        pytest.skip(f"{opencl.title} has no cl_khr_fp64")
    g, out, targets, labels, feeds = output_and_gradients(name, dtype, dims, int_dtype, np.random.default_rng(seed))
    if refusal(out) is not None:  # an op without OpenCL code is refused by name, never run elsewhere
        assert name not in OPENCL_OPS, f"op '{name}' should run on OpenCL: {refusal(out)}"
        with pytest.raises(dg.GraphError, match=rf"node '{re.escape(out.label)}'.*cannot run on the opencl backend"):
            g.compile(outputs=targets, backend="opencl")
        return
    device, reference = both(g, targets)
    got, want = call(device, feeds), call(reference, feeds)
    for label, a, b in zip(labels, got, want):
        assert_close(a, b, dtype, f"{name} {dtype}: {label}")


@pytest.mark.parametrize("out_dtype", ["float32", "int32", "int64"])
def test_one_hot(out_dtype):
    g = dg.Graph()
    labels = g.input("labels", (None,), dtype="int64")
    fn = g.compile(outputs=dg.one_hot(labels, 5, dtype=out_dtype), backend="opencl")
    values = np.array([4, 0, 2, 2, 1, 3])
    np.testing.assert_array_equal(fn(labels=values), np.eye(5, dtype=out_dtype)[values])
    for bad in (5, -1):
        with pytest.raises(dg.ShapeError, match=f"label/id {bad} out of range"):
            fn(labels=np.array([0, bad, 1]))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_softmax_any_axis(axis, rng):
    g = dg.Graph(dtype="float32")
    x = g.input("x", (None, 4, 5))
    xv = (rng.standard_normal((3, 4, 5)) * 30).astype(np.float32)
    device, reference = both(g, dg.softmax(x, axis=axis))
    assert_close(device(x=xv), reference(x=xv), "float32", f"softmax axis {axis}")


def test_special_values():
    """NaN rows give NaN, huge logits do not overflow, -inf gives 0; max and relu propagate NaN."""
    g = dg.Graph(dtype="float32")
    x = g.input("x", (None, 3))
    xv = np.array([[1.0, np.nan, 2.0], [1e30, 1e30, -1e30], [0.0, -np.inf, 0.0]], np.float32)
    outputs = [dg.softmax(x), dg.relu(x), dg.max(x, 1), dg.min(x, 1), dg.sum(x, 0)]
    device, reference = both(g, outputs)
    for got, want in zip(device(x=xv), reference(x=xv)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(want), rtol=1e-6)


def test_reductions_over_any_axes(rng):
    """Every layout a loop kernel can take: rows, columns, middle axes, everything at once
    (one work group combining partial sums), and two reductions over different axes in one loop."""
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 5, 300))
    y = dg.exp(x * 0.01)
    outputs = [dg.sum(y, 2), dg.sum(y, 1), dg.max(y, (0, 2)), dg.mean(y), dg.sum(y, 0), dg.min(y, (1,), True)]
    device, reference = both(g, outputs)
    xv = rng.standard_normal((7, 5, 300))
    for got, want in zip(device(x=xv), reference(x=xv)):
        assert_close(got, want, "float64", "reduction")


def _classifier(int_dtype: str):
    """A train step reading labels: (graph, step, feeds for a list of 5 labels < 3)."""
    g = dg.Graph(dtype="float32", seed=0)
    x, y = g.input("x", (None, 4)), g.input("y", (None,), dtype=int_dtype)
    logits = x @ g.parameter("w", (4, 3)) + g.parameter("b", (3,), init="zeros")
    step = g.compile(loss=dg.softmax_cross_entropy(logits, y), optimizer=dg.Adam(lr=0.1), backend="opencl")
    xv = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    return g, step, lambda labels: {"x": xv, "y": np.array(labels, int_dtype)}


def _embedder(int_dtype: str):
    """A train step reading embedding ids: (graph, step, feeds for a list of 6 ids < 6, in pairs)."""
    g = dg.Graph(dtype="float32", seed=0)
    ids = g.input("ids", (None, 2), dtype=int_dtype)
    h = dg.reshape(dg.embedding(ids, g.parameter("table", (6, 3))), (None, 6))
    loss = dg.mean(dg.tanh(h @ g.parameter("w", (6, 1))))
    step = g.compile(loss=loss, optimizer=dg.SGD(lr=0.5, momentum=0.9), backend="opencl")
    return g, step, lambda values: {"ids": np.array(values, int_dtype).reshape(-1, 2)}


# a step's builder, ids that work, where to put a bad one, the bound ids must stay below
BAD_ID_CASES = {"labels": (_classifier, [0, 1, 2, 1, 0], 2, 3), "embedding ids": (_embedder, [0, 5, 2, 2, 4, 1], 3, 6)}


@pytest.mark.parametrize("int_dtype", ["int32", "int64"])
@pytest.mark.parametrize("bad", ["bound", -1, "largest"])
@pytest.mark.parametrize("case", sorted(BAD_ID_CASES))
def test_bad_id_fails_the_step_and_changes_nothing(case, bad, int_dtype):
    build, good, at, bound = BAD_ID_CASES[case]
    g, step, feeds = build(int_dtype)
    bad = {"bound": bound, "largest": np.iinfo(int_dtype).max}.get(bad, bad)
    step(**feeds(good))
    before = [v.copy() for v in [*g.params.values(), *step.state.values()]]
    with pytest.raises(dg.ShapeError, match=f"label/id {bad} out of range"):
        step(**feeds(good[:at] + [bad] + good[at + 1 :]))
    assert step.step_count == 1
    for old, new in zip(before, [*g.params.values(), *step.state.values()]):
        np.testing.assert_array_equal(new, old)
    step(**feeds(good))  # the step still works afterwards
    assert not all(np.array_equal(old, new) for old, new in zip(before, g.params.values()))


def test_embedding_gradient_accumulates_repeated_ids():
    g = dg.Graph(dtype="float32")
    ids = g.input("ids", (None,), dtype="int64")
    table = g.input("table", (4, 2))
    r = g.input("r", (None, 2))
    (grad,) = dg.grad(dg.sum(dg.embedding(ids, table) * r), [table])
    rv = np.arange(10.0, dtype=np.float32).reshape(5, 2)
    got = g.compile(outputs=grad, backend="opencl")(
        ids=np.array([1, 3, 1, 1, 0]), table=np.zeros((4, 2), np.float32), r=rv
    )
    np.testing.assert_array_equal(got, [rv[4], rv[0] + rv[2] + rv[3], [0, 0], rv[1]])


def test_slices_transposes_and_concats(rng):
    """Negative steps, int indices, empty slices, the batch inside a transpose, and integer data."""
    g = dg.Graph(dtype="float32")
    x = g.input("x", (None, 7, 3))
    pairs = g.input("pairs", (2, None), dtype="int64")
    parts = [x[:, ::-2, 1], x[:, 5:1:-1], x[..., 2], x[:, 3:3]]
    outs = parts + [
        dg.concat([dg.reshape(p, (None, -1)) for p in parts[:3]], axis=1),
        dg.transpose(x, (1, 0, 2)),
        dg.concat([pairs[1:], pairs[:1]], axis=0),
        dg.transpose(pairs),
    ]
    xv = rng.standard_normal((2, 7, 3)).astype(np.float32)
    pv = np.array([[0, 3], [1, 2]])
    device, reference = both(g, outs)
    for got, want in zip(device(x=xv, pairs=pv), reference(x=xv, pairs=pv)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_size_one_constants_reach_op_kernels():
    """Loops inline scalar constants as literals; op kernels and GEMMs read their buffers."""
    g = dg.Graph(dtype="float32")
    x = g.input("x", (1, 3))
    c = g.constant(np.array([[5.0]]))
    ids = g.input("ids", (None,), dtype="int32")
    outs = [dg.concat([x, c], axis=1), dg.transpose(x) @ c, dg.embedding(ids, c), dg.softmax(c), x * c + 1.0]
    feeds = {"x": np.arange(3.0, dtype=np.float32).reshape(1, 3), "ids": np.zeros(4, np.int32)}
    device, reference = both(g, outs)
    for got, want in zip(device(**feeds), reference(**feeds)):
        np.testing.assert_array_equal(got, want)


def test_batched_matmul_and_static_batch_convolution(rng):
    g = dg.Graph(dtype="float32")
    a = g.input("a", (None, 3, 4))
    b = g.input("b", (None, 4, 2))
    images = g.input("images", (2, 3, 6, 5))
    w = g.input("w", (4, 3, 3, 2))
    conv = dg.conv2d(images, w, stride=(2, 1), padding="same", pad_mode="reflect")
    outs = [a @ b] + list(dg.grad(dg.sum(conv * conv), [images, w])) + [conv]
    feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in
             {"a": (5, 3, 4), "b": (5, 4, 2), "images": (2, 3, 6, 5), "w": (4, 3, 3, 2)}.items()}  # fmt: skip
    device, reference = both(g, outs)
    for got, want in zip(device(**feeds), reference(**feeds)):
        assert_close(got, want, "float32", "batched matmul / convolution")


def test_refused_ops_name_the_node():
    """Ops without an OpenCL kernel are refused when compiling: no silent fallback to the host."""
    g = dg.Graph(dtype="float32")
    xs = g.input("xs", (5, None, 3))
    h0 = g.input("h0", (None, 3))
    final, _ = dg.scan(lambda h, x: (dg.tanh(h + x), h), h0, xs)
    with pytest.raises(dg.GraphError, match=r"op 'scan'.*cannot run on the opencl backend.*no OpenCL kernel"):
        g.compile(outputs=final, backend="opencl")
    a, b = g.input("a", (2, 1, 3, 4)), g.input("b", (5, 4, 2))
    with pytest.raises(dg.GraphError, match=r"op 'matmul'.*cannot run on the opencl backend.*broadcast"):
        g.compile(outputs=a @ b, backend="opencl")


def test_float64_refused_without_cl_khr_fp64(monkeypatch, opencl):
    device_class = type(opencl)
    monkeypatch.setattr(device_class, "fp64", property(lambda self: False))
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 3))
    with pytest.raises(dg.GraphError, match=r"node .*'exp'.* is float64.*cl_khr_fp64"):
        g.compile(outputs=dg.exp(x), backend="opencl")

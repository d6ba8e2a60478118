"""The epilogue pass (compiler/epilogues.py): which conv2d or matmul + bias (+ relu) chains become
one conv2d_bias or matmul_bias node, that gradients still read what they need, and that the LLVM
backend's fused kernels compute what the NumPy backend computes from the unfused ops."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import drug as dg
from drug.compiler.build import build_program
from drug.compiler.epilogues import FuseEpilogues
from drug.compiler.simplify import simplify
from drug.ops.conv import Conv2D, Conv2DBias
from drug.ops.linalg import MatMul, MatMulBias


class Target:
    """Has a conv2d_bias and a matmul_bias kernel for every node, or for none."""

    def __init__(self, fuses: bool = True):
        self.fuses = fuses

    def has_kernel(self, node):
        return self.fuses and isinstance(node.op, (Conv2DBias, MatMulBias))


def fused(outputs, target=None, **compile_args):
    graph = outputs[0].graph
    program = simplify(build_program(graph, outputs=outputs, **compile_args))
    return FuseEpilogues(target or Target())(program)


def ops(program) -> list[str]:
    return [n.op.name for n in program.nodes if n.inputs and not n.op.is_view]


def conv_layer(g, x, outs=4, relu=True, bias_shape=None):
    w = g.parameter("w", (outs, x.shape[1], 3, 3))
    b = g.parameter("b", bias_shape or (outs,))
    y = dg.conv2d(x, w, padding="same")
    y = y + (b if bias_shape else dg.reshape(b, (outs, 1, 1)))
    return dg.relu(y) if relu else y


def test_conv_bias_relu_becomes_one_node():
    g = dg.Graph()
    x = g.input("x", (None, 2, 10, 10))
    program = fused([conv_layer(g, x)])
    assert ops(program) == ["conv2d_bias"]
    (node,) = [n for n in program.nodes if n.inputs]
    assert node.op.activation == "relu" and node.inputs[2].shape == (4,)  # the bias vector itself


def test_a_bias_without_relu_and_a_4d_bias_fuse_too():
    g = dg.Graph()
    x = g.input("x", (None, 2, 10, 10))
    program = fused([conv_layer(g, x, relu=False, bias_shape=(1, 4, 1, 1))])
    (node,) = [n for n in program.nodes if isinstance(n.op, Conv2DBias)]
    assert node.op.activation is None and node.inputs[2].shape == (4,)
    assert "add" not in ops(program)


def test_nothing_fuses_where_the_target_has_no_kernel_or_a_value_is_needed():
    g = dg.Graph()
    x = g.input("x", (None, 2, 10, 10))
    assert ops(fused([conv_layer(g, x)], Target(fuses=False))) == ["conv2d", "add", "relu"]
    w = g.parameter("w2", (4, 2, 3, 3))
    conv = dg.conv2d(x, w, padding="same")  # the convolution's own value is a result
    out = dg.relu(conv + dg.reshape(g.parameter("b2", (4,)), (4, 1, 1)))
    assert "conv2d_bias" not in ops(fused([out, conv]))
    other = dg.conv2d(x, w) + g.parameter("b3", (4, 8, 8))  # not a bias per channel
    assert "conv2d_bias" not in ops(fused([dg.relu(other)]))


def test_a_sum_read_beside_the_relu_is_finished_without_it():
    g = dg.Graph()
    x = g.input("x", (None, 2, 10, 10))
    pre = conv_layer(g, x, relu=False)
    program = fused([dg.relu(pre), dg.sigmoid(pre)])
    (node,) = [n for n in program.nodes if isinstance(n.op, Conv2DBias)]
    assert node.op.activation is None and ops(program).count("relu") == 1


def test_training_reads_the_relu_output_in_its_gradient():
    g = dg.Graph()
    x = g.input("x", (None, 2, 10, 10))
    loss = dg.mean(conv_layer(g, x))
    program = fused([loss], loss=loss, optimizer=dg.SGD(lr=0.1), training=True)
    (node,) = [n for n in program.nodes if isinstance(n.op, Conv2DBias)]
    assert not any(isinstance(n.op, Conv2D) for n in program.nodes)
    relu_grads = [n for n in program.nodes if n.op.name == "relu_grad"]
    assert relu_grads and all(r.inputs[1] is node for r in relu_grads)


def test_a_cnn_trains_like_the_numpy_backend():
    """Two conv layers with bias and relu, global pooling, a dense layer, Adam: five steps."""

    def cnn(x):
        h = dg.layers.Conv2D(6, 3, padding="same", activation=dg.relu, name="c1")(x)
        h = dg.layers.Conv2D(8, 3, padding="same", activation=dg.relu, name="c2")(h)
        return dg.layers.Dense(3, name="head")(dg.global_pool(h, "avg"))

    rng = np.random.default_rng(0)
    trains_like_numpy(cnn, rng.standard_normal((8, 1, 12, 12)), rng.integers(0, 3, 8), Conv2DBias, 2)


def trains_like_numpy(model, data: np.ndarray, labels: np.ndarray, fused_op: type, fused: int) -> None:
    """Five Adam steps of `model` (x -> logits) on the LLVM backend, where it has `fused` nodes of
    `fused_op`, lose what they lose on the NumPy backend."""
    losses = {}
    for backend in ("llvm", "numpy"):
        g = dg.Graph(seed=3)
        x, y = g.input("x", (None, *data.shape[1:])), g.input("y", (None, *labels.shape[1:]), dtype="int32")
        loss = dg.softmax_cross_entropy(model(x), y)
        train = g.compile(loss=loss, optimizer=dg.Adam(lr=0.01), backend=backend)
        if backend == "llvm":
            assert sum(isinstance(n.op, fused_op) for n in train.program.nodes) == fused
        losses[backend] = [float(train(x=data.astype(np.float32), y=labels.astype(np.int32))) for _ in range(5)]
    np.testing.assert_allclose(losses["llvm"], losses["numpy"], rtol=1e-4)


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 5),
    outs=st.integers(1, 20),
    height=st.integers(3, 12),
    width=st.integers(8, 40),
    kernel=st.sampled_from([1, 3, 5]),
    relu=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_fused_kernel_matches_numpy(batch, channels, outs, height, width, kernel, relu, seed):
    """Random layer sizes (output rows wide enough for drug's convolution kernel, tiles cut at
    any edge), float32, against the NumPy backend running conv2d, add and relu."""
    g = dg.Graph(seed=seed)
    x = g.input("x", (None, channels, height, width))
    w = g.parameter("w", (outs, channels, kernel, kernel))
    b = g.parameter("b", (outs,), init=np.random.default_rng(seed).standard_normal(outs))
    out = dg.conv2d(x, w, padding="same") + dg.reshape(b, (outs, 1, 1))
    out = dg.relu(out) if relu else out
    native = g.compile(outputs=[out], backend="llvm")
    assert any(isinstance(n.op, Conv2DBias) for n in native.program.nodes)
    images = np.random.default_rng(seed).standard_normal((batch, channels, height, width)).astype(np.float32)
    expected = g.compile(outputs=[out], backend="numpy")(x=images)
    np.testing.assert_allclose(native(x=images), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("relu", [True, False])
def test_a_nan_stays_nan(relu):
    g = dg.Graph()
    x = g.input("x", (None, 1, 4, 16))
    out = conv_layer(g, x, relu=relu)
    images = np.ones((1, 1, 4, 16), np.float32)
    images[0, 0, 1, 5] = np.nan
    native = g.compile(outputs=[out], backend="llvm", check_finite=False)
    assert any(isinstance(n.op, Conv2DBias) for n in native.program.nodes)
    got = native(x=images)
    expected = g.compile(outputs=[out], backend="numpy", check_finite=False)(x=images)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert np.isnan(got).any()


def dense_layer(g, x, outs=5, relu=True, bias_shape=None, name="d"):
    w = g.parameter(f"{name}_w", (x.shape[-1], outs))
    shape = bias_shape or (outs,)
    b = g.parameter(f"{name}_b", shape, init=np.random.default_rng(1).standard_normal(shape))
    y = x @ w + b
    return dg.relu(y) if relu else y


def test_dense_bias_relu_becomes_one_node():
    g = dg.Graph()
    x = g.input("x", (None, 7))
    program = fused([dense_layer(g, x)])
    assert ops(program) == ["matmul_bias"]
    (node,) = [n for n in program.nodes if n.inputs]
    assert node.op.activation == "relu" and node.inputs[2].shape == (5,)
    program = fused([dense_layer(g, x, relu=False, bias_shape=(1, 5), name="e")])
    (node,) = [n for n in program.nodes if isinstance(n.op, MatMulBias)]
    assert node.op.activation is None and node.inputs[2].shape == (5,) and "add" not in ops(program)


def test_a_fused_node_is_named_after_what_it_replaces():
    """Profiles and errors show the nodes the user made (their labels), or the layer that made them."""
    g = dg.Graph()
    x = g.input("x", (None, 7))
    product = x @ g.parameter("w", (7, 5))
    added = product + g.parameter("b", (5,))
    out = dg.relu(added)
    (node,) = [n for n in fused([out]).nodes if isinstance(n.op, MatMulBias)]
    assert node.call.kind == "fusion" and str(node.call) == f"fusion of {product.label}, {added.label}, {out.label}"
    assert f"in the fusion of {product.label}" in node.where
    layer = dg.layers.Dense(3, activation=dg.relu, name="fc")(x)
    (node,) = [n for n in fused([layer]).nodes if isinstance(n.op, MatMulBias)]
    assert str(node.call) == "layer 'fc' (Dense)"


def test_no_matmul_bias_for_batched_weights_a_needed_product_or_a_bias_per_row():
    g = dg.Graph()
    x = g.input("x", (None, 3, 4))
    batched = x @ g.parameter("wb", (1, 4, 5)) + g.parameter("bb", (5,))  # a batch of weight matrices
    assert "matmul_bias" not in ops(fused([dg.relu(batched)]))
    w = g.parameter("w", (4, 5))
    product = x @ w
    assert "matmul_bias" not in ops(fused([dg.relu(product + g.parameter("b", (5,))), product]))
    per_row = x @ w + g.parameter("rows", (3, 1))
    assert "matmul_bias" not in ops(fused([per_row]))


def test_training_a_dense_layer_reads_the_relu_output_in_its_gradient():
    g = dg.Graph()
    x = g.input("x", (None, 7))
    loss = dg.mean(dense_layer(g, x))
    program = fused([loss], loss=loss, optimizer=dg.SGD(lr=0.1), training=True)
    (node,) = [n for n in program.nodes if isinstance(n.op, MatMulBias)]
    assert not any(isinstance(n.op, MatMul) and n.inputs[1].ndim == 2 and n.inputs[0].ndim == 2
                   and n.inputs[1].shape == (7, 5) for n in program.nodes)  # fmt: skip
    relu_grads = [n for n in program.nodes if n.op.name == "relu_grad"]
    assert relu_grads and all(r.inputs[1] is node for r in relu_grads)


@pytest.mark.parametrize("batch", [3, 300])  # one thread finishes the product, or each task its block
def test_an_mlp_trains_like_the_numpy_backend(batch):
    """Dense layers with bias and relu on 2-D and 3-D inputs, Adam: five steps."""

    def mlp(x):
        h = dg.layers.Dense(160, activation=dg.relu, name="d1")(x)
        h = dg.reshape(dg.layers.Dense(64, activation=dg.relu, name="d2")(h), (None, 256))
        return dg.reshape(dg.layers.Dense(12, name="head")(h), (None, 4, 3))

    rng = np.random.default_rng(0)
    trains_like_numpy(mlp, rng.standard_normal((batch, 4, 96)), rng.integers(0, 3, (batch, 4)), MatMulBias, 3)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.sampled_from([1, 2, 5, 33, 260, 700]),
    inner=st.sampled_from([1, 3, 64, 300]),
    outs=st.sampled_from([1, 7, 40, 130, 600]),
    transposed=st.booleans(),
    relu=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_fused_dense_matches_numpy(rows, inner, outs, transposed, relu, seed):
    """Products small enough for one thread and large enough to be shared out by rows or by
    columns, `x` read transposed or not, float32, against the NumPy backend's unfused ops."""
    rng = np.random.default_rng(seed)
    g = dg.Graph(seed=seed)
    x = g.input("x", (inner, None)) if transposed else g.input("x", (None, inner))
    w = g.parameter("w", (inner, outs))
    b = g.parameter("b", (outs,), init=rng.standard_normal(outs))
    out = (dg.transpose(x) if transposed else x) @ w + b
    out = dg.relu(out) if relu else out
    native = g.compile(outputs=[out], backend="llvm")
    assert any(isinstance(n.op, MatMulBias) for n in native.program.nodes)
    feed = rng.standard_normal((inner, rows) if transposed else (rows, inner)).astype(np.float32)
    expected = g.compile(outputs=[out], backend="numpy")(x=feed)
    np.testing.assert_allclose(native(x=feed), expected, rtol=1e-4, atol=1e-4 * max(np.abs(expected).max(), 1))


@pytest.mark.parametrize("relu", [True, False])
def test_a_nan_stays_nan_in_a_dense_layer(relu):
    g = dg.Graph()
    x = g.input("x", (None, 6))
    out = dense_layer(g, x, relu=relu)
    feed = np.ones((3, 6), np.float32)
    feed[1, 2] = np.nan
    native = g.compile(outputs=[out], backend="llvm", check_finite=False)
    assert any(isinstance(n.op, MatMulBias) for n in native.program.nodes)
    got = native(x=feed)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(feed).any(axis=1, keepdims=True).repeat(5, axis=1))

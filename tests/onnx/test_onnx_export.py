"""drug.onnx.export: drug's example models, trained briefly on the shipped MNIST, written as ONNX give
drug's predictions in onnxruntime; a graph using many of drug's ops (traced functions included)
exports at several opsets; the batch stays symbolic; export -> load gives the model back."""

from __future__ import annotations

import math
import sys

import pytest

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (make install-onnx)")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (make install-onnx)")

import numpy as np  # noqa: E402
from conftest import EXAMPLES  # noqa: E402
from onnx_models import ATOL, RTOL, run_onnxruntime  # noqa: E402

import drug as dg  # noqa: E402
import drug.onnx  # noqa: E402
from drug.datasets import mnist  # noqa: E402

sys.path.insert(0, str(EXAMPLES))
import gan_mnist  # noqa: E402
import mnist_conv  # noqa: E402
import mnist_dense  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    x, y = mnist("train")
    return x[:512], y[:512]


def train_briefly(graph, loss, x, y, steps=8, batch=64):
    train = graph.compile(loss=loss, optimizer=dg.Adam(lr=3e-3))
    for step in range(steps):
        idx = slice(step * batch, (step + 1) * batch)
        train(x=x[idx], y=y[idx])


def assert_onnxruntime_predicts_like_drug(predict, path, feeds):
    model = drug.onnx.export(predict, path)
    expected = predict(**feeds)
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    got = run_onnxruntime(model, feeds)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)
    return model


def test_mnist_dense_example(digits, tmp_path):
    x, y = digits
    graph, logits, loss = mnist_dense.build([64, 32], seed=0)
    train_briefly(graph, loss, x.reshape(len(x), 784), y)
    predict = graph.compile(outputs=logits)
    feeds = {"x": x[:100].reshape(100, 784)}
    model = assert_onnxruntime_predicts_like_drug(predict, tmp_path / "dense.onnx", feeds)
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", ""]
    assert {t.name for t in model.graph.initializer} >= set(graph.params)


def test_mnist_conv_example(digits, tmp_path):
    x, y = digits
    graph, logits, loss = mnist_conv.build([4, 8], "max", "max", seed=0)
    train_briefly(graph, loss, x.reshape(len(x), 1, 28, 28), y, steps=4)
    predict = graph.compile(outputs=[logits, dg.softmax(logits)])
    assert_onnxruntime_predicts_like_drug(predict, tmp_path / "conv.onnx", {"x": x[:50].reshape(50, 1, 28, 28)})


def test_gan_example_generator_with_traced_activations(tmp_path):
    """The generator's leaky_relu is a traced @dg.elementwise function: exported through its rule."""
    gan = gan_mnist.build(16, [32], [32], seed=0)
    predict = gan.graph.compile(outputs=gan.fake)
    z = np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32)
    model = assert_onnxruntime_predicts_like_drug(predict, tmp_path / "gan.onnx", {"z": z})
    assert "Where" in {n.op_type for n in model.graph.node}


@dg.elementwise
def soft_clip(x):
    return x if abs(x) < 1.0 else (1.0 + math.log(abs(x))) * (1.0 if x > 0 else -1.0)


def many_ops_graph(traced: bool = True):
    g = dg.Graph(seed=3)
    x = g.input("x", (None, 2, 6, 6))
    ids = g.input("ids", (None, 3), dtype="int32")
    conv = dg.layers.Conv2D(3, 3, padding="same", pad_mode="replicate", activation="sigmoid")(x)
    pooled = dg.avg_pool2d(conv, 2)  # (None, 3, 3, 3)
    flat = dg.reshape(dg.transpose(pooled, (0, 2, 3, 1)), (None, 27))
    table = g.parameter("table", (7, 5))
    embedded = dg.reshape(dg.embedding(ids, table), (None, 15))
    joined = dg.concat([flat[:, 1:20:3], embedded, flat[:, -2:]], axis=1)
    centered = joined - dg.mean(joined, axis=0)  # over the batch: divides by the run-time count
    h = dg.layers.Dense(8, activation="tanh")(centered) * 3.0
    h = soft_clip(h) if traced else h
    stats = dg.concat([dg.max(h, 1, keepdims=True), dg.min(h, 1, keepdims=True), dg.sum(h, 1, keepdims=True)], 1)
    scores = dg.softmax(dg.exp(h) / dg.sqrt(dg.global_pool(conv, "avg")[:, :1] + 1.0), axis=-1)
    return g, [scores, stats, dg.log(1.0 + dg.ops.ones_like(h) * 0.5 + h * h), h[:, 3]]


@pytest.mark.parametrize("opset", [13, drug.onnx.DEFAULT_OPSET, 21])
def test_many_ops_at_several_opsets(opset, tmp_path):
    g, outputs = many_ops_graph()
    rng = np.random.default_rng(1)
    for batch in (1, 6):
        feeds = {
            "x": rng.standard_normal((batch, 2, 6, 6)).astype(np.float32),
            "ids": rng.integers(0, 7, (batch, 3)).astype(np.int32),
        }
        model = drug.onnx.export(g, tmp_path / "many.onnx", outputs, opset=opset)
        assert model.opset_import[0].version == opset
        expected = g.compile(outputs=outputs)(**feeds)
        for got, want in zip(run_onnxruntime(model, feeds), expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_export_then_load_gives_the_model_back(tmp_path):
    # traced functions export as comparisons and Where, which drug imports once it has them as ops
    g, outputs = many_ops_graph(traced={"Less", "Where"} <= set(drug.onnx.SUPPORTED_OPS))
    path = tmp_path / "many.onnx"
    drug.onnx.export(g, path, outputs)
    imported = drug.onnx.load(path)
    assert set(g.params) <= set(imported.graph.params)
    for name in g.params:
        np.testing.assert_array_equal(imported.graph.params[name], g.params[name])
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((4, 2, 6, 6)).astype(np.float32), "ids": rng.integers(0, 7, (4, 3), np.int32)}
    again = imported.graph.compile(outputs=list(imported.outputs.values()))(**feeds)
    for got, want in zip(again, g.compile(outputs=outputs)(**feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    # and what load returned exports again (its outputs by default)
    model = drug.onnx.export(imported, None)
    assert [o.name for o in model.graph.output] == list(imported.outputs)


def test_buffers_and_constants_export_as_initializers(tmp_path):
    g = dg.Graph()
    x = g.input("x", (None, 3))
    scale = g.buffer("scale", np.array([1.0, 2.0, 3.0]))
    out = (x * scale + g.constant(np.array([0.5, 0.25, 0.0]))).named("scaled")
    model = drug.onnx.export(g.compile(outputs=out), tmp_path / "b.onnx")
    assert "scale" in {t.name for t in model.graph.initializer}
    assert [o.name for o in model.graph.output] == ["scaled"]
    feeds = {"x": np.ones((2, 3), np.float32)}
    np.testing.assert_allclose(run_onnxruntime(model, feeds)[0], [[1.5, 2.25, 3.0]] * 2)


def test_convolutions_pools_and_batch_norm_export(tmp_path):
    """Dilated, grouped and transposed convolutions, overlapping padded pools and batch norm (its
    inference form, from the running statistics) give drug's outputs in onnxruntime."""
    g = dg.Graph(seed=5)
    x = g.input("x", (None, 4, 9, 9))
    h = dg.conv2d(x, g.parameter("w1", (6, 2, 3, 3)), stride=(2, 1), padding=((1, 2), (0, 1)), dilation=2, groups=2)
    h = dg.batch_norm(h, g.parameter("s", (6,), init="ones"), g.parameter("b", (6,), init="zeros"))
    g.state["batch_norm1/running_mean"][...] = np.linspace(-0.5, 0.5, 6)
    g.state["batch_norm1/running_var"][...] = np.linspace(0.5, 2.0, 6)
    h = dg.max_pool2d(dg.relu(h), 3, stride=2, padding=1)
    up = dg.conv_transpose2d(h, g.parameter("w2", (6, 3, 3, 3)), stride=2, padding=1, output_padding=1)
    out = dg.avg_pool2d(up, 3, stride=1, padding=1, count_include_pad=False)
    predict = g.compile(outputs=out)
    feeds = {"x": np.random.default_rng(4).standard_normal((3, 4, 9, 9)).astype(np.float32)}
    assert_onnxruntime_predicts_like_drug(predict, tmp_path / "conv.onnx", feeds)

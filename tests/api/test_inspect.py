"""Looking at graphs and compiled functions: reprs, summary, DOT pictures, evaluate, DRUG_DEBUG."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import drug as dg


def mlp(seed=0):
    g = dg.Graph(seed=seed)
    x, y = g.input("x", (None, 784)), g.input("y", (None,), dtype="int32")
    h = dg.layers.Dense(256, "relu", name="fc1")(x)
    logits = dg.layers.Dense(10, name="fc2")(h)
    loss = dg.softmax_cross_entropy(logits, y).named("loss")
    return g, h, logits, loss


def test_graph_repr_counts_nodes_and_parameters():
    g, *_ = mlp()
    text = repr(g)
    assert text.startswith("<Graph: ") and "inputs ['x', 'y']" in text
    assert "4 parameters (203,530 values, 795 KiB)" in text and "float32" in text
    assert int(re.search(r"(\d+) nodes", text).group(1)) == len(g.nodes())


def test_parameter_store_repr():
    g, *_ = mlp()
    assert repr(g.params).startswith("ArrayStore(parameters: fc1/w (784, 256) float32, fc1/b (256,) float32")
    assert repr(g.state) == "ArrayStore(state buffers: none)"
    assert repr(g.params).endswith("; 203,530 values, 795 KiB)")


def test_optimizers_repr_by_their_own_name():
    assert repr(dg.Adam(1e-3)) == "Adam(lr=0.001, beta_momentum=0.9, beta_magnitude=0.999, epsilon=1e-08)"
    assert repr(dg.SGD(0.1, momentum=0.9)) == "SGD(lr=0.1, momentum=0.9)"
    assert repr(dg.RMSProp(0.01, beta=0.95)) == "RMSProp(lr=0.01, beta=0.95, epsilon=1e-08)"
    assert isinstance(dg.Adam(), dg.Optimizer) and dg.Adam(1e-3) == dg.Adam(1e-3) != dg.SGD(1e-3)


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_compiled_function_repr(backend):
    g, _, logits, loss = mlp()
    train = g.compile(loss=loss, optimizer=dg.Adam(3e-3), backend=backend)
    text = repr(train)
    assert text.startswith(f"<CompiledFunction train step: backend='{backend}'")
    assert "inputs=[x (None, 784) float32, y (None,) int32]" in text and "outputs=[loss ()]" in text
    assert "optimizer=Adam(lr=0.003," in text and "trains=4 parameters" in text
    assert ("kernels=" in text) == (backend == "llvm")
    predict = g.compile(outputs=logits, backend=backend)
    assert repr(predict).startswith("<CompiledFunction predictor:") and "optimizer" not in repr(predict)


def test_layer_repr():
    dense = dg.layers.Dense(16, "relu", name="fc")
    assert repr(dense) == "Dense(16, activation='relu', name='fc') (not built yet)"
    g = dg.Graph()
    dense(g.input("x", (None, 8)))
    assert repr(dense) == "Dense(16, activation='relu', name='fc'): fc/w (8, 16), fc/b (16,); 144 parameters"
    assert repr(dg.layers.GRUCell(4)).startswith("GRUCell(4")


def test_lr_reads_back_the_value_set():
    g, *_, loss = mlp()
    train = g.compile(loss=loss, optimizer=dg.Adam(1e-3), backend="numpy")
    assert train.lr == 1e-3
    train.lr = 3e-4
    assert train.lr == 3e-4
    assert train.state["hyper/lr"] == np.float32(3e-4)


def test_summary_lists_layers_shapes_and_parameters():
    g, *_ = mlp()
    summary = g.summary(batch=128)
    rows = {r.what: r for r in summary.rows}
    assert rows["fc1 (Dense)"].shape == "(None, 256)" and rows["fc1 (Dense)"].params == 784 * 256 + 256
    assert rows["fc2 (Dense)"].params == 256 * 10 + 10
    assert rows["softmax_cross_entropy"].output == "loss" and rows["softmax_cross_entropy"].shape == "()"
    assert [r.what for r in summary.rows][:2] == ["input", "input"]
    assert summary.parameters == 203_530 and summary.parameter_bytes == 4 * 203_530
    # forward values per example: fc1 matmul, add, relu (3 x 256), fc2 matmul and add (2 x 10), the row loss (1)
    assert summary.activation_bytes_per_example == 4 * (3 * 256 + 2 * 10 + 1)
    text = str(summary)
    assert "parameters: 203,530 (795 KiB)" in text and "at batch 128" in text
    assert re.search(r"fc1 \(Dense\)\s+fc1#\d+\s+\(None, 256\)\s+float32\s+200,960", text)


def test_summary_of_raw_graph_ops_and_of_some_outputs():
    g = dg.Graph()
    x = g.input("x", (None, 4))
    w = g.parameter("w", (4, 3))
    y = dg.relu(x @ w + g.parameter("b", (3,), init="zeros"))
    g.input("unused", (2,))
    rows = g.summary(outputs=y).rows
    assert [(r.what, r.params) for r in rows] == [
        ("input", 0), ("parameter", 12), ("matmul", 0), ("parameter", 3), ("add", 0), ("relu", 0)
    ]  # fmt: skip


def test_graph_to_dot_has_a_cluster_per_layer_and_every_edge():
    g, h, logits, loss = mlp()
    dot = g.to_dot(loss)
    assert dot.startswith("digraph drug {") and dot.rstrip().endswith("}")
    assert "label=\"layer 'fc1' (Dense)\"" in dot and 'label="softmax_cross_entropy()"' in dot
    edges = set(re.findall(r"n(\d+) -> n(\d+);", dot))
    matmul = h.inputs[0].inputs[0]  # relu(add(matmul(x, w), b))
    assert matmul.op.name == "matmul" and (str(g["x"].id), str(matmul.id)) in edges
    assert dot.count("peripheries=2") == 1  # the output
    assert dot.count("{") == dot.count("}")


def test_compiled_to_dot_has_one_cluster_per_kernel():
    g, *_, loss = mlp()
    train = g.compile(loss=loss, optimizer=dg.Adam(1e-3))
    dot = train.to_dot()
    assert len(re.findall(r"subgraph cluster_kernel\d+ \{", dot)) == train.kernel_count
    assert dot.count('label="update"') == 4 + 8 + 2  # parameters, Adam's moments, bias-correction powers
    reference = g.compile(loss=loss, optimizer=dg.Adam(1e-3), backend="numpy").to_dot()
    assert "cluster_kernel" not in reference and "->" in reference


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs the Graphviz program (apt-get install graphviz)")
def test_render_dot_writes_an_svg(tmp_path):
    pytest.importorskip("graphviz", reason="needs the graphviz package (pip install 'drug[graphviz]')")
    g, *_, loss = mlp()
    path = dg.render_dot(g.to_dot(loss), str(tmp_path / "graph.svg"))
    assert open(path).read().lstrip().startswith(("<?xml", "<svg"))


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_evaluate_an_intermediate_node(backend):
    g, h, logits, loss = mlp()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 784)).astype(np.float32)
    y = rng.integers(0, 10, 5).astype(np.int32)
    expected = np.maximum(x @ g.params["fc1/w"] + g.params["fc1/b"], 0)
    np.testing.assert_allclose(dg.evaluate(h, x=x, y=y), expected, rtol=1e-5, atol=1e-5)  # y is ignored
    np.testing.assert_allclose(h.eval(x=x), expected, rtol=1e-5, atol=1e-5)
    values = dg.evaluate([h, loss], {"x": x, "y": y})
    assert isinstance(values, tuple) and values[1].shape == ()
    train = g.compile(loss=loss, optimizer=dg.SGD(0.1), backend=backend)
    np.testing.assert_allclose(float(values[1]), train(x=x, y=y), rtol=1e-5)
    with pytest.raises(dg.GraphError, match=r"missing feed \['x'\]"):
        dg.evaluate(h, y=y)


def test_drug_debug_prints_every_pass_with_its_nodes():
    code = "import drug as dg\ng = dg.Graph(); x = g.input('x', (None, 2)); w = g.parameter('w', (2, 1))\n"
    code += "g.compile(loss=dg.mean(x @ w), optimizer=dg.SGD(0.1))"
    env = {**os.environ, "DRUG_DEBUG": "1", "DRUG_CACHE": "0"}
    err = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stderr
    counts = dict(re.findall(r"== after (\w+): (\d+) nodes", err))
    assert counts["verify"] == counts["shapes"] == "6"
    assert int(counts["autodiff"]) > 6 and int(counts["optimizer"]) > int(counts["autodiff"])
    assert "d mean#5 / d w = " in err.replace(re.search(r"mean#\d+", err).group(0), "mean#5")

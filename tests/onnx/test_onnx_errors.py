"""Bad input to drug.onnx: each a clear error naming the file and the node (and for export, the drug
node and op), raised before anything is returned."""

from __future__ import annotations

import re

import pytest

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (make install-onnx)")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (make install-onnx)")

import numpy as np  # noqa: E402
import onnx.helper as oh  # noqa: E402
from onnx_models import model, single_op, value  # noqa: E402

import drug as dg  # noqa: E402
import drug.onnx  # noqa: E402


def _saved(tmp_path, onnx_model, name="model.onnx"):
    path = tmp_path / name
    onnx.save(onnx_model, path)
    return path


def _mlp():
    params = {"w": np.ones((3, 4), np.float32), "b": np.zeros(3, np.float32)}
    return single_op("Gemm", {"x": ["N", 4]}, initializers=params, transB=1)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.9])
def test_truncated_file_names_the_file(tmp_path, fraction):
    data = _saved(tmp_path, _mlp()).read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(dg.GraphError, match=re.escape(str(path))):
        drug.onnx.load(path)


def test_malformed_and_missing_files(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x08\x07not a protobuf at all" * 7)
    with pytest.raises(dg.GraphError, match=re.escape(str(path))):
        drug.onnx.load(path)
    with pytest.raises(dg.GraphError, match="no such ONNX file"):
        drug.onnx.load(tmp_path / "missing.onnx")


def test_opsets_outside_the_range_are_refused(tmp_path):
    for opset, words in ((11, "older than 13"), (drug.onnx.MAX_OPSET + 1, f"newer than {drug.onnx.MAX_OPSET}")):
        graph = oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g", [value("x", ["N", 2])], [value("y", ["N", 2])])
        built = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
        path = _saved(tmp_path, built, f"opset{opset}.onnx")
        with pytest.raises(dg.GraphError, match=f"{re.escape(str(path))}: opset {opset} is {words}"):
            drug.onnx.load(path)


def test_dynamic_dims_other_than_the_batch_are_refused(tmp_path):
    path = _saved(tmp_path, single_op("Relu", {"x": ["N", "seq", 4]}))
    with pytest.raises(
        dg.GraphError, match=rf"{re.escape(str(path))}: input 'x' axis 1 is the dynamic dimension 'seq'"
    ):
        drug.onnx.load(path)
    graph, inputs, _ = drug.onnx.load(path, dims={"seq": 5})
    assert inputs["x"].shape == (None, 5, 4)


def test_initializer_dtype_drug_cannot_hold(tmp_path):
    """A float16 embedding table: the node reading it is named, with the initializer and its dtype."""
    nodes = [oh.make_node("Gather", ["table", "ids"], ["y"], name="lookup")]
    inputs = [value("ids", ["N", 3], onnx.TensorProto.INT64)]
    table = {"table": np.ones((5, 2), np.float16)}
    path = _saved(tmp_path, model(nodes, inputs, [value("y", ["N", 3, 2], onnx.TensorProto.FLOAT16)], table))
    pattern = (
        rf"{re.escape(str(path))}: node 'lookup' \(Gather\): value 'table' has dtype float16, which drug cannot hold"
    )
    with pytest.raises(dg.GraphError, match=pattern):
        drug.onnx.load(path)


def test_input_dtype_drug_cannot_hold():
    uint8 = model(
        [oh.make_node("Mul", ["x", "q"], ["y"])],
        [value("x", ["N", 3], onnx.TensorProto.UINT8)],
        [value("y", ["N", 3], onnx.TensorProto.UINT8)],
        {"q": np.ones(3, np.uint8)},
    )
    with pytest.raises(dg.GraphError, match=r"'test': input 'x' has dtype uint8, which drug cannot hold"):
        drug.onnx.load(uint8)


def test_a_known_value_of_a_foreign_dtype_names_the_node(tmp_path):
    """A float16 constant used as data: the consuming node is named, with the dtype."""
    nodes = [oh.make_node("Cast", ["x"], ["h"], to=onnx.TensorProto.FLOAT16), oh.make_node("Relu", ["h"], ["y"])]
    path = _saved(tmp_path, model(nodes, [value("x", ["N", 2])], [value("y", ["N", 2], onnx.TensorProto.FLOAT16)]))
    with pytest.raises(dg.GraphError, match=rf"{re.escape(str(path))}: node 'h' \(Cast\): .*float16"):
        drug.onnx.load(path)


def test_unsupported_op_names_node_op_type_and_the_supported_list(tmp_path):
    nodes = [oh.make_node("Relu", ["x"], ["r"], name="first"), oh.make_node("Hardmax", ["r"], ["y"], name="odd_one")]
    path = _saved(tmp_path, model(nodes, [value("x", ["N", 4])], [value("y", ["N", 4])]))
    with pytest.raises(dg.GraphError) as info:
        drug.onnx.load(path)
    message = str(info.value)
    assert f"{path}: node 'odd_one' (Hardmax): op Hardmax is not supported" in message
    assert all(op in message for op in drug.onnx.SUPPORTED_OPS)


def test_ops_of_other_domains_are_refused():
    node = oh.make_node("FusedGemm", ["x", "w"], ["y"], domain="com.microsoft", name="fused")
    graph = oh.make_graph([node], "g", [value("x", ["N", 2]), value("w", [2, 2])], [value("y", ["N", 2])])
    built = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("com.microsoft", 1)])
    with pytest.raises(dg.GraphError, match="node 'fused' \\(FusedGemm\\): ops of domain 'com.microsoft'"):
        drug.onnx.load(built)


def test_arithmetic_on_the_batch_size_is_refused():
    """Reshape to (batch * 2, ...) needs the batch size as a number at import time."""
    nodes = [
        oh.make_node("Shape", ["x"], ["s"]),
        oh.make_node("Mul", ["s", "two"], ["doubled"], name="times_two"),
        oh.make_node("Reshape", ["x", "doubled"], ["y"]),
    ]
    built = model(nodes, [value("x", ["N", 4])], [value("y", None)], {"two": np.array([2, 1], np.int64)})
    with pytest.raises(dg.GraphError, match=r"node 'times_two' \(Mul\): value 's' holds the batch size"):
        drug.onnx.load(built)


def test_unsupported_attribute_values_are_explained():
    built = single_op("MaxPool", {"x": ["N", 1, 6, 6]}, kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 2])
    with pytest.raises(dg.GraphError, match=r"\(MaxPool\): kernel \[2, 2\], strides \[2, 2\].*dilations \[2, 2\]"):
        drug.onnx.load(built)
    built = single_op("Dropout", {"x": ["N", 3]}, initializers={"r": np.array(0.5, np.float32)}, outputs=2)
    with pytest.raises(dg.GraphError, match=r"\(Dropout\): drug computes only its first 1 output"):
        drug.onnx.load(built)


def test_bad_arguments():
    with pytest.raises(dg.GraphError, match="initializers must be one of"):
        drug.onnx.load(_mlp(), initializers="weights")
    with pytest.raises(dg.GraphError, match="batch_dim must be"):
        drug.onnx.load(_mlp(), batch_dim=1.5)


def test_export_refuses_train_steps_losses_and_unknown_ops(tmp_path):
    g = dg.Graph()
    x = g.input("x", (None, 4))
    y = g.input("y", (None,), dtype="int32")
    logits = dg.layers.Dense(3)(x)
    loss = dg.softmax_cross_entropy(logits, y)
    with pytest.raises(dg.GraphError, match="export writes predictors"):
        drug.onnx.export(g.compile(loss=loss, optimizer=dg.SGD(0.1)), tmp_path / "a.onnx")
    with pytest.raises(dg.GraphError, match="evaluates a loss"):
        drug.onnx.export(g.compile(loss=loss), tmp_path / "b.onnx")
    with pytest.raises(dg.GraphError, match=r"\(op 'softmax_cross_entropy_rows'\) has no ONNX form; drug exports"):
        drug.onnx.export(g, tmp_path / "c.onnx", outputs=[loss])
    with pytest.raises(dg.GraphError, match="opset 12 is outside"):
        drug.onnx.export(g, tmp_path / "d.onnx", outputs=[logits], opset=12)
    with pytest.raises(dg.GraphError, match="needs the output nodes"):
        drug.onnx.export(g, tmp_path / "e.onnx")
    assert not any(tmp_path.iterdir())  # nothing written by a refused export

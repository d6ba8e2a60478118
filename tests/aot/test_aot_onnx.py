"""drug-compile model.onnx: an ONNX model (made here with onnx.helper) becomes a predictor library whose
predictions equal onnxruntime's, with the initializers as its named parameters."""

from __future__ import annotations

import ctypes
import json
import subprocess

import pytest

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (make install-onnx)")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (make install-onnx)")

import numpy as np  # noqa: E402
import onnx.helper as oh  # noqa: E402
from test_aot import DRUG_COMPILE, numpy_sgemm  # noqa: E402

rng = np.random.default_rng(7)


def cnn_model() -> onnx.ModelProto:
    """Conv (padded) + batch norm + relu + 2x2 max pool + flatten + Gemm, parameter names with dots."""
    params = {
        "conv.weight": rng.standard_normal((4, 2, 3, 3)).astype(np.float32) * 0.3,
        "conv.bias": rng.standard_normal(4).astype(np.float32) * 0.1,
        "bn.weight": rng.uniform(0.5, 1.5, 4).astype(np.float32),
        "bn.bias": rng.standard_normal(4).astype(np.float32) * 0.1,
        "bn.running_mean": rng.standard_normal(4).astype(np.float32) * 0.1,
        "bn.running_var": rng.uniform(0.5, 1.5, 4).astype(np.float32),
        "fc.weight": rng.standard_normal((3, 4 * 4 * 4)).astype(np.float32) * 0.2,
        "fc.bias": rng.standard_normal(3).astype(np.float32) * 0.1,
    }
    nodes = [
        oh.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], pads=[1, 1, 1, 1]),
        oh.make_node("BatchNormalization", ["c", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"], ["n"]),
        oh.make_node("Relu", ["n"], ["r"]),
        oh.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        oh.make_node("Flatten", ["p"], ["f"]),
        oh.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]
    graph = oh.make_graph(
        nodes,
        "cnn",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 2, 8, 8])],
        [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 3])],
        initializer=[onnx.numpy_helper.from_array(v, k) for k, v in params.items()],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def test_onnx_file_compiles_to_a_predictor_library(tmp_path):
    path = tmp_path / "cnn.onnx"
    model = cnn_model()
    onnx.save(model, path)
    sgemm, bits = numpy_sgemm()
    out = tmp_path / "lib"
    result = subprocess.run(
        [str(DRUG_COMPILE), str(path), "--out", str(out), "--blas-int", bits], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "cnn.json").read_text())
    assert list(manifest["functions"]) == ["predict"]
    assert {p["name"] for p in manifest["parameters"]} >= {"conv.weight", "fc.weight", "fc.bias"}

    lib = ctypes.CDLL(str(out / "libcnn.so"))
    lib.drug_cnn_create.argtypes, lib.drug_cnn_create.restype = [ctypes.c_void_p], ctypes.c_void_p
    lib.drug_cnn_predict.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    lib.drug_cnn_destroy.argtypes = [ctypes.c_void_p]
    handle = lib.drug_cnn_create(sgemm)
    x = rng.standard_normal((5, 2, 8, 8)).astype(np.float32)
    got = np.zeros((5, 3), np.float32)
    assert lib.drug_cnn_predict(handle, x.ctypes.data, 5, got.ctypes.data) == 0
    lib.drug_cnn_destroy(handle)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_onnx_file_errors_are_reported(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(onnx.ModelProto.SerializeToString(cnn_model())[:100])
    result = subprocess.run(
        [str(DRUG_COMPILE), str(path), "--out", str(tmp_path / "o")], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert f"drug-compile: error: {path}: not a readable ONNX model" in result.stderr
    result = subprocess.run(
        [str(DRUG_COMPILE), str(path), "--out", str(tmp_path / "o"), "--dim", "seq"], capture_output=True, text=True
    )
    assert result.returncode == 1 and "expected NAME=SIZE" in result.stderr

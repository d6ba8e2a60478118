"""The ONNX file of an `onnx` workload, written with onnx.helper from the workload's shared
parameters: the one file drug imports and onnxruntime runs."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper

from .workloads import MLP, Data, OnnxInference

OPSET = 17


def _gemm_layers(sizes, params, x: str, nodes: list) -> str:
    for i in range(1, len(sizes)):
        out = f"h{i}" if i < len(sizes) - 1 else "logits"
        nodes.append(oh.make_node("Gemm", [x, f"w{i}", f"b{i}"], [out + ("_linear" if i < len(sizes) - 1 else "")]))
        if i < len(sizes) - 1:
            nodes.append(oh.make_node("Relu", [out + "_linear"], [out]))
        x = out
    return x


def model_file(workload: OnnxInference, data: Data) -> Path:
    """The model written once per content into the temporary directory (each peer's worker process
    asks for it; the same parameters give the same file)."""
    content = model_bytes(workload, data)
    path = (
        Path(tempfile.gettempdir())
        / "drug-bench-onnx"
        / f"{workload.name}-{hashlib.sha1(content).hexdigest()[:12]}.onnx"
    )
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(content)
        os.replace(partial, path)
    return path


def model_bytes(workload: OnnxInference, data: Data) -> bytes:
    """The serialized model: an MLP (Gemm + Relu) or the CNN (Conv 'same' + Relu twice, global
    average pool, Gemm), input 'x' with a symbolic batch, output 'logits'."""
    m = workload.model
    nodes: list[onnx.NodeProto] = []
    if isinstance(m, MLP):
        _gemm_layers(m.sizes, data.params, "x", nodes)
    else:
        pad = m.kernel // 2
        for i, (weight, bias) in enumerate((("c1", "cb1"), ("c2", "cb2")), start=1):
            source = "x" if i == 1 else "r1"
            nodes.append(oh.make_node("Conv", [source, weight, bias], [f"conv{i}"], pads=[pad] * 4))
            nodes.append(oh.make_node("Relu", [f"conv{i}"], [f"r{i}"]))
        nodes.append(oh.make_node("GlobalAveragePool", ["r2"], ["pooled"]))
        nodes.append(oh.make_node("Flatten", ["pooled"], ["features"]))
        nodes.append(oh.make_node("Gemm", ["features", "w", "b"], ["logits"]))
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", *m.input_shape])
    logits = oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", m.classes])
    initializers = [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in data.params.items()]
    graph = oh.make_graph(nodes, workload.name, [x], [logits], initializer=initializers)
    opsets = [oh.make_opsetid("", OPSET)]
    model = oh.make_model(graph, opset_imports=opsets, ir_version=oh.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model)
    return model.SerializeToString()

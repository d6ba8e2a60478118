"""ONNX models made in the tests (onnx.helper, no downloads) and the two ways to run them: onnxruntime
(the oracle) and drug (import, compile, call)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnx.shape_inference
import onnxruntime as ort

import drug.onnx

FLOAT = onnx.TensorProto.FLOAT
# float32 results of two implementations that sum in different orders
RTOL, ATOL = 1e-5, 1e-5


def value(name: str, shape: Sequence[int | str] | None, elem_type: int = FLOAT) -> onnx.ValueInfoProto:
    if shape is None:  # left to shape inference
        return oh.make_empty_tensor_value_info(name)
    return oh.make_tensor_value_info(name, elem_type, list(shape))


def model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Mapping[str, np.ndarray] | None = None,
    opset: int = 18,
) -> onnx.ModelProto:
    tensors = [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()]
    graph = oh.make_graph(list(nodes), "test", list(inputs), list(outputs), initializer=tensors)
    opsets = [oh.make_opsetid("", opset)]
    built = oh.make_model(graph, opset_imports=opsets, ir_version=oh.find_min_ir_version_for(opsets))
    built = onnx.shape_inference.infer_shapes(built, strict_mode=True)  # types the outputs left untyped
    onnx.checker.check_model(built)
    return built


def single_op(
    op_type: str,
    inputs: Mapping[str, Sequence[int | str]],
    output_rank: int | None = None,
    initializers: Mapping[str, np.ndarray] | None = None,
    opset: int = 18,
    outputs: int = 1,
    **attrs,
) -> onnx.ModelProto:
    """One node over float inputs (dims named 'N' are the batch) and initializers (passed in the
    order of `inputs` then `initializers`; a name mapped to None is an omitted optional input)."""
    initializers = dict(initializers or {})
    order = list(inputs) + [k for k in initializers]
    present = {k: v for k, v in initializers.items() if v is not None}
    out_names = [f"y{i}" for i in range(outputs)]
    node = oh.make_node(op_type, [k if initializers.get(k, 0) is not None else "" for k in order], out_names, **attrs)
    return model([node], [value(k, s) for k, s in inputs.items()], [value(n, None) for n in out_names], present, opset)


def feeds_for(onnx_model: onnx.ModelProto, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs, the symbolic dimension (any name) bound to `batch`."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in onnx_model.graph.initializer}
    feeds = {}
    for v in onnx_model.graph.input:
        if v.name in initializers:
            continue
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in v.type.tensor_type.shape.dim]
        dtype = oh.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
        if dtype == np.bool_:
            feeds[v.name] = rng.uniform(size=shape) < 0.5
        else:
            feeds[v.name] = rng.uniform(0.2, 2.0, size=shape).astype(dtype) * rng.choice([-1, 1], size=shape).astype(
                dtype
            )
    return feeds


def run_onnxruntime(onnx_model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, dict(feeds))


def run_drug(
    onnx_model, feeds: Mapping[str, np.ndarray], backend: str | None = None, **load_options
) -> list[np.ndarray]:
    graph, _, outputs = drug.onnx.load(onnx_model, **load_options)
    predict = graph.compile(outputs=list(outputs.values()), backend=backend)
    result = predict(dict(feeds))
    return list(result) if isinstance(result, tuple) else [result]


def assert_same_as_onnxruntime(onnx_model, feeds, backend: str | None = None, **load_options) -> None:
    expected = run_onnxruntime(onnx_model, feeds)
    got = run_drug(onnx_model, feeds, backend, **load_options)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, g.dtype, e.shape, e.dtype)
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)

"""drug.onnx.load on models made with onnx.helper: every supported op against onnxruntime, shape
subgraphs folded at import, the batch dimension, initializers as parameters or constants."""

from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (make install-onnx)")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (make install-onnx)")

import numpy as np  # noqa: E402
import onnx.helper as oh  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from onnx_models import (  # noqa: E402
    assert_same_as_onnxruntime,
    feeds_for,
    model,
    run_drug,
    run_onnxruntime,
    single_op,
    value,
)

import drug as dg  # noqa: E402
import drug.onnx  # noqa: E402

rng = np.random.default_rng(0)


def w(*shape, positive=False):
    values = rng.uniform(0.5, 1.5, size=shape) if positive else rng.standard_normal(shape)
    return values.astype(np.float32)


def ints(*values):
    return np.array(values, np.int64)


# (id, model): one op each, inputs with a batch dimension 'N'
CASES = [
    ("add-broadcast", single_op("Add", {"a": ["N", 3, 4], "b": [4]})),
    ("sub", single_op("Sub", {"a": ["N", 4], "b": ["N", 4]})),
    ("mul-initializer", single_op("Mul", {"a": ["N", 2, 3]}, initializers={"s": w(2, 1)})),
    ("div", single_op("Div", {"a": ["N", 4]}, initializers={"d": w(4, positive=True)})),
    *[(op.lower(), single_op(op, {"x": ["N", 5]})) for op in ("Relu", "Sigmoid", "Tanh", "Neg", "Exp", "Identity")],
    ("sqrt", single_op("Sqrt", {"x": ["N", 5]})),  # inputs are made positive in the test
    ("log", single_op("Log", {"x": ["N", 5]})),
    ("softmax", single_op("Softmax", {"x": ["N", 3, 5]}, axis=1)),
    ("log-softmax", single_op("LogSoftmax", {"x": ["N", 7]})),
    ("matmul-2d", single_op("MatMul", {"a": ["N", 6]}, initializers={"b": w(6, 4)})),
    ("matmul-batched", single_op("MatMul", {"a": ["N", 3, 6], "b": ["N", 6, 2]})),
    ("matmul-vector", single_op("MatMul", {"a": ["N", 2, 6]}, initializers={"v": w(6)})),
    ("gemm", single_op("Gemm", {"a": ["N", 5]}, initializers={"b": w(3, 5), "c": w(3)}, transB=1)),
    (
        "gemm-alpha-beta-transA",
        single_op("Gemm", {"a": [5, "N"]}, initializers={"b": w(5, 3), "c": w(1, 3)}, transA=1, alpha=0.5, beta=2.0),
    ),
    ("conv", single_op("Conv", {"x": ["N", 2, 7, 6]}, initializers={"w": w(3, 2, 3, 3), "b": w(3)})),
    (
        "conv-pads-strides",
        single_op("Conv", {"x": ["N", 2, 9, 8]}, initializers={"w": w(4, 2, 3, 2)}, pads=[1, 0, 2, 1], strides=[2, 1]),
    ),
    (
        "conv-same-upper",
        single_op("Conv", {"x": ["N", 1, 7, 7]}, initializers={"w": w(2, 1, 4, 4)}, auto_pad="SAME_UPPER"),
    ),
    (
        "conv-same-lower",
        single_op(
            "Conv", {"x": ["N", 1, 8, 7]}, initializers={"w": w(2, 1, 4, 3)}, auto_pad="SAME_LOWER", strides=[2, 2]
        ),
    ),
    (
        "conv-dilated-grouped",
        single_op(
            "Conv",
            {"x": ["N", 4, 9, 8]},
            initializers={"w": w(6, 2, 3, 3), "b": w(6)},
            dilations=[2, 1],
            group=2,
            pads=[2, 1, 2, 1],
        ),
    ),
    ("conv-depthwise", single_op("Conv", {"x": ["N", 3, 6, 6]}, initializers={"w": w(3, 1, 3, 3)}, group=3)),
    (
        "conv-transpose",
        single_op(
            "ConvTranspose",
            {"x": ["N", 4, 5, 4]},
            initializers={"w": w(4, 3, 3, 2), "b": w(3)},
            strides=[2, 2],
            pads=[1, 0, 1, 0],
            output_padding=[1, 0],
        ),
    ),
    (
        "conv-transpose-grouped",
        single_op("ConvTranspose", {"x": ["N", 4, 3, 3]}, initializers={"w": w(4, 1, 2, 2)}, group=2),
    ),
    (
        "max-pool-overlapping",
        single_op("MaxPool", {"x": ["N", 2, 7, 7]}, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    ),
    *[
        (
            f"average-pool-padded-{include}",
            single_op(
                "AveragePool",
                {"x": ["N", 2, 6, 5]},
                kernel_shape=[3, 3],
                strides=[1, 2],
                pads=[1, 1, 1, 1],
                count_include_pad=include,
            ),
        )
        for include in (0, 1)
    ],
    ("max-pool", single_op("MaxPool", {"x": ["N", 3, 8, 7]}, kernel_shape=[2, 2], strides=[2, 2])),
    ("average-pool", single_op("AveragePool", {"x": ["N", 3, 6, 9]}, kernel_shape=[3, 3], strides=[3, 3])),
    ("global-average-pool", single_op("GlobalAveragePool", {"x": ["N", 3, 5, 4]})),
    ("global-max-pool", single_op("GlobalMaxPool", {"x": ["N", 3, 5, 4]})),
    (
        "pad-reflect",
        single_op("Pad", {"x": ["N", 2, 5, 5]}, initializers={"p": ints(0, 0, 1, 2, 0, 0, 2, 1)}, mode="reflect"),
    ),
    ("pad-zeros", single_op("Pad", {"x": ["N", 2, 4, 5]}, initializers={"p": ints(0, 0, 1, 1, 0, 0, 0, 3)})),
    ("reshape-zero-minus-one", single_op("Reshape", {"x": ["N", 4, 6]}, initializers={"s": ints(0, -1, 3)})),
    ("reshape-batch-minus-one", single_op("Reshape", {"x": ["N", 4, 6]}, initializers={"s": ints(-1, 24)})),
    ("transpose", single_op("Transpose", {"x": ["N", 2, 3, 4]}, perm=[0, 3, 1, 2])),
    ("flatten", single_op("Flatten", {"x": ["N", 2, 3, 4]}, axis=1)),
    ("concat", single_op("Concat", {"a": ["N", 2, 3], "b": ["N", 4, 3]}, axis=1)),
    (
        "concat-then-add",
        model(
            [oh.make_node("Concat", ["a", "b"], ["t"], axis=1), oh.make_node("Add", ["t", "c"], ["y0"])],
            [value("a", ["N", 3]), value("b", ["N", 2])],
            [value("y0", None)],
            {"c": w(1, 5)},
        ),
    ),
    (
        "slice-steps",
        single_op(
            "Slice",
            {"x": ["N", 10, 6]},
            initializers={"s": ints(8, 1), "e": ints(1, 6), "a": ints(1, 2), "t": ints(-2, 2)},
        ),
    ),
    (
        "slice-negative",
        single_op("Slice", {"x": ["N", 10]}, initializers={"s": ints(-4), "e": ints(-1), "a": ints(-1)}),
    ),
    ("expand", single_op("Expand", {"x": ["N", 1, 3]}, initializers={"s": ints(4, 1)})),
    (
        "expand-like",
        model(
            [oh.make_node("Shape", ["y"], ["s"]), oh.make_node("Expand", ["x", "s"], ["y0"])],
            [value("x", [1, 3]), value("y", ["N", 2, 3])],
            [value("y0", None)],
        ),
    ),
    ("split", single_op("Split", {"x": ["N", 7]}, initializers={"s": ints(3, 4)}, outputs=2, axis=1)),
    ("split-equal", single_op("Split", {"x": ["N", 6, 2]}, outputs=3, axis=1, num_outputs=3)),
    ("squeeze", single_op("Squeeze", {"x": ["N", 1, 4, 1]}, initializers={"a": ints(1, -1)})),
    ("unsqueeze", single_op("Unsqueeze", {"x": ["N", 4]}, initializers={"a": ints(1, -1)})),
    ("gather-scalar", single_op("Gather", {"x": ["N", 5, 3]}, initializers={"i": np.array(-2, np.int64)}, axis=1)),
    ("gather-vector", single_op("Gather", {"x": ["N", 5, 3]}, initializers={"i": ints(4, 0, 4)}, axis=1)),
    *[
        (f"{op.lower()}-{keep}", single_op(op, {"x": ["N", 3, 4]}, initializers={"a": ints(1, 2)}, keepdims=keep))
        for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin")
        for keep in (0, 1)
    ],
    ("reduce-mean-opset13", single_op("ReduceMean", {"x": ["N", 3, 4]}, opset=13, axes=[-1], keepdims=0)),
    ("reduce-max-over-batch", single_op("ReduceMax", {"x": ["N", 3]}, initializers={"a": ints(0)})),
    ("reduce-mean-all", single_op("ReduceMean", {"x": ["N", 3]}, keepdims=0)),
    (
        "batch-norm",
        single_op(
            "BatchNormalization",
            {"x": ["N", 3, 4, 4]},
            initializers={"s": w(3), "b": w(3), "m": w(3), "v": w(3, positive=True)},
            epsilon=1e-3,
        ),
    ),
    ("layer-norm", single_op("LayerNormalization", {"x": ["N", 3, 8]}, initializers={"s": w(8), "b": w(8)}, axis=-1)),
    ("layer-norm-2-axes", single_op("LayerNormalization", {"x": ["N", 3, 4]}, initializers={"s": w(3, 4)}, axis=1)),
    ("pow-2", single_op("Pow", {"x": ["N", 4]}, initializers={"p": np.array(2.0, np.float32)})),
    ("pow-half", single_op("Pow", {"x": ["N", 4]}, initializers={"p": np.array(0.5, np.float32)})),
    ("dropout", single_op("Dropout", {"x": ["N", 4]}, initializers={"r": np.array(0.3, np.float32)})),
    ("cast-same", single_op("Cast", {"x": ["N", 4]}, to=onnx.TensorProto.FLOAT)),
    # the ops of drug's transformer language: activations, comparisons, masks, casts
    *[(op.lower(), single_op(op, {"x": ["N", 5]})) for op in ("Erf", "Abs", "Sin", "Cos", "Sign", "Softplus")],
    ("gelu", single_op("Gelu", {"x": ["N", 5]}, opset=20)),
    ("gelu-tanh", single_op("Gelu", {"x": ["N", 5]}, opset=20, approximate="tanh")),
    ("leaky-relu", single_op("LeakyRelu", {"x": ["N", 5]}, alpha=0.2)),
    ("elu", single_op("Elu", {"x": ["N", 5]}, alpha=0.7)),
    ("max-3", single_op("Max", {"a": ["N", 3], "b": ["N", 3], "c": [3]})),
    ("min", single_op("Min", {"a": ["N", 3], "b": [3]})),
    ("clip", single_op("Clip", {"x": ["N", 4]}, initializers={"lo": np.float32(-0.5), "hi": np.float32(1.0)})),
    ("pow-tensor", single_op("Pow", {"x": ["N", 4]}, initializers={"p": w(4, positive=True)})),
    ("cast-to-int", single_op("Cast", {"x": ["N", 4]}, to=onnx.TensorProto.INT32)),
    *[
        (
            op.lower(),
            model(
                [oh.make_node(op, ["a", "b"], ["c"]), oh.make_node("Where", ["c", "a", "b"], ["y"])],
                [value("a", ["N", 4]), value("b", [4])],
                [value("y", None)],
            ),
        )
        for op in ("Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal")
    ],
    *[
        (
            op.lower(),
            model(
                [oh.make_node(op, ["p", "q"], ["y"])],
                [value("p", ["N", 3], onnx.TensorProto.BOOL), value("q", ["N", 3], onnx.TensorProto.BOOL)],
                [value("y", None)],
            ),
        )
        for op in ("And", "Or", "Xor")
    ],
    (
        "not",
        model([oh.make_node("Not", ["p"], ["y"])], [value("p", ["N", 3], onnx.TensorProto.BOOL)], [value("y", None)]),
    ),
    (
        "gather-run-time-indices",
        model(
            [oh.make_node("Gather", ["table", "ids"], ["y"], axis=1)],
            [value("ids", ["N", 2], onnx.TensorProto.INT64)],
            [value("y", None)],
            {"table": w(3, 5, 2)},
        ),
    ),
]


LOAD_OPTIONS = {"gemm-alpha-beta-transA": {"batch_dim": "N"}}  # the batch is axis 1 of the input there


def _positive_inputs(case_id: str, feeds: dict) -> dict:
    if case_id in ("sqrt", "log", "pow-half"):
        return {k: np.abs(v) for k, v in feeds.items()}
    return feeds


@pytest.mark.parametrize("case_id, onnx_model", CASES, ids=[c[0] for c in CASES])
def test_op_matches_onnxruntime(case_id, onnx_model):
    for batch in (1, 3):
        feeds = _positive_inputs(case_id, feeds_for(onnx_model, batch))
        options = LOAD_OPTIONS.get(case_id, {})
        assert_same_as_onnxruntime(onnx_model, feeds, initializers="constants", **options)
        assert_same_as_onnxruntime(onnx_model, feeds, initializers="parameters", **options)


def test_every_supported_op_has_a_case():
    covered = {node.op_type for _, m in CASES for node in m.graph.node} | {"Constant", "Shape", "Size"}
    assert set(drug.onnx.SUPPORTED_OPS) <= covered, sorted(set(drug.onnx.SUPPORTED_OPS) - covered)


def test_the_numpy_backend_imports_the_same():
    onnx_model = dict(CASES)["conv-pads-strides"]
    feeds = feeds_for(onnx_model, 2)
    np.testing.assert_allclose(
        run_drug(onnx_model, feeds, backend="numpy")[0], run_onnxruntime(onnx_model, feeds)[0], rtol=1e-5, atol=1e-5
    )


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(2, 9),
    start=st.integers(-12, 12),
    end=st.integers(-12, 12),
    step=st.sampled_from([-3, -2, -1, 1, 2, 3]),
)
def test_slice_matches_onnxruntime_for_random_bounds(n, start, end, step):
    onnx_model = single_op(
        "Slice", {"x": ["N", n, 2]}, initializers={"s": ints(start), "e": ints(end), "a": ints(1), "t": ints(step)}
    )
    feeds = feeds_for(onnx_model, 2)
    if run_onnxruntime(onnx_model, feeds)[0].size == 0:
        return  # an empty slice: drug has no zero-size tensors to compare
    assert_same_as_onnxruntime(onnx_model, feeds)


@settings(max_examples=15, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), data=st.data())
def test_broadcasting_binary_ops_match_onnxruntime(shape, data):
    other = shape[data.draw(st.integers(0, len(shape) - 1)) :]
    other = [data.draw(st.sampled_from([d, 1])) for d in other]
    op = data.draw(st.sampled_from(["Add", "Sub", "Mul", "Div"]))
    onnx_model = single_op(op, {"a": ["N", *shape]}, initializers={"b": w(*other, positive=True)})
    assert_same_as_onnxruntime(onnx_model, feeds_for(onnx_model, 2))


def test_shape_subgraphs_fold_with_the_batch():
    """x.view(x.size(0), -1) as exporters write it: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    nodes = [
        oh.make_node("Shape", ["x"], ["shape"]),
        oh.make_node("Constant", [], ["zero"], value=oh.make_tensor("zero", onnx.TensorProto.INT64, [], [0])),
        oh.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        oh.make_node("Unsqueeze", ["batch", "axes"], ["batch1"]),
        oh.make_node("Concat", ["batch1", "minus_one"], ["target"], axis=0),
        oh.make_node("Reshape", ["x", "target"], ["flat"]),
        oh.make_node("Relu", ["flat"], ["y"]),
    ]
    onnx_model = model(
        nodes,
        [value("x", ["batch_size", 2, 3])],
        [value("y", ["batch_size", 6])],
        {"axes": ints(0), "minus_one": ints(-1)},
    )
    graph, inputs, outputs = drug.onnx.load(onnx_model)
    assert inputs["x"].shape == (None, 2, 3) and outputs["y"].shape == (None, 6)
    for batch in (1, 5):
        feeds = feeds_for(onnx_model, batch)
        assert_same_as_onnxruntime(onnx_model, feeds)


def test_batch_dim_by_name_axis_or_none():
    onnx_model = single_op("MatMul", {"a": [3, "M", 4]}, initializers={"b": w(4, 2)})
    graph, inputs, _ = drug.onnx.load(onnx_model, batch_dim="M")
    assert inputs["a"].shape == (3, None, 4)
    feeds = feeds_for(onnx_model, 6)
    assert_same_as_onnxruntime(onnx_model, feeds, batch_dim="M")

    fixed = single_op("Relu", {"x": [2, 5]})
    _, inputs, _ = drug.onnx.load(fixed)  # batch_dim=0: a size fixed in the file becomes the batch
    assert inputs["x"].shape == (None, 5)
    _, inputs, _ = drug.onnx.load(fixed, batch_dim=None)
    assert inputs["x"].shape == (2, 5)
    assert_same_as_onnxruntime(fixed, feeds_for(fixed, 2), batch_dim=None)


def test_other_symbolic_dims_take_sizes_from_dims():
    onnx_model = single_op("Softmax", {"x": ["N", "seq", 4]}, axis=1)
    graph, inputs, outputs = drug.onnx.load(onnx_model, dims={"seq": 6})
    assert inputs["x"].shape == (None, 6, 4) and outputs["y0"].shape == (None, 6, 4)
    feeds = {"x": np.random.default_rng(1).standard_normal((3, 6, 4)).astype(np.float32)}
    assert_same_as_onnxruntime(onnx_model, feeds, dims={"seq": 6})


def _mlp_model():
    nodes = [
        oh.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        oh.make_node("Relu", ["h"], ["r"]),
        oh.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1),
    ]
    params = {"w1": w(16, 8) * 0.3, "b1": w(16) * 0.1, "w2": w(3, 16) * 0.3, "b2": w(3) * 0.1}
    return model(nodes, [value("x", ["N", 8])], [value("logits", ["N", 3])], params), params


def test_initializers_become_named_parameters_that_fine_tune():
    onnx_model, params = _mlp_model()
    graph, inputs, outputs = drug.onnx.load(onnx_model)
    assert sorted(graph.params) == sorted(params)
    for name, array in params.items():
        np.testing.assert_array_equal(graph.params[name], array)
    labels = graph.input("labels", (None,), dtype="int32")
    loss = dg.softmax_cross_entropy(outputs["logits"], labels)
    train = graph.compile(loss=loss, optimizer=dg.Adam(lr=0.01))
    data = np.random.default_rng(2)
    x = data.standard_normal((64, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0).astype(np.int32)
    losses = [train(x=x, labels=y) for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0]
    assert not np.array_equal(graph.params["w1"], params["w1"])  # trained in place


def test_initializers_as_constants_make_no_parameters():
    onnx_model, _ = _mlp_model()
    graph, _, outputs = drug.onnx.load(onnx_model, initializers="constants")
    assert len(graph.params) == 0
    assert_same_as_onnxruntime(onnx_model, feeds_for(onnx_model, 4), initializers="constants")


def test_load_reads_files(tmp_path):
    onnx_model, _ = _mlp_model()
    path = tmp_path / "mlp.onnx"
    onnx.save(onnx_model, path)
    feeds = feeds_for(onnx_model, 3)
    np.testing.assert_allclose(
        run_drug(str(path), feeds)[0], run_onnxruntime(onnx_model, feeds)[0], rtol=1e-5, atol=1e-5
    )


def test_initializers_passed_through_identity_keep_their_names():
    """Exporters write Identity(initializer) for shared weights: the parameter is the initializer."""
    nodes = [oh.make_node("Identity", ["w"], ["w_copy"]), oh.make_node("MatMul", ["x", "w_copy"], ["y"])]
    onnx_model = model(nodes, [value("x", ["N", 3])], [value("y", ["N", 2])], {"w": w(3, 2)})
    graph, _, _ = drug.onnx.load(onnx_model)
    assert list(graph.params) == ["w"]
    assert_same_as_onnxruntime(onnx_model, feeds_for(onnx_model, 2))


def test_imported_batch_norm_fine_tunes_with_batch_statistics():
    """A train step normalizes with the batch's statistics and moves the running ones by ONNX's
    momentum; the predictor keeps using the running statistics."""
    onnx_model = single_op(
        "BatchNormalization",
        {"x": ["N", 3, 2, 2]},
        initializers={"s": w(3, positive=True), "b": w(3), "m": np.zeros(3, np.float32), "v": np.ones(3, np.float32)},
        momentum=0.8,
    )
    graph, inputs, outputs = drug.onnx.load(onnx_model)
    loss = dg.mean(outputs["y0"] * outputs["y0"])
    train = graph.compile(loss=loss, optimizer=dg.SGD(0.0))
    x = np.random.default_rng(3).standard_normal((8, 3, 2, 2)).astype(np.float32) * 2.0 + 1.0
    train(x=x)
    np.testing.assert_allclose(graph.state["m"], 0.2 * x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    predicted = graph.compile(outputs=outputs["y0"])(x=x)
    expected = run_onnxruntime(_with_statistics(onnx_model, graph.state["m"], graph.state["v"]), {"x": x})[0]
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-5)


def _with_statistics(onnx_model, mean, var):
    copy = onnx.ModelProto.FromString(onnx_model.SerializeToString())
    for tensor in copy.graph.initializer:
        if tensor.name in ("m", "v"):
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.asarray(mean if tensor.name == "m" else var), tensor.name))
    return copy


def test_running_statistics_as_buffers_or_constants():
    onnx_model = dict(CASES)["batch-norm"]
    graph, _, _ = drug.onnx.load(onnx_model)
    assert sorted(graph.state) == ["m", "v"] and sorted(graph.params) == ["b", "s"]
    graph, _, _ = drug.onnx.load(onnx_model, running_statistics="constants")
    assert len(graph.state) == 0 and sorted(graph.params) == ["b", "s"]
    assert_same_as_onnxruntime(onnx_model, feeds_for(onnx_model, 2), running_statistics="constants")

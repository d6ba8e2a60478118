"""Errors users see: their type and what the message names."""

from __future__ import annotations

import numpy as np
import pytest

import drug as dg


def mlp():
    g = dg.Graph(seed=0)
    x, y = g.input("x", (None, 4)), g.input("y", (None,), dtype="int32")
    w = g.parameter("w", (4, 3))
    logits = x @ w
    return g, logits, dg.softmax_cross_entropy(logits, y)


def feeds(n=2):
    return {"x": np.zeros((n, 4), np.float32), "y": np.zeros(n, np.int32)}


def test_error_types_are_value_errors():
    assert issubclass(dg.ShapeError, ValueError)
    assert issubclass(dg.GraphError, ValueError)
    assert issubclass(dg.ShapeError, dg.GraphError)


def test_matmul_shape_mismatch_at_build_time():
    g = dg.Graph()
    x = g.input("x", (None, 784))
    w = g.parameter("w", (100, 10))
    with pytest.raises(dg.ShapeError) as info:
        x @ w
    message = str(info.value)
    for part in ("'matmul'", "'x'", "'w'", "(None, 784)", "(100, 10)", "784", "100"):
        assert part in message, f"{part} missing from: {message}"


def test_broadcast_mismatch_names_the_op_and_shapes():
    g = dg.Graph()
    a, b = g.input("a", (None, 3)), g.input("b", (4,))
    with pytest.raises(dg.ShapeError, match=r"'add'.*'a' \(None, 3\).*'b' \(4,\)"):
        a + b


def test_mixed_dtypes_are_rejected():
    g = dg.Graph()
    a, b = g.input("a", (3,)), g.input("b", (3,), dtype="float64")
    with pytest.raises(dg.ShapeError, match="mixed dtypes"):
        a * b


def test_conv2d_channel_mismatch():
    g = dg.Graph()
    x, w = g.input("x", (None, 3, 8, 8)), g.parameter("w", (4, 2, 3, 3))
    with pytest.raises(dg.ShapeError, match=r"'conv2d'.*3 channels.*expects 2"):
        dg.conv2d(x, w)


def test_wrong_feed_shape():
    g, logits, _ = mlp()
    predict = g.compile(outputs=logits, backend="numpy")
    with pytest.raises(dg.ShapeError, match=r"input 'x' expects shape \(None, 4\), got \(2, 5\)"):
        predict(x=np.zeros((2, 5), np.float32))
    with pytest.raises(dg.ShapeError, match=r"input 'x' expects shape \(None, 4\), got \(4,\)"):
        predict(x=np.zeros(4, np.float32))


def test_wrong_feed_dtype():
    g, logits, _ = mlp()
    predict = g.compile(outputs=logits, backend="numpy")
    with pytest.raises(dg.ShapeError, match=r"input 'x' expects dtype float32, got float64"):
        predict(x=np.zeros((2, 4)))


def test_missing_and_unknown_feeds():
    g, _, loss = mlp()
    train = g.compile(loss=loss, optimizer=dg.SGD(0.1), backend="numpy")
    with pytest.raises(dg.GraphError, match=r"missing feed \['y'\]"):
        train(x=feeds()["x"])
    with pytest.raises(dg.GraphError, match=r"unknown feed \['z'\]"):
        train(**feeds(), z=np.zeros(2, np.float32))
    assert train.step_count == 0


def test_batch_size_mismatch_between_inputs():
    g, _, loss = mlp()
    evaluate = g.compile(loss=loss, backend="numpy")
    with pytest.raises(dg.ShapeError, match=r"batch size 3 .* has 2|batch size 2 .* has 3"):
        evaluate(x=np.zeros((2, 4), np.float32), y=np.zeros(3, np.int32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_feed_with_check_finite(bad):
    g, logits, _ = mlp()
    checked = g.compile(outputs=logits, check_finite=True, backend="numpy")
    x = np.ones((2, 4), np.float32)
    x[1, 2] = bad
    with pytest.raises(dg.GraphError, match=r"input 'x' contains NaN or Inf"):
        checked(x=x)
    unchecked = g.compile(outputs=logits, backend="numpy")
    with np.errstate(invalid="ignore"):  # inf * 0 in the matmul
        assert not np.isfinite(unchecked(x=x)).all()


def test_duplicate_names():
    g = dg.Graph()
    g.input("x", (None, 2))
    with pytest.raises(dg.GraphError, match="duplicate node name 'x'"):
        g.input("x", (None, 3))
    with pytest.raises(dg.GraphError, match="duplicate node name 'x'"):
        g.parameter("x", (2,))
    w = g.parameter("w", (2,))
    with pytest.raises(dg.GraphError, match="duplicate node name 'w'"):
        (w * 2).named("w")


def test_unknown_node_and_parameter_names():
    g, _, _ = mlp()
    with pytest.raises(dg.GraphError, match=r"no node named 'nope'.*\['w', 'x', 'y'\]"):
        g["nope"]
    with pytest.raises(dg.GraphError, match="no parameter named 'nope'"):
        g.params["nope"]


def test_non_scalar_loss():
    g, logits, _ = mlp()
    with pytest.raises(dg.ShapeError, match=r"loss .*\(None, 3\).* must be a float scalar"):
        g.compile(loss=logits, optimizer=dg.SGD(0.1), backend="numpy")


def test_compile_without_targets_or_with_nothing_to_train():
    g, logits, loss = mlp()
    with pytest.raises(dg.GraphError, match="needs a loss, outputs, or both"):
        g.compile(backend="numpy")
    with pytest.raises(dg.GraphError, match="optimizer needs a loss"):
        g.compile(outputs=logits, optimizer=dg.SGD(0.1), backend="numpy")
    with pytest.raises(dg.GraphError, match="not a parameter"):
        g.compile(loss=loss, optimizer=dg.SGD(0.1), params=[g["x"]], backend="numpy")
    g2 = dg.Graph()
    z = g2.input("z", (3,))
    with pytest.raises(dg.GraphError, match="nothing to train"):
        g2.compile(loss=dg.sum(z), optimizer=dg.SGD(0.1), backend="numpy")


def test_unknown_backend():
    g, logits, _ = mlp()
    with pytest.raises(dg.GraphError, match="unknown backend 'cuda'"):
        g.compile(outputs=logits, backend="cuda")


def test_nodes_of_different_graphs_do_not_mix():
    a = dg.Graph().input("a", (3,))
    b = dg.Graph().input("b", (3,))
    with pytest.raises(dg.GraphError, match="different graphs"):
        a + b


def test_node_has_no_truth_value():
    x = dg.Graph().input("x", (3,))
    with pytest.raises(dg.GraphError, match="no value until the graph runs"):
        bool(x)


@pytest.mark.parametrize("label", [3, -1])
def test_label_out_of_range_for_softmax_cross_entropy(label):
    g, _, loss = mlp()
    train = g.compile(loss=loss, optimizer=dg.SGD(0.1), backend="numpy")
    w_before = g.params["w"].copy()
    with pytest.raises(dg.ShapeError, match=rf"'softmax_cross_entropy_rows'.*label/id {label} out of range \[0, 3\)"):
        train(x=np.zeros((2, 4), np.float32), y=np.array([0, label], np.int32))
    np.testing.assert_array_equal(g.params["w"], w_before)


@pytest.mark.parametrize("index", [5, -1])
def test_id_out_of_range_for_embedding(index):
    g = dg.Graph()
    ids, table = g.input("ids", (None,), dtype="int32"), g.parameter("table", (5, 2))
    lookup = g.compile(outputs=dg.embedding(ids, table), backend="numpy")
    with pytest.raises(dg.ShapeError, match=rf"'embedding'.*label/id {index} out of range \[0, 5\)"):
        lookup(ids=np.array([0, index], np.int32))


def test_labels_must_be_integers():
    g = dg.Graph()
    logits, y = g.input("logits", (None, 3)), g.input("y", (None,))
    with pytest.raises(dg.ShapeError, match="labels must be int32 or int64, got float32"):
        dg.softmax_cross_entropy(logits, y)


def test_bad_shapes_at_declaration():
    g = dg.Graph()
    with pytest.raises(dg.ShapeError, match="cannot have a batch dimension"):
        g.parameter("w", (None, 3))
    with pytest.raises(dg.ShapeError, match="more than one batch"):
        g.input("x", (None, None))
    x = g.input("x", (None, 6))
    with pytest.raises(dg.ShapeError, match=r"cannot reshape \(None, 6\) to \(None, 4\)"):
        dg.reshape(x, (None, 4))
    with pytest.raises(dg.ShapeError, match="batch dimension; only ':'"):
        x[0]
    with pytest.raises(dg.ShapeError, match="index 6 out of range"):
        x[:, 6]
    with pytest.raises(dg.ShapeError, match="cannot concatenate along the batch"):
        dg.concat([x, x], axis=0)
    with pytest.raises(dg.ShapeError, match="conv2d padding must be"):
        dg.conv2d(g.input("im", (None, 1, 4, 4)), g.parameter("k", (1, 1, 3, 3)), padding="full")


def test_dtype_errors_are_type_errors_and_shape_errors():
    assert issubclass(dg.DTypeError, TypeError)
    assert issubclass(dg.DTypeError, dg.ShapeError)
    assert issubclass(dg.DTypeError, dg.GraphError)
    g = dg.Graph()
    a, b = g.input("a", (3,)), g.input("b", (3,), dtype="float64")
    with pytest.raises(TypeError, match=r"op 'mul' on inputs 'a' \(3,\) float32, 'b' \(3,\) float64: mixed dtypes"):
        a * b
    logits, y = g.input("logits", (None, 3)), g.input("y", (None,))
    with pytest.raises(dg.DTypeError, match="labels must be int32 or int64"):
        dg.softmax_cross_entropy(logits, y)


def test_a_feed_of_the_wrong_dtype_is_a_type_error():
    g, logits, _ = mlp()
    predict = g.compile(outputs=logits, backend="numpy")
    with pytest.raises(TypeError, match=r"input 'x' expects dtype float32, got float64"):
        predict(x=np.zeros((2, 4)))
    lookup = g.compile(outputs=dg.embedding(g["y"], g["w"]), backend="numpy")
    with pytest.raises(dg.DTypeError, match="expects integers"):
        lookup(y=[1.5, 2.0])


def test_different_graphs_error_names_the_nodes():
    a = dg.Graph().input("a", (3,))
    b = dg.Graph().input("b", (3,))
    with pytest.raises(dg.GraphError, match=r"add: inputs come from different graphs: 'a' from one, 'b' from another"):
        a + b


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_label_errors_name_the_users_call_and_node(backend):
    g, _, loss = mlp()
    loss.named("loss")
    train = g.compile(loss=loss, optimizer=dg.SGD(0.1), backend=backend)
    with pytest.raises(dg.ShapeError) as info:
        train(x=np.zeros((2, 4), np.float32), y=np.array([0, 9], np.int32))
    message = str(info.value)
    assert message.startswith("node 'loss' (softmax_cross_entropy(); in its internal node softmax_cross_entropy_rows#")
    assert "label/id 9 out of range [0, 3)" in message


def test_shape_errors_inside_a_composite_call_name_the_call():
    g = dg.Graph()
    logits, y = g.input("logits", (None, 3)), g.input("y", (None, 2), dtype="int32")
    with pytest.raises(dg.ShapeError, match=r"^softmax_cross_entropy: op 'softmax_cross_entropy_rows' on inputs"):
        dg.softmax_cross_entropy(logits, y)


def test_unnamed_output_of_a_composite_call_is_labelled_after_the_call():
    g = dg.Graph()
    x = g.input("x", (None, 3))
    loss = dg.softmax_cross_entropy(x, g.input("y", (None,), dtype="int32"))
    assert loss.label.startswith("softmax_cross_entropy#")
    h = dg.layers.Dense(2, name="fc")(x)
    assert h.label.startswith("fc#") and h.call.kind == "Dense"
    assert dg.relu(x).label.startswith("relu#")


def test_loading_another_optimizers_checkpoint_says_which_state_differs(tmp_path):
    g, _, loss = mlp()
    adam = g.compile(loss=loss, optimizer=dg.Adam(1e-3), backend="numpy")
    adam.save(tmp_path / "adam.npz")
    sgd = g.compile(loss=loss, optimizer=dg.SGD(0.1, momentum=0.9), backend="numpy")
    before = g.params["w"].copy()
    with pytest.raises(dg.GraphError) as info:
        sgd.load(tmp_path / "adam.npz")
    message = str(info.value)
    assert "another optimizer" in message and "SGD(lr=0.1, momentum=0.9)" in message
    assert "extra beta_magnitude_power, beta_momentum_power, magnitude" in message
    assert "keeps momentum" in message and "nothing was loaded" in message
    np.testing.assert_array_equal(g.params["w"], before)
    predict = g.compile(outputs=g["x"] @ g["w"], backend="numpy")
    predict.load(tmp_path / "adam.npz")  # a predictor takes the parameters of any train step

"""Train steps on the OpenCL device: they follow the reference step for step; parameters and
optimizer state live on the device, and `g.params`, `step.state`, checkpoints, the learning rate
and other compiled functions of the same graph (on any backend) see their newest values; a step
is enqueued whole, with one wait at its end."""

from __future__ import annotations

import numpy as np
import pytest

import drug as dg

pytestmark = pytest.mark.usefixtures("opencl")


def mlp(backend: str, optimizer, dtype: str = "float64"):
    g = dg.Graph(seed=0, dtype=dtype)
    x = g.input("x", (None, 6))
    y = g.input("y", (None,), dtype="int32")
    h = dg.tanh(x @ g.parameter("w1", (6, 16)) + g.parameter("b1", (16,), init="zeros"))
    logits = h @ g.parameter("w2", (16, 3)) + g.parameter("b2", (3,), init="zeros")
    loss = dg.softmax_cross_entropy(logits, y)
    return g, g.compile(loss=loss, optimizer=optimizer, backend=backend), logits, loss


def batches(rng, n: int = 6):
    return [(rng.standard_normal((8, 6)), rng.integers(0, 3, 8).astype(np.int32)) for _ in range(n)]


def assert_same_values(a: dict, b: dict, what: str, rtol: float = 1e-10) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=1e-13, err_msg=f"{what} {key}")


OPTIMIZERS = {
    "adam": lambda: dg.Adam(lr=0.05),
    "sgd-momentum": lambda: dg.SGD(lr=0.2, momentum=0.9),
    "rmsprop": lambda: dg.RMSProp(lr=0.01),
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_training_follows_the_reference(optimizer, rng):
    """Losses, parameters and optimizer state equal the NumPy backend's after every step."""
    data = batches(rng)
    g_ref, ref, *_ = mlp("numpy", OPTIMIZERS[optimizer]())
    g_dev, dev, *_ = mlp("opencl", OPTIMIZERS[optimizer]())
    for x, y in data:
        np.testing.assert_allclose(dev(x=x, y=y), ref(x=x, y=y), rtol=1e-12)
    assert_same_values(dict(g_dev.params), dict(g_ref.params), "parameter")
    assert_same_values(dict(dev.state), dict(ref.state), "state")


def test_host_writes_reach_the_device(rng):
    """Writing g.params (or the learning rate) between steps changes the next step, as on the host."""
    data = batches(rng, 4)
    g_ref, ref, *_ = mlp("numpy", dg.Adam(lr=0.05))
    g_dev, dev, *_ = mlp("opencl", dg.Adam(lr=0.05))
    for i, (x, y) in enumerate(data):
        for g, step in ((g_ref, ref), (g_dev, dev)):
            if i == 1:
                g.params["w2"][:] *= 0.5
            if i == 2:
                step.lr = 0.01
            step(x=x, y=y)
        assert dev.lr == ref.lr
    assert_same_values(dict(g_dev.params), dict(g_ref.params), "parameter")


def test_compiled_functions_of_one_graph_share_the_newest_parameters(rng):
    """An OpenCL train step, then predictors on OpenCL, LLVM and NumPy: all see the trained values,
    and training on the host afterwards reaches the OpenCL predictor."""
    g, train, logits, loss = mlp("opencl", dg.Adam(lr=0.05))
    predictors = {b: g.compile(outputs=logits, backend=b) for b in ("opencl", "llvm", "numpy")}
    (x, y), (x2, y2) = batches(rng, 2)
    before = predictors["numpy"](x=x)
    train(x=x, y=y)
    outputs = {b: p(x=x) for b, p in predictors.items()}
    assert not np.allclose(outputs["numpy"], before)
    for b in ("opencl", "llvm"):
        np.testing.assert_allclose(outputs[b], outputs["numpy"], rtol=1e-12, err_msg=b)
    host_train = g.compile(loss=loss, optimizer=dg.SGD(lr=0.5), backend="llvm")
    host_train(x=x2, y=y2)
    np.testing.assert_allclose(predictors["opencl"](x=x), predictors["numpy"](x=x), rtol=1e-12)


def test_checkpoints_hold_the_device_values(tmp_path, rng):
    data = batches(rng, 4)
    g, train, *_ = mlp("opencl", dg.Adam(lr=0.05))
    for x, y in data[:2]:
        train(x=x, y=y)
    path = tmp_path / "ckpt.npz"
    train.save(path)
    g2, fresh, *_ = mlp("opencl", dg.Adam(lr=0.05))
    fresh.load(path)
    assert_same_values(dict(g2.params), dict(g.params), "parameter", rtol=0)
    assert_same_values(dict(fresh.state), dict(train.state), "state", rtol=0)
    for x, y in data[2:]:  # the restored step continues exactly like the original
        np.testing.assert_array_equal(fresh(x=x, y=y), train(x=x, y=y))
    host_graph, host, *_ = mlp("llvm", dg.Adam(lr=0.05))
    host.load(path)
    assert host.step_count == 2


def test_batch_sizes_and_out_arrays(rng):
    g = dg.Graph(dtype="float32")
    x = g.input("x", (None, 5))
    w = g.parameter("w", (5, 4))
    outs = [dg.relu(x @ w), dg.sum(x, 1)]
    dev, ref = g.compile(outputs=outs, backend="opencl"), g.compile(outputs=outs, backend="numpy")
    for batch in (3, 17, 0, 3, 1000):
        xv = rng.standard_normal((batch, 5)).astype(np.float32)
        for got, want in zip(dev(x=xv), ref(x=xv)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    xv = rng.standard_normal((6, 5)).astype(np.float32)
    targets = (np.empty((6, 4), np.float32), np.empty(6, np.float32))
    result = dev(x=xv, out=targets)
    assert result[0] is targets[0] and result[1] is targets[1]
    np.testing.assert_allclose(targets[0], ref(x=xv)[0], rtol=1e-5)


def test_a_step_waits_once(monkeypatch, rng):
    """Every kernel and GEMM of a train step is enqueued without a host round trip: no blocking
    transfer during the step; the host waits once, for the loss and the status word. A predictor
    of the same graph on the same device reads the trained parameters where they are."""
    cl = pytest.importorskip("pyopencl")
    g, train, logits, _ = mlp("opencl", dg.Adam(lr=0.05), dtype="float32")
    predict = g.compile(outputs=logits, backend="opencl")
    x, y = batches(rng, 1)[0]
    x = x.astype(np.float32)
    train(x=x, y=y)  # binds the batch size and uploads the parameters
    copies = []
    real_copy = cl.enqueue_copy

    def recording(queue, dest, src, **kwargs):
        copies.append(kwargs.get("is_blocking", True))
        return real_copy(queue, dest, src, **kwargs)

    monkeypatch.setattr(cl, "enqueue_copy", recording)
    loss = train(x=x, y=y)
    assert np.isfinite(loss)
    assert copies and not any(copies), f"blocking copies during a step: {copies}"
    copies.clear()
    got = predict(x=x)
    assert not any(copies), f"blocking copies in the predictor after training: {copies}"
    want = g.compile(outputs=logits, backend="numpy")(x=x)  # takes the newest values back to the host
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

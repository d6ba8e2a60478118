"""Batch norm against PyTorch's BatchNorm1d/2d: training (batch statistics, running statistics
updated in place as graph state) and inference (running statistics), forward and gradients, on
both backends; checkpoints carry the running statistics; bad input is refused with nothing changed.

Tolerances: float64 throughout; both sides compute means and variances with different summation
orders (~1e-16 relative each), so 1e-10 leaves room for that only."""

from __future__ import annotations

import numpy as np
import pytest

import drug as dg

torch = pytest.importorskip("torch", reason="PyTorch is the peer these tests compare with")

BACKENDS = ("numpy", "llvm")
TOL = dict(rtol=1e-10, atol=1e-10)


def _model(shape, momentum=0.1, eps=1e-5, seed=0):
    g = dg.Graph(seed=seed, dtype="float64")
    x = g.input("x", (None,) + shape[1:])
    bn = dg.layers.BatchNorm(momentum=momentum, eps=eps, name="bn")
    y = bn(x)
    rng = np.random.default_rng(seed)
    g.params["bn/scale"][...] = rng.uniform(0.5, 1.5, shape[1])
    g.params["bn/bias"][...] = rng.standard_normal(shape[1])
    return g, x, y


def _torch_bn(g, shape, momentum, eps):
    cls = torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d
    bn = cls(shape[1], momentum=momentum, eps=eps).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(g.params["bn/scale"]))
        bn.bias.copy_(torch.tensor(g.params["bn/bias"]))
    return bn


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (7, 5), (1, 2, 3, 3)])
def test_training_mode_matches_torch(backend, shape):
    """Three training steps: outputs, gradients and the running statistics after each step."""
    momentum, eps = 0.3, 1e-3
    g, x, y = _model(shape, momentum, eps)
    r = g.input("r", y.shape)
    grads = dg.grad(dg.sum(y * r), [x, g["bn/scale"], g["bn/bias"]])
    step = g.compile(outputs=[y, *grads], training=True, backend=backend)
    bn = _torch_bn(g, shape, momentum, eps).train()
    rng = np.random.default_rng(1)
    for _ in range(3):
        xv, rv = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(shape)
        got = step(x=xv, r=rv)
        xt = torch.tensor(xv, requires_grad=True)
        bn.zero_grad()
        out = bn(xt)
        (out * torch.tensor(rv)).sum().backward()
        np.testing.assert_allclose(got[0], out.detach().numpy(), **TOL)
        for value, want in zip(got[1:], (xt.grad, bn.weight.grad, bn.bias.grad)):
            np.testing.assert_allclose(value, want.numpy(), **TOL)
        np.testing.assert_allclose(g.state["bn/running_mean"], bn.running_mean.numpy(), **TOL)
        np.testing.assert_allclose(g.state["bn/running_var"], bn.running_var.numpy(), **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (7, 5)])
def test_inference_uses_running_statistics(backend, shape):
    g, x, y = _model(shape)
    rng = np.random.default_rng(2)
    g.state["bn/running_mean"][...] = rng.standard_normal(shape[1])
    g.state["bn/running_var"][...] = rng.uniform(0.5, 2.0, shape[1])
    bn = _torch_bn(g, shape, 0.1, 1e-5).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor(g.state["bn/running_mean"]))
        bn.running_var.copy_(torch.tensor(g.state["bn/running_var"]))
    before = {k: v.copy() for k, v in g.state.items()}
    xv = rng.standard_normal(shape)
    got = g.compile(outputs=y, backend=backend)(x=xv)
    np.testing.assert_allclose(got, bn(torch.tensor(xv)).detach().numpy(), **TOL)
    for k, v in before.items():
        np.testing.assert_array_equal(g.state[k], v)  # inference leaves them alone


def _conv_bn_net(seed=0):
    g = dg.Graph(seed=seed, dtype="float64")
    x = g.input("x", (None, 2, 6, 6))
    y = g.input("y", (None,), dtype="int32")
    h = dg.layers.Conv2D(4, 3, padding=1, bias=False, name="conv")(x)
    h = dg.relu(dg.layers.BatchNorm(name="bn")(h))
    logits = dg.layers.Dense(3, name="out")(dg.global_pool(h, "avg"))
    return g, logits, dg.softmax_cross_entropy(logits, y)


def _batches(n=4, batch=5):
    rng = np.random.default_rng(3)
    return [(rng.standard_normal((batch, 2, 6, 6)), rng.integers(0, 3, batch).astype(np.int32)) for _ in range(n)]


def test_train_steps_agree_across_backends():
    results = {}
    for backend in BACKENDS:
        g, _, loss = _conv_bn_net()
        train = g.compile(loss=loss, optimizer=dg.SGD(0.1, momentum=0.9), backend=backend)
        losses = [train(x=x, y=y) for x, y in _batches()]
        results[backend] = (losses, {k: v.copy() for k, v in g.state.items()}, g.params["conv/w"].copy())
    (l1, s1, w1), (l2, s2, w2) = results.values()
    np.testing.assert_allclose(l1, l2, **TOL)
    np.testing.assert_allclose(w1, w2, **TOL)
    for k in s1:
        np.testing.assert_allclose(s1[k], s2[k], **TOL, err_msg=k)


def test_native_step_runs_batch_norm_in_few_native_kernels():
    """The moments are one native kernel; the backward of batch norm adds no callback."""
    g, _, loss = _conv_bn_net()
    train = g.compile(loss=loss, optimizer=dg.Adam(1e-3), backend="llvm")
    kinds = {(k.kind, n.op.name) for k in train.program.schedule.kernels for n in k.nodes}
    assert ("op", "batch_moments") in kinds
    assert not any(kind == "callback" for kind, _ in kinds)


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_resumes_running_statistics(backend, tmp_path):
    g, logits, loss = _conv_bn_net()
    train = g.compile(loss=loss, optimizer=dg.Adam(1e-2), backend=backend)
    batches = _batches(6)
    for x, y in batches[:3]:
        train(x=x, y=y)
    train.save(tmp_path / "ck.npz")
    continued = [train(x=x, y=y) for x, y in batches[3:]]
    final_state = {k: v.copy() for k, v in g.state.items()}

    g2, logits2, loss2 = _conv_bn_net(seed=5)  # other initial values: all must come from the file
    train2 = g2.compile(loss=loss2, optimizer=dg.Adam(1e-2), backend=backend)
    train2.load(tmp_path / "ck.npz")
    resumed = [train2(x=x, y=y) for x, y in batches[3:]]
    np.testing.assert_allclose(resumed, continued, rtol=1e-12)
    for k, v in final_state.items():
        np.testing.assert_allclose(g2.state[k], v, rtol=1e-12, err_msg=k)
    predict = g2.compile(outputs=logits2, backend=backend)
    np.testing.assert_allclose(predict(x=batches[0][0]), g.compile(outputs=logits, backend=backend)(x=batches[0][0]),
                               rtol=1e-12)  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_predictor_refuses_a_checkpoint_without_running_statistics(backend, tmp_path):
    """A checkpoint with the parameters but no running statistics (as written for a graph without
    batch norm buffers): the error names the file and the buffer, and nothing is loaded."""
    g, logits, _ = _conv_bn_net()
    params = {name: value * 2 for name, value in g.params.items()}
    dg.runtime.checkpoint.save(tmp_path / "old.npz", params, {}, 7)
    predict = g.compile(outputs=logits, backend=backend)
    before = {k: v.copy() for k, v in list(g.params.items()) + list(g.state.items())}
    with pytest.raises(dg.GraphError, match=r"old\.npz does not fit .*missing state buffer 'bn/running_mean'"):
        predict.load(tmp_path / "old.npz")
    for k, v in before.items():
        np.testing.assert_array_equal(g.params[k] if k in g.params else g.state[k], v, err_msg=k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_value_per_channel_in_training_is_refused(backend):
    """(N, C) input with a batch of one: no variance to estimate (PyTorch refuses it too). The
    error names the batch norm; parameters and running statistics stay as they were."""
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 4))
    y = g.input("y", (None,), dtype="int32")
    h = dg.layers.BatchNorm(name="bn_head")(dg.layers.Dense(4, name="fc")(x))
    train = g.compile(loss=dg.softmax_cross_entropy(h, y), optimizer=dg.SGD(0.1), backend=backend)
    before = {k: v.copy() for k, v in list(g.params.items()) + list(g.state.items())}
    with pytest.raises(dg.ShapeError, match="batch norm 'bn_head' in training needs more than one value per channel"):
        train(x=np.ones((1, 4)), y=np.zeros(1, np.int32))
    for k, v in before.items():
        np.testing.assert_array_equal(g.params[k] if k in g.params else g.state[k], v, err_msg=k)
    assert train.step_count == 0
    train(x=np.arange(8.0).reshape(2, 4), y=np.zeros(2, np.int32))  # two rows are fine
    predict = g.compile(outputs=h, backend=backend)
    assert predict(x=np.ones((1, 4))).shape == (1, 4)  # inference of one example uses the running statistics


def test_bad_batch_norm_arguments():
    g = dg.Graph()
    x = g.input("x", (None, 3, 4, 4))
    scale, bias = g.parameter("s", (3,), init="ones"), g.parameter("b", (4,), init="zeros")
    with pytest.raises(dg.ShapeError, match=r"bias \(4,\) must have one value per channel: \(3,\)"):
        dg.batch_norm(x, scale, bias)
    with pytest.raises(dg.ShapeError, match="momentum"):
        dg.batch_norm(x, scale, scale, momentum=1.5)
    bn = dg.layers.BatchNorm(name="bn")
    bn(x)
    with pytest.raises(dg.ShapeError, match="batch_norm layer 'bn': input .* must have channels 3"):
        bn(g.input("other", (None, 5, 4, 4)))

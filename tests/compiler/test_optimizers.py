"""Optimizer updates against hand-written NumPy versions of PyTorch's update rules.

The model is a float64 linear regression whose gradient is written out by hand, so the
reference does not depend on drug's autodiff. rtol=1e-12 leaves room for the different
order of float64 operations only; a wrong rule (bias correction, epsilon inside the
square root, a missing momentum term) is off by far more within five steps."""

from __future__ import annotations

import numpy as np
import pytest

import drug as dg

LR_KEY = dg.compiler.optimizers.LR_KEY  # the learning rate is a state buffer too (for schedules)

RTOL = 1e-12
STEPS = 5


def make_model(seed=0):
    g = dg.Graph(seed=seed, dtype="float64")
    x, t = g.input("x", (None, 3)), g.input("t", (None, 2))
    w = g.parameter("w", (3, 2))
    b = g.parameter("b", (2,), init=np.array([0.1, -0.2]))
    diff = x @ w + b - t
    return g, dg.mean(diff * diff)


def batches(n=STEPS, seed=1):
    rng = np.random.default_rng(seed)
    # scaled so that gradients are O(0.1..1) and epsilon is not negligible everywhere
    return [(rng.standard_normal((4, 3)), rng.standard_normal((4, 2)) * 2) for _ in range(n)]


def loss_and_grads(params, x, t):
    diff = x @ params["w"] + params["b"] - t
    d = 2 * diff / diff.size
    return np.mean(diff * diff), {"w": x.T @ d, "b": d.sum(axis=0)}


class TorchSGD:
    def __init__(self, lr, momentum=0.0):
        self.lr, self.momentum, self.buf = lr, momentum, {}

    def step(self, params, grads):
        for k, gr in grads.items():
            if self.momentum:
                self.buf[k] = gr.copy() if k not in self.buf else self.momentum * self.buf[k] + gr
                gr = self.buf[k]
            params[k] = params[k] - self.lr * gr


class TorchRMSProp:
    def __init__(self, lr, alpha=0.9, eps=1e-8):
        self.lr, self.alpha, self.eps, self.square_avg = lr, alpha, eps, {}

    def step(self, params, grads):
        for k, gr in grads.items():
            s = self.alpha * self.square_avg.get(k, 0.0) + (1 - self.alpha) * gr * gr
            self.square_avg[k] = s
            params[k] = params[k] - self.lr * gr / (np.sqrt(s) + self.eps)


class TorchAdam:
    def __init__(self, lr, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.betas, self.eps, self.t, self.m, self.v = lr, betas, eps, 0, {}, {}

    def step(self, params, grads):
        self.t += 1
        b1, b2 = self.betas
        for k, gr in grads.items():
            self.m[k] = b1 * self.m.get(k, 0.0) + (1 - b1) * gr
            self.v[k] = b2 * self.v.get(k, 0.0) + (1 - b2) * gr * gr
            bias1, bias2 = 1 - b1**self.t, 1 - b2**self.t
            denom = np.sqrt(self.v[k]) / np.sqrt(bias2) + self.eps  # epsilon outside the square root
            params[k] = params[k] - (self.lr / bias1) * self.m[k] / denom


CASES = [
    ("sgd", lambda: dg.SGD(0.1), lambda: TorchSGD(0.1)),
    ("sgd-momentum", lambda: dg.SGD(0.05, momentum=0.9), lambda: TorchSGD(0.05, 0.9)),
    ("rmsprop", lambda: dg.RMSProp(0.01, beta=0.9), lambda: TorchRMSProp(0.01, 0.9)),
    ("rmsprop-big-eps", lambda: dg.RMSProp(0.01, beta=0.5, epsilon=0.1), lambda: TorchRMSProp(0.01, 0.5, 0.1)),
    ("adam", lambda: dg.Adam(0.01), lambda: TorchAdam(0.01)),
    ("adam-big-eps", lambda: dg.Adam(0.1, 0.8, 0.99, epsilon=0.1), lambda: TorchAdam(0.1, (0.8, 0.99), 0.1)),
    ("adam-no-momentum", lambda: dg.Adam(0.01, beta_momentum=0.0), lambda: TorchAdam(0.01, (0.0, 0.999))),
    ("adam-no-magnitude", lambda: dg.Adam(0.01, beta_magnitude=0.0), lambda: TorchAdam(0.01, (0.9, 0.0))),
    ("adam-no-state", lambda: dg.Adam(0.01, 0.0, 0.0), lambda: TorchAdam(0.01, (0.0, 0.0))),
    ("rmsprop-no-state", lambda: dg.RMSProp(0.01, beta=0.0), lambda: TorchRMSProp(0.01, 0.0)),
]


@pytest.mark.parametrize("make_opt,make_ref", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_updates_match_pytorch_rules(make_opt, make_ref):
    g, loss = make_model()
    train = g.compile(loss=loss, optimizer=make_opt(), backend="numpy")
    reference = make_ref()
    params = {k: g.params[k].copy() for k in ("w", "b")}
    for step, (x, t) in enumerate(batches(), start=1):
        expected_loss, grads = loss_and_grads(params, x, t)
        got_loss = train(x=x, t=t)
        assert isinstance(got_loss, float)
        np.testing.assert_allclose(got_loss, expected_loss, rtol=RTOL)
        reference.step(params, grads)
        for k in params:
            np.testing.assert_allclose(g.params[k], params[k], rtol=RTOL, err_msg=f"{k} after step {step}")
    assert train.step_count == STEPS


def moment_keys(train):
    return {k for k in train.state if k != LR_KEY}


@pytest.mark.parametrize(
    "optimizer,expected",
    [
        (dg.SGD(0.1), set()),
        (dg.SGD(0.1, momentum=0.9), {"w/momentum", "b/momentum"}),
        (dg.RMSProp(0.1, beta=0.0), set()),
        (dg.RMSProp(0.1), {"w/magnitude", "b/magnitude"}),
        (dg.Adam(0.1, 0.0, 0.0), set()),
        (dg.Adam(0.1, 0.0, 0.999), {"w/magnitude", "b/magnitude", "step/beta_magnitude_power"}),
        (dg.Adam(0.1, 0.9, 0.0), {"w/momentum", "b/momentum", "step/beta_momentum_power"}),
        (
            dg.Adam(0.1),
            {"w/momentum", "b/momentum", "w/magnitude", "b/magnitude"}
            | {"step/beta_momentum_power", "step/beta_magnitude_power"},
        ),
    ],
)
def test_zero_betas_disable_state(optimizer, expected):
    g, loss = make_model()
    train = g.compile(loss=loss, optimizer=optimizer, backend="numpy")
    assert moment_keys(train) == expected
    for key in expected - {"step/beta_momentum_power", "step/beta_magnitude_power"}:
        param = g.params[key.split("/")[0]]
        assert train.state[key].shape == param.shape and train.state[key].dtype == param.dtype


@pytest.mark.parametrize("subset", [["w"], "node"])
def test_params_trains_only_the_subset(subset):
    g, loss = make_model()
    params = [g["w"]] if subset == "node" else subset
    train = g.compile(loss=loss, optimizer=dg.SGD(0.1), params=params, backend="numpy")
    b_before = g.params["b"].copy()
    ref = {k: g.params[k].copy() for k in ("w", "b")}
    for x, t in batches():
        _, grads = loss_and_grads(ref, x, t)
        ref["w"] -= 0.1 * grads["w"]
        train(x=x, t=t)
    np.testing.assert_array_equal(g.params["b"], b_before)
    np.testing.assert_allclose(g.params["w"], ref["w"], rtol=RTOL)
    assert not any(k.startswith("b/") for k in train.state)


def test_two_steps_train_disjoint_subsets():
    # a GAN alternates two train steps over one graph, each updating its own parameters
    g, loss = make_model()
    train_w = g.compile(loss=loss, optimizer=dg.Adam(0.01), params=["w"], backend="numpy")
    train_b = g.compile(loss=loss, optimizer=dg.Adam(0.01), params=["b"], backend="numpy")
    ref = {k: g.params[k].copy() for k in ("w", "b")}
    adam_w, adam_b = TorchAdam(0.01), TorchAdam(0.01)
    for x, t in batches():
        _, grads = loss_and_grads(ref, x, t)
        adam_w.step(ref, {"w": grads["w"]})
        train_w(x=x, t=t)
        _, grads = loss_and_grads(ref, x, t)
        adam_b.step(ref, {"b": grads["b"]})
        train_b(x=x, t=t)
    for k in ref:
        np.testing.assert_allclose(g.params[k], ref[k], rtol=RTOL, err_msg=k)


def test_learning_rate_can_change_between_steps():
    g, loss = make_model()
    train = g.compile(loss=loss, optimizer=dg.SGD(0.1, momentum=0.5), backend="numpy")
    assert train.lr == pytest.approx(0.1)
    ref, reference = {k: g.params[k].copy() for k in ("w", "b")}, TorchSGD(0.1, 0.5)
    for i, (x, t) in enumerate(batches()):
        train.lr = reference.lr = 0.1 / (i + 1)
        _, grads = loss_and_grads(ref, x, t)
        reference.step(ref, grads)
        train(x=x, t=t)
    for k in ref:
        np.testing.assert_allclose(g.params[k], ref[k], rtol=RTOL, err_msg=k)


def test_inference_does_not_train():
    g, loss = make_model()
    before = {k: v.copy() for k, v in g.params.items()}
    evaluate = g.compile(loss=loss, backend="numpy")
    x, t = batches(1)[0]
    expected, _ = loss_and_grads(before, x, t)
    np.testing.assert_allclose(evaluate(x=x, t=t), expected, rtol=RTOL)
    for k, v in before.items():
        np.testing.assert_array_equal(g.params[k], v)
    assert evaluate.step_count == 0


@pytest.mark.parametrize(
    "make", [lambda: dg.SGD(0.1, momentum=1.0), lambda: dg.Adam(0.1, beta_magnitude=-0.1), lambda: dg.SGD(-1.0)]
)
def test_invalid_hyperparameters(make):
    with pytest.raises(ValueError):
        make()


# Weight decay, AdamW, gradient clipping and parameter groups, against PyTorch's rules written out
# in NumPy (and, where PyTorch is installed, against torch.optim itself).


class TorchAdamW(TorchAdam):
    def __init__(self, lr, weight_decay=1e-2, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(lr, betas, eps)
        self.weight_decay = weight_decay

    def step(self, params, grads):
        for k in grads:
            params[k] = params[k] * (1 - self.lr * self.weight_decay)  # decoupled, before the Adam step
        super().step(params, grads)


def coupled(reference, weight_decay):
    """PyTorch's weight_decay for SGD/Adam/RMSProp: g += weight_decay * w before the rule."""
    inner = reference.step

    def step(params, grads):
        inner(params, {k: g + weight_decay * params[k] for k, g in grads.items()})

    reference.step = step
    return reference


def clip_grad_norm(grads, max_norm):
    """torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (||g|| + 1e-6))."""
    total = np.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    factor = min(1.0, max_norm / (total + 1e-6))
    return {k: g * factor for k, g in grads.items()}


DECAY_CASES = [
    ("sgd-decay", lambda: dg.SGD(0.1, weight_decay=0.3), lambda: coupled(TorchSGD(0.1), 0.3)),
    ("sgd-momentum-decay", lambda: dg.SGD(0.05, 0.9, weight_decay=0.1), lambda: coupled(TorchSGD(0.05, 0.9), 0.1)),
    ("adam-decay", lambda: dg.Adam(0.01, weight_decay=0.2), lambda: coupled(TorchAdam(0.01), 0.2)),
    ("rmsprop-decay", lambda: dg.RMSProp(0.01, weight_decay=0.2), lambda: coupled(TorchRMSProp(0.01), 0.2)),
    ("adamw", lambda: dg.AdamW(0.01), lambda: TorchAdamW(0.01)),
    ("adamw-strong", lambda: dg.AdamW(0.05, weight_decay=0.5, epsilon=0.1), lambda: TorchAdamW(0.05, 0.5, eps=0.1)),
]


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
@pytest.mark.parametrize("make_opt,make_ref", [c[1:] for c in DECAY_CASES], ids=[c[0] for c in DECAY_CASES])
def test_weight_decay_matches_pytorch_rules(make_opt, make_ref, backend):
    g, loss = make_model()
    train = g.compile(loss=loss, optimizer=make_opt(), backend=backend)
    reference, params = make_ref(), {k: g.params[k].copy() for k in ("w", "b")}
    for x, t in batches():
        _, grads = loss_and_grads(params, x, t)
        train(x=x, t=t)
        reference.step(params, grads)
    for k in params:
        np.testing.assert_allclose(g.params[k], params[k], rtol=1e-11, err_msg=k)


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
@pytest.mark.parametrize("max_norm", [0.05, 100.0])  # clipping every step; never clipping
@pytest.mark.parametrize(
    "make_opt,make_ref",
    [
        (lambda c: dg.SGD(0.1, momentum=0.5, clip_norm=c), lambda: TorchSGD(0.1, 0.5)),
        (lambda c: dg.Adam(0.01, clip_norm=c), lambda: TorchAdam(0.01)),
        (lambda c: dg.AdamW(0.01, weight_decay=0.1, clip_norm=c), lambda: TorchAdamW(0.01, 0.1)),
        (lambda c: dg.RMSProp(0.01, clip_norm=c), lambda: TorchRMSProp(0.01)),
    ],
    ids=["sgd", "adam", "adamw", "rmsprop"],
)
def test_clip_norm_matches_clip_grad_norm(make_opt, make_ref, max_norm, backend):
    g, loss = make_model()
    train = g.compile(loss=loss, optimizer=make_opt(max_norm), backend=backend)
    reference, params = make_ref(), {k: g.params[k].copy() for k in ("w", "b")}
    clipped = 0
    for x, t in batches():
        _, grads = loss_and_grads(params, x, t)
        clipped += np.sqrt(sum(float(np.sum(v * v)) for v in grads.values())) > max_norm
        train(x=x, t=t)
        reference.step(params, clip_grad_norm(grads, max_norm))
    assert clipped == (STEPS if max_norm < 1 else 0)  # the cases do what their names say
    for k in params:
        np.testing.assert_allclose(g.params[k], params[k], rtol=1e-11, err_msg=k)


def test_clipping_is_one_reduction_kernel():
    """The squared norm of all gradients is one native kernel; the scaling fuses into the updates."""
    g = dg.Graph()
    x = g.input("x", (None, 8))
    h = dg.relu(dg.layers.Dense(16, name="a")(x))
    out = dg.layers.Dense(4, name="b")(h)
    loss = dg.mean(out * out)
    plain = g.compile(loss=loss, optimizer=dg.Adam(1e-3))
    clipped = g.compile(loss=loss, optimizer=dg.Adam(1e-3, clip_norm=1.0))
    names = [n.op.name for k in clipped.program.schedule.kernels for n in k.nodes if k.kind == "op"]
    assert names.count("sum_squares") == 1
    assert clipped.kernel_count <= plain.kernel_count + 2  # the norm, and at most one small scalar loop


def test_torch_clip_grad_norm_and_adamw_agree_with_drug():
    torch = pytest.importorskip("torch", reason="compares with torch.optim.AdamW and clip_grad_norm_")
    g, loss = make_model()
    train = g.compile(loss=loss, optimizer=dg.AdamW(0.02, weight_decay=0.3, clip_norm=0.1), backend="numpy")
    p = {k: torch.tensor(g.params[k].copy(), requires_grad=True) for k in ("w", "b")}
    opt = torch.optim.AdamW(p.values(), lr=0.02, weight_decay=0.3)
    for x, t in batches():
        train(x=x, t=t)
        opt.zero_grad()
        diff = torch.tensor(x) @ p["w"] + p["b"] - torch.tensor(t)
        (diff * diff).mean().backward()
        torch.nn.utils.clip_grad_norm_(p.values(), 0.1)
        opt.step()
    for k in p:
        np.testing.assert_allclose(g.params[k], p[k].detach().numpy(), rtol=1e-11, err_msg=k)


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_parameter_groups_scale_lr_and_mask_decay(backend):
    """PyTorch's param_groups: b trains at a tenth of the rate without decay, w as the optimizer says."""
    g, loss = make_model()
    groups = [dg.ParamGroup("b", lr_scale=0.1, weight_decay=0.0)]
    train = g.compile(loss=loss, optimizer=dg.AdamW(0.01, weight_decay=0.5, groups=groups), backend=backend)
    ref_w, ref_b = TorchAdamW(0.01, 0.5), TorchAdamW(0.001, 0.0)
    params = {k: g.params[k].copy() for k in ("w", "b")}
    for x, t in batches():
        _, grads = loss_and_grads(params, x, t)
        train(x=x, t=t)
        ref_w.step(params, {"w": grads["w"]})
        ref_b.step(params, {"b": grads["b"]})
    for k in params:
        np.testing.assert_allclose(g.params[k], params[k], rtol=1e-11, err_msg=k)


def test_group_selectors_and_no_decay():
    g = dg.Graph()
    x = g.input("x", (None, 3, 8, 8))
    h = dg.layers.BatchNorm(name="bn")(dg.layers.Conv2D(4, 3, name="conv")(x))
    dg.layers.Dense(2, name="head")(dg.layers.Flatten()(h))
    p = {n.name: n for n in g.parameters}
    by_glob = dg.ParamGroup("*/bias")
    assert [n for n in p if by_glob.selects(p[n])] == ["bn/bias"]
    by_list = dg.ParamGroup(["conv/w", p["head/w"]])
    assert sorted(n for n in p if by_list.selects(p[n])) == ["conv/w", "head/w"]
    opt = dg.AdamW(1e-3, weight_decay=0.1, groups=[dg.no_decay()])
    decayed = sorted(n for n in p if opt.group_of(p[n]) is None)
    assert decayed == ["conv/w", "head/w"]  # biases and batch-norm scales are left alone
    with pytest.raises(ValueError, match="groups must be dg.ParamGroup"):
        dg.AdamW(1e-3, groups=["*/bias"])
    with pytest.raises(ValueError, match="clip_norm must be positive"):
        dg.SGD(0.1, clip_norm=0.0)
    with pytest.raises(ValueError, match="weight_decay must be a finite non-negative number"):
        dg.Adam(weight_decay=-1.0)

"""Learning-rate schedules (dg.schedules): their values against PyTorch's schedulers and optax's
formulas, the rate each compiled train step uses (computed natively from the step counter), and
checkpoints resuming a schedule where it was.

Tolerances: the schedules are a few float64 operations (cos to <= 2 ulp), so 1e-12 relative."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_optimizers import TorchSGD, batches, loss_and_grads, make_model

import drug as dg

S = dg.schedules
STEPS = 40


def optax_cosine(peak, decay_steps, alpha, step):
    """optax.cosine_decay_schedule(peak, decay_steps, alpha), as its source computes it."""
    t = min(step, decay_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * t / decay_steps))
    return peak * ((1 - alpha) * cosine + alpha)


def optax_linear(init, end, transition_steps, step):
    """optax.linear_schedule(init, end, transition_steps)."""
    frac = 1 - min(step, transition_steps) / transition_steps
    return (init - end) * frac + end


CLOSED_FORMS = [
    (S.constant(0.3), lambda t: 0.3),
    (S.cosine_decay(0.1, 30, final=0.01), lambda t: optax_cosine(0.1, 30, 0.1, t)),
    (S.linear_warmup(0.2, 10, start=0.02), lambda t: optax_linear(0.02, 0.2, 10, t)),
    (S.step_decay(0.5, 7, gamma=0.3), lambda t: 0.5 * 0.3 ** (t // 7)),
    (
        S.warmup_cosine(1.0, 5, 35, final=0.1),
        lambda t: optax_linear(0.0, 1.0, 5, t) if t < 5 else optax_cosine(1.0, 30, 0.1, t - 5),
    ),
    (S.cosine_decay(0.2, 20) * 0.5, lambda t: 0.5 * optax_cosine(0.2, 20, 0.0, t)),
]


@pytest.mark.parametrize(
    "schedule,formula", CLOSED_FORMS, ids=lambda v: repr(v)[:40] if isinstance(v, S.Schedule) else ""
)
def test_python_values_match_formulas(schedule, formula):
    got = [schedule(t) for t in range(STEPS)]
    np.testing.assert_allclose(got, [formula(t) for t in range(STEPS)], rtol=1e-12, atol=1e-15)


def _torch_rates(make_scheduler, steps=STEPS, lr=1.0):
    torch = pytest.importorskip("torch", reason="compares with PyTorch's schedulers")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make_scheduler(torch.optim.lr_scheduler, opt)
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return rates


TORCH_CASES = [
    (
        S.cosine_decay(0.1, STEPS - 1, final=0.001),
        lambda m, o: m.CosineAnnealingLR(o, T_max=STEPS - 1, eta_min=0.001),
        0.1,
    ),
    (S.step_decay(0.1, 9, gamma=0.5), lambda m, o: m.StepLR(o, step_size=9, gamma=0.5), 0.1),
    (S.linear_warmup(0.1, 12, start=0.01), lambda m, o: m.LinearLR(o, start_factor=0.1, total_iters=12), 0.1),
    (
        S.one_cycle(0.1, STEPS, pct_start=0.25),
        lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=STEPS, pct_start=0.25, cycle_momentum=False),
        0.1,
    ),
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # PyTorch's note on calling scheduler.step() order
@pytest.mark.parametrize("schedule,make,lr", TORCH_CASES, ids=["cosine", "step", "linear", "one_cycle"])
def test_values_match_torch_schedulers(schedule, make, lr):
    expected = _torch_rates(make, lr=lr)
    np.testing.assert_allclose([schedule(t) for t in range(STEPS)], expected, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
@pytest.mark.parametrize("schedule", [c[0] for c in CLOSED_FORMS] + [S.one_cycle(0.2, 8)], ids=lambda s: repr(s)[:30])
def test_train_steps_use_the_schedule(schedule, backend):
    """SGD with a schedule updates exactly like SGD whose lr is set to schedule(step) before each step."""
    g, loss = make_model()
    train = g.compile(loss=loss, optimizer=dg.SGD(schedule, momentum=0.5), backend=backend)
    reference, params = TorchSGD(0.0, 0.5), {k: g.params[k].copy() for k in ("w", "b")}
    for step, (x, t) in enumerate(batches(12)):
        assert train.lr == pytest.approx(schedule(step), rel=1e-12, abs=1e-15)  # the rate this step uses
        reference.lr = schedule(step)
        _, grads = loss_and_grads(params, x, t)
        reference.step(params, grads)
        train(x=x, t=t)
    for k in params:
        np.testing.assert_allclose(g.params[k], params[k], rtol=1e-11, atol=1e-14, err_msg=k)


def test_float32_native_schedule_is_close():
    """loss = mean(x @ w) with x all ones has gradient 1 for each weight: an SGD step moves w by
    exactly the rate the native step computed in float32."""
    g = dg.Graph()
    x = g.input("x", (None, 2))
    loss = dg.mean(x @ g.parameter("w", (2, 1)))
    schedule = S.warmup_cosine(3e-3, 10, 1000, final=1e-5)
    train = g.compile(loss=loss, optimizer=dg.SGD(schedule), backend="llvm")
    for step in range(30):
        before = g.params["w"].astype(np.float64)
        train(x=np.ones((2, 2), np.float32))
        np.testing.assert_allclose(before - g.params["w"], schedule(step), rtol=2e-4, atol=1e-9)


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_checkpoint_resumes_the_schedule(backend, tmp_path):
    schedule = S.warmup_cosine(0.05, 3, 12)
    data = batches(10)
    g, loss = make_model()
    train = g.compile(loss=loss, optimizer=dg.Adam(schedule, clip_norm=1.0), backend=backend)
    for x, t in data[:4]:
        train(x=x, t=t)
    train.save(tmp_path / "ck.npz")
    rates = []
    for x, t in data[4:]:
        rates.append(train.lr)
        train(x=x, t=t)
    final = g.params["w"].copy()

    g2, loss2 = make_model(seed=3)
    resumed = g2.compile(loss=loss2, optimizer=dg.Adam(schedule, clip_norm=1.0), backend=backend)
    resumed.load(tmp_path / "ck.npz")
    assert resumed.state["step/count"] == 4 and resumed.step_count == 4
    again = []
    for x, t in data[4:]:
        again.append(resumed.lr)
        resumed(x=x, t=t)
    assert again == rates and again == [pytest.approx(schedule(s), rel=1e-12) for s in range(4, 10)]
    np.testing.assert_allclose(g2.params["w"], final, rtol=1e-12)


def test_a_scheduled_rate_cannot_be_assigned():
    g, loss = make_model()
    train = g.compile(loss=loss, optimizer=dg.SGD(S.constant(0.1)), backend="numpy")
    with pytest.raises(dg.GraphError, match="follows a schedule"):
        train.lr = 0.5


def test_bad_schedules():
    with pytest.raises(ValueError, match="decay_steps > 0"):
        S.cosine_decay(0.1, 0)
    with pytest.raises(ValueError, match="one boundary fewer"):
        S.join([S.constant(1.0)], [3])
    with pytest.raises(ValueError, match="lr must be a finite non-negative number or a schedule"):
        dg.Adam(lr="fast")

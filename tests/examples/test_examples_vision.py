"""The vision examples as a user runs them (`--smoke`: a slice of MNIST, a few batches): the loss goes
down, checkpoints resume exactly, the GAN writes a valid sample grid, and each GAN step trains only
its own side's parameters."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import EXAMPLES, run_example

import drug as dg

FLOAT = r"([0-9.]+)"


@pytest.fixture(autouse=True)
def one_blas_thread(monkeypatch):
    """The example processes inherit OPENBLAS_NUM_THREADS=1. These runs test behaviour, not speed, and
    on a loaded machine a 2-thread OpenBLAS makes each of the conv net's hundreds of small GEMMs per
    step wait for a descheduled worker: a smoke run measured 75 s instead of 1.5 s."""
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")


def epoch_losses(out: str, pattern: str = rf"^epoch \d+: mean loss {FLOAT}") -> list[float]:
    return [float(v) for v in re.findall(pattern, out, re.MULTILINE)]


def summary_accuracy(out: str) -> float:
    match = re.search(rf"^summary: test accuracy {FLOAT} after", out, re.MULTILINE)
    assert match, f"no summary line in:\n{out}"
    return float(match.group(1))


def test_mnist_dense_smoke():
    out = run_example("mnist_dense.py", "--smoke", "--epochs", "1")
    assert re.search(r"^summary: test accuracy 0\.\d{4} after 1 epoch\(s\), .* backend llvm$", out, re.MULTILINE), out
    assert summary_accuracy(out) > 0.5  # 8 Adam steps on 1024 images: ~0.75; chance is 0.1


def test_mnist_conv_smoke_save_and_resume(tmp_path):
    ckpt = str(tmp_path / "conv.npz")
    out = run_example("mnist_conv.py", "--smoke", "--epochs", "2", "--save", ckpt)
    losses = epoch_losses(out)
    assert len(losses) == 2 and losses[1] < losses[0], out
    trained = summary_accuracy(out)
    assert trained > 0.2, out  # 16 steps from chance (0.1): ~0.6

    # zero epochs from the checkpoint: the very parameters that were saved, so the same accuracy
    resumed = run_example("mnist_conv.py", "--smoke", "--epochs", "0", "--resume", ckpt)
    assert summary_accuracy(resumed) == trained, resumed
    # one more epoch continues from there: below the fresh run's first epoch
    more = epoch_losses(run_example("mnist_conv.py", "--smoke", "--epochs", "1", "--resume", ckpt))
    assert more[0] < losses[0]


def test_mnist_conv_torch_twin_matches():
    """Same initial parameters, batches and optimizer: PyTorch's first-epoch loss agrees with drug's."""
    pytest.importorskip("torch")
    out = run_example("mnist_conv.py", "--smoke", "--epochs", "1", "--torch")
    (drug_loss,) = epoch_losses(out)
    (torch_loss,) = epoch_losses(out, rf"^torch epoch \d+: mean loss {FLOAT}")
    assert abs(drug_loss - torch_loss) < 2e-3 * drug_loss, out  # float32, different summation orders
    assert re.search(r"^drug +0\.\d{4} +[0-9.]+$", out, re.MULTILINE), out
    assert re.search(r"^torch +0\.\d{4} +[0-9.]+$", out, re.MULTILINE), out


def test_mnist_conv_torch_flag_without_torch():
    """`sys.modules["torch"] = None` makes torch unimportable, as if it were not installed."""
    script = (
        "import runpy, sys; sys.modules['torch'] = None; "
        f"sys.argv = ['mnist_conv.py', '--torch', '--smoke']; sys.path.insert(0, {str(EXAMPLES)!r}); "
        f"runpy.run_path({str(EXAMPLES / 'mnist_conv.py')!r}, run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--torch needs PyTorch" in proc.stderr, proc.stderr
    assert "epoch" not in proc.stdout  # refused before training


def test_gan_smoke_writes_grid_and_resumes(tmp_path):
    png, ckpt = tmp_path / "grid.png", str(tmp_path / "gan.npz")
    out = run_example("gan_mnist.py", "--smoke", "--epochs", "2", "--grid", "5", "--out", str(png), "--save", ckpt)
    first = re.search(rf"^first step: D loss {FLOAT}, G loss {FLOAT}$", out, re.MULTILINE)
    last = re.findall(rf"^epoch \d+: D loss {FLOAT}, G loss {FLOAT}, ", out, re.MULTILINE)
    assert first and len(last) == 2, out
    assert float(last[-1][0]) < float(first.group(1)), out  # the discriminator learns
    assert re.search(r"^summary: 2 epoch\(s\), 32 steps per side, .* \(5x5\)$", out, re.MULTILINE), out

    import matplotlib.image

    image = matplotlib.image.imread(png)  # fails on a truncated or non-PNG file
    side = 5 * (28 + 2) + 2
    assert image.shape[:2] == (side, side), image.shape
    assert image.std() > 0.05  # digits (or at least blobs) on a black background, not a blank image

    # zero epochs from the checkpoints: the same generator draws the same grid (the same fixed noise)
    again = tmp_path / "again.png"
    run_example("gan_mnist.py", "--smoke", "--epochs", "0", "--grid", "5", "--out", str(again), "--resume", ckpt)
    assert np.array_equal(matplotlib.image.imread(again), image)


@pytest.fixture
def gan_example(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import gan_mnist

    return gan_mnist


def snapshot(graph: dg.Graph, params: list[dg.Node]) -> dict[str, np.ndarray]:
    return {p.name: np.array(graph.params[p.name]) for p in params}


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_gan_steps_train_only_their_side(gan_example, backend):
    gan = gan_example.build(noise=8, g_hidden=[16], d_hidden=[16, 8], seed=0)
    d_step, g_step = gan_example.compile_steps(gan, lr=1e-2, backend=backend)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (6, 784)).astype(np.float32)
    z = rng.standard_normal((6, 8)).astype(np.float32)
    sides = {"generator": gan.gen_params, "discriminator": gan.disc_params}
    assert len(sides["generator"]) == 4 and len(sides["discriminator"]) == 6

    for step, feeds, trained, frozen in (
        (g_step, {"z": z}, "generator", "discriminator"),
        (d_step, {"x": x, "z": z}, "discriminator", "generator"),
    ):
        before = {side: snapshot(gan.graph, params) for side, params in sides.items()}
        step(**feeds)
        after = {side: snapshot(gan.graph, params) for side, params in sides.items()}
        for name, value in before[frozen].items():
            assert np.array_equal(after[frozen][name], value), f"{trained} step changed {frozen} parameter {name}"
        for name, value in before[trained].items():
            assert not np.array_equal(after[trained][name], value), f"{trained} step left {name} unchanged"

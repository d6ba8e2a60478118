"""examples/mnist_resnet.py as a user runs it (`--smoke`: 1024 training images, 8 batches an
epoch): the loss goes down, a run stopped and resumed from its checkpoint continues exactly as the
uninterrupted run (parameters, batch-norm statistics, AdamW moments and the cosine schedule's step
counter), and the PyTorch twin computes the same losses."""

from __future__ import annotations

import re

import pytest
from conftest import run_example
from test_examples_vision import FLOAT, epoch_losses, summary_accuracy


@pytest.fixture(autouse=True)
def one_blas_thread(monkeypatch):
    """As in test_examples_vision: behaviour, not speed; a 2-thread OpenBLAS on a loaded machine
    makes the many small GEMMs wait for descheduled workers."""
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")


def test_resnet_smoke_and_exact_resume(tmp_path):
    whole = run_example("mnist_resnet.py", "--smoke", "--epochs", "2")
    losses = epoch_losses(whole)
    assert len(losses) == 2 and losses[1] < losses[0], whole
    assert re.search(r"^summary: test accuracy 0\.\d{4} after 2 epoch\(s\), .* backend llvm, \d+ thread", whole,
                     re.MULTILINE), whole  # fmt: skip

    ckpt = str(tmp_path / "resnet.npz")
    first = run_example("mnist_resnet.py", "--smoke", "--epochs", "2", "--stop-after", "1", "--save", ckpt)
    assert epoch_losses(first) == losses[:1], first
    second = run_example("mnist_resnet.py", "--smoke", "--epochs", "2", "--resume", ckpt)
    assert "resumed after epoch 1 (step 8)" in second, second
    assert epoch_losses(second) == losses[1:], second  # the schedule went on from step 8, not from 0
    assert summary_accuracy(second) == summary_accuracy(whole)


def test_resnet_torch_twin_matches():
    """Same initial parameters and statistics, batches, shifts, AdamW, schedule and clipping:
    PyTorch's epoch loss agrees with drug's (float32 sums in different orders)."""
    pytest.importorskip("torch")
    out = run_example("mnist_resnet.py", "--smoke", "--epochs", "1", "--torch")
    drug_losses = epoch_losses(out)
    torch_losses = epoch_losses(out, rf"^torch epoch \d+: mean loss {FLOAT}")
    assert len(drug_losses) == len(torch_losses) == 1, out
    for mine, theirs in zip(drug_losses, torch_losses):
        assert abs(mine - theirs) < 5e-3 * mine, out
    assert re.search(r"^drug is [0-9.]+x as fast per epoch \([0-9.]+x in CPU time\)$", out, re.MULTILINE), out

"""The MNIST examples as a user runs them on the OpenCL device (`--backend opencl --smoke`): they
train to the same losses and accuracies as on the LLVM backend (same batches, same float32 maths
up to summation order)."""

from __future__ import annotations

import re

import pytest
from conftest import run_example

pytestmark = pytest.mark.usefixtures("opencl")


def summary(out: str) -> tuple[float, float]:
    loss = re.search(r"^epoch 1: mean loss ([0-9.]+)", out, re.MULTILINE)
    accuracy = re.search(r"^summary: test accuracy ([0-9.]+) after", out, re.MULTILINE)
    assert loss and accuracy, out
    return float(loss.group(1)), float(accuracy.group(1))


@pytest.mark.parametrize("script", ["mnist_dense.py", "mnist_conv.py"])
def test_example_on_the_device_matches_llvm(script, monkeypatch, opencl):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # see tests/examples/test_examples_vision.py
    device = run_example(script, "--smoke", "--epochs", "1", "--backend", "opencl")
    assert re.search(rf"backend opencl \({re.escape(opencl.title)}\)", device), device
    host = run_example(script, "--smoke", "--epochs", "1", "--backend", "llvm")
    (device_loss, device_accuracy), (host_loss, host_accuracy) = summary(device), summary(host)
    assert device_loss == pytest.approx(host_loss, rel=2e-3), (device, host)
    assert abs(device_accuracy - host_accuracy) <= 0.01, (device, host)  # 500 test images: 5 may flip
    assert device_accuracy > 0.2  # chance is 0.1

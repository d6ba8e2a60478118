"""Smoke runs of examples/ptb_char_transformer.py (a tiny model on a slice of the data): it trains,
reports bits per character, samples text, saves and resumes, and its PyTorch twin agrees."""

from __future__ import annotations

import importlib.util
import re

import pytest
from conftest import run_example


def summary(out: str) -> dict[str, float]:
    found = re.search(r"summary: valid ([\d.]+) bits/char, test ([\d.]+) bits/char, ([\d.]+) s/epoch", out)
    assert found, out
    return {"valid": float(found[1]), "test": float(found[2]), "epoch_s": float(found[3])}


def test_smoke_trains_samples_and_resumes(tmp_path):
    ckpt = tmp_path / "model.npz"
    out = run_example("ptb_char_transformer.py", "--smoke", "--save", str(ckpt), "--plot", str(tmp_path / "c.png"))
    first = summary(out)
    assert first["valid"] < 5.0  # the uniform distribution over 50 symbols is log2(50) = 5.64 bits
    assert "generated (sampled" in out and ckpt.exists() and (tmp_path / "c.png").exists()
    resumed = summary(run_example("ptb_char_transformer.py", "--smoke", "--resume", str(ckpt)))
    assert resumed["valid"] < first["valid"]  # a second round of training from the checkpoint


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="--torch needs PyTorch (the bench extra)")
def test_torch_twin_learns_the_same(tmp_path):
    out = run_example("ptb_char_transformer.py", "--smoke", "--torch", "--dropout", "0")
    drug_row = re.search(r"^drug\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    torch_row = re.search(r"^torch\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert drug_row and torch_row, out
    # the same initial parameters, batches and updates (no dropout): the same model, to float rounding
    assert abs(float(drug_row[1]) - float(torch_row[1])) < 2e-3

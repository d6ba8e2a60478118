"""The README is what a new user runs first: its two commands come first, its quickstart runs as
written and prints what it says, and `drug-bench --help` tells the truth."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_the_two_commands_come_first():
    first_block = re.search(r"```sh\n(.*?)```", README, re.S).group(1)
    assert README.index("```sh") < README.index("\n## ")
    assert [line.split()[:2] for line in first_block.strip().splitlines()] == [["make", "demo"], ["make", "test"]]


def test_readme_is_short_and_links_exist():
    assert len(README.splitlines()) <= 200
    for target in re.findall(r"\]\(((?:docs/|LICENSE)[^)#]*)", README):
        assert (ROOT / target).exists(), f"README links to missing {target}"


def test_quickstart_runs_and_prints_its_accuracy(tmp_path):
    code = re.search(r"## Quickstart\n```python\n(.*?)```", README, re.S).group(1)
    script = tmp_path / "quickstart.py"
    script.write_text(code)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert re.fullmatch(r"epoch 1: loss \d\.\d{3}", lines[0]) and re.fullmatch(r"epoch 2: loss \d\.\d{3}", lines[1])
    accuracy = float(re.fullmatch(r"test accuracy (\d+\.\d+)%", lines[-1]).group(1))
    assert accuracy > 94.0  # the README says "about 96%"


def test_bench_help_describes_what_it_does():
    text = subprocess.run(
        [sys.executable, "-m", "drug.bench.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "worker process of its own" in text and "--same-process" in text
    assert "interleaved across frameworks in one process" not in text

# Every target works on a fresh machine: `install` builds .venv from the project's own files.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install install-bench test lint format demo bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: install
	$(PY) examples/mnist_dense.py --epochs 1

# The peers (PyTorch CPU build, JAX), rich and matplotlib; torch is pinned to its CPU wheel.
install-bench: install
	$(PY) -m pip install --quiet -e '.[test,bench]'

# `make bench ARGS="--quick --only mlp,gru"`; without the bench extra, only drug and NumPy run.
bench: install
	$(PY) -m drug.bench.cli $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

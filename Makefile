# Every target works on a fresh machine: `install` builds .venv from the project's own files.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install install-mpi install-bench install-onnx test lint format demo aot-demo bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

# lint-imports checks the layer contracts in setup.cfg on an installed copy of the package (grimp
# reads the package's own folder; here setuptools assembles drug/ from the top-level folders).
IMPORTS := build/importlinter
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	rm -rf $(IMPORTS)
	$(PY) -m pip install --quiet --no-deps --target $(IMPORTS) .
	cd $(IMPORTS) && $(abspath $(VENV))/bin/lint-imports $(abspath setup.cfg)

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: install
	$(PY) examples/mnist_dense.py --epochs 1

# The demo's MLP compiled ahead of time (examples/aot/mlp.py -> build/aot/libmlp.so) and trained from C
# (examples/aot/mnist_train.c); needs the system OpenBLAS and zlib (apt-get install libopenblas-dev zlib1g-dev).
AOT := build/aot
aot-demo: install
	$(VENV)/bin/drug-compile examples/aot/mlp.py --out $(AOT) --name mlp
	$(CC) -O2 -std=c11 -Wall -Wextra -I$(AOT) examples/aot/mnist_train.c -L$(AOT) -lmlp -lopenblas -lz \
		-Wl,-rpath,'$$ORIGIN' -o $(AOT)/mnist_train
	$(AOT)/mnist_train drug/data/mnist $(AOT)/mnist_mlp.npz

# mpi4py for data-parallel training (drug.distributed, tests/api/test_distributed.py); it needs an MPI
# library and mpirun first: apt-get install openmpi-bin libopenmpi-dev (.ci/run does).
install-mpi: install
	$(PY) -m pip install --quiet -e '.[test,mpi]'

# onnx and onnxruntime for drug.onnx (import/export), its tests and the onnx benchmark workload.
install-onnx: install
	$(PY) -m pip install --quiet -e '.[test,onnx]'

# The peers (PyTorch CPU build, JAX), rich and matplotlib; torch is pinned to its CPU wheel.
install-bench: install
	$(PY) -m pip install --quiet -e '.[test,bench]'

# `make bench ARGS="--quick --only mlp,gru"`; without the bench extra, only drug and NumPy run.
bench: install
	$(PY) -m drug.bench.cli $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Every target works on a fresh machine: `install` builds .venv from the project's own files.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install install-mpi install-gpu install-onnx install-torch install-bench install-docs test lint format demo aot-demo bench docs wheel-check clean

install: $(STAMP)

# pip prints what it downloads and installs: a fresh install takes a minute or two.
$(STAMP): setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "Installing drug (editable) with its test tools into $(VENV)..."
	$(PY) -m pip install --progress-bar on -e '.[test]'
	@# drug's GEMM and convolution kernels for this machine, so that a first compile does not wait for them
	$(PY) -m drug.backends.llvm.prebuild || echo "drug: kernels not prebuilt; they compile on first use instead"
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
	$(PY) -m pip install --progress-bar on -e '.[test,mpi]'

# pyopencl and pyclblast for the OpenCL backend (backend="opencl", tests/backends/opencl); they need an OpenCL
# driver and CLBlast first: apt-get install pocl-opencl-icd ocl-icd-libopencl1 libclblast-dev (.ci/run does).
install-gpu: install
	$(PY) -m pip install --progress-bar on -e '.[test,gpu]'

# onnx and onnxruntime for drug.onnx (import/export), its tests and the onnx benchmark workload.
install-onnx: install
	$(PY) -m pip install --progress-bar on -e '.[test,onnx]'

# PyTorch's CPU wheel and onnxscript, for the tests that compare with PyTorch (convolutions,
# attention, ONNX round trips from torch.onnx.export); without them those tests skip, saying so.
install-torch: install
	$(PY) -m pip install --progress-bar on -e '.[test,torch]'

# The peers (PyTorch CPU build, JAX), rich and matplotlib; torch is pinned to its CPU wheel.
install-bench: install
	@echo "Installing the benchmark peers (PyTorch CPU build, JAX) into $(VENV): several hundred MB..."
	$(PY) -m pip install --progress-bar on -e '.[test,bench]'

# `make bench ARGS="--quick --only mlp,gru"`; without the bench extra, only drug and NumPy run.
bench: install
	$(PY) -m drug.bench.cli $(ARGS)

# The documentation site (docs/, mkdocs.yml) into build/site, warnings as errors. mkdocstrings reads
# the API reference from the package as installed (build/docs-src): setuptools assembles drug/ from
# the top-level folders, so this tree is not importable as the package.
DOCS_STAMP := $(VENV)/.installed-docs
DOCS_SRC := build/docs-src
install-docs: $(DOCS_STAMP)
$(DOCS_STAMP): $(STAMP)
	@echo "Installing the documentation tools (mkdocs, mkdocs-material, mkdocstrings) into $(VENV)..."
	$(PY) -m pip install --progress-bar on -e '.[test,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	rm -rf $(DOCS_SRC)
	$(PY) -m pip install --quiet --no-deps --target $(DOCS_SRC) .
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	@echo "Documentation: build/site/index.html"

# The sdist and the wheel (python -m build), each installed into a fresh venv and run as a user would.
wheel-check: install
	bash .ci/wheel-check

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

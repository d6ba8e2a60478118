"""Helpers shared by the test modules: graphs built from an op's Example, finite differences."""

from __future__ import annotations

import functools
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import drug as dg

# drug's own ops, and those of them with a random example (`Op.example`) for the registry-driven tests
BUILTIN_OPS = {name: cls for name, cls in dg.ops.REGISTRY.items() if cls.__module__.startswith("drug.")}
OPS_WITH_EXAMPLE = sorted(
    name for name, cls in BUILTIN_OPS.items() if cls.example(np.random.default_rng(0), [2, 2, 2]) is not None
)


def declared_shape(array: np.ndarray, batch_axis: int | None) -> tuple:
    """The shape to declare for `array`, with `batch_axis` (if any) as the symbolic batch dim."""
    shape = list(array.shape)
    if batch_axis is not None:
        shape[batch_axis] = None
    return tuple(shape)


def build_from_example(op, example, dtype: str = "float64"):
    """A float64 graph with one input per example input, and the node `op(*inputs)`.

    Float inputs take the graph's dtype; integer inputs keep their own dtype. Returns
    (graph, input nodes, output node, feeds) where feeds maps input names to arrays."""
    g = dg.Graph(dtype=dtype)
    nodes, feeds = [], {}
    for i, array in enumerate(example.inputs):
        array = np.asarray(array)
        if array.dtype.kind == "f":
            array = array.astype(dtype)
        name = f"in{i}"
        nodes.append(g.input(name, declared_shape(array, example.batch_axis.get(i)), dtype=str(array.dtype)))
        feeds[name] = array
    out = op(*nodes)
    return g, nodes, out, feeds


def output_and_gradients(name: str, dtype: str, dims, int_dtype: str, rng: np.random.Generator):
    """The registry example of op `name` (integer inputs as `int_dtype`) with its output and, for
    its differentiable inputs, the gradients of sum(out * r) for a random r: (graph, output node,
    targets, their labels, feeds). The backends' registry tests compare these with the NumPy backend."""
    op, example = dg.ops.REGISTRY[name].example(rng, dims)
    example.inputs = [a.astype(int_dtype) if a.dtype.kind == "i" else a for a in example.inputs]
    g, nodes, out, feeds = build_from_example(op, example, dtype)
    wrt = [n for n, d in zip(nodes, example.differentiable) if d]
    targets, labels = [out], ["output"]
    if wrt:
        r = rng.standard_normal(np.shape(op.ref(*feeds.values()))).astype(out.dtype)
        loss = dg.sum(out * g.input("r", out.shape, dtype=str(out.dtype)))
        targets += list(dg.grad(loss, wrt))
        labels += [f"d/d {n.name}" for n in wrt]
        feeds = {**feeds, "r": r}
    return g, out, targets, labels, feeds


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of the scalar function f at x, in float64 (x is restored)."""
    assert x.dtype == np.float64, "finite differences need float64"
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def numeric_jacobian(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central-difference jacobian of the array function f at x: shape f().shape + x.shape."""
    assert x.dtype == np.float64, "finite differences need float64"
    y_shape = np.shape(f())
    jac = np.zeros((int(np.prod(y_shape)), x.size))
    flat = x.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = np.array(f(), dtype=np.float64).reshape(-1)
        flat[i] = old - eps
        minus = np.array(f(), dtype=np.float64).reshape(-1)
        flat[i] = old
        jac[:, i] = (plus - minus) / (2 * eps)
    return jac.reshape(y_shape + x.shape)


@functools.cache
def opencl_device():
    """The device OpenCL tests run on (DRUG_OPENCL_DEVICE's, else the first) and "", or None and why
    there is none (no pyopencl, no OpenCL driver)."""
    try:
        return dg.backends.get_backend("opencl").device(), ""
    except dg.GraphError as error:
        return None, str(error)


def unavailable(backend: str) -> str | None:
    """Why `backend` cannot run on this machine, or None: the opencl backend needs a device."""
    if backend.partition(":")[0] != "opencl":
        return None
    device, reason = opencl_device()
    return None if device is not None else f"no OpenCL device: {reason}"


def skip_unless_available(backend: str) -> None:
    reason = unavailable(backend)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def opencl():
    """The OpenCL device; a test using it skips, saying why, where there is none."""
    skip_unless_available("opencl")
    return opencl_device()[0]


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def call(fn, feeds: dict):
    """Call a compiled function with the subset of `feeds` it takes."""
    wanted = {n.name for n in fn.inputs}
    return fn(**{k: v for k, v in feeds.items() if k in wanted})


# Finite differences in float64 with eps=1e-6: the truncation error is ~eps**2 * |f'''| / 6
# (~1e-12 for the O(1..100) third derivatives of these smooth test functions) and the rounding
# error ~ulp(|f|) / eps (~2e-10 * |f|, i.e. < 1e-8 for |f| < 50). Both sit far below
# atol=1e-7 + rtol=1e-5 * |grad|, while a wrong gradient rule is off by O(1).
FD_EPS, FD_RTOL, FD_ATOL = 1e-6, 1e-5, 1e-7


def assert_grads_match_fd(loss, wrt, feeds: dict):
    """Compile d(loss)/d(wrt) (wrt: input nodes) with the numpy backend; compare with finite
    differences of the compiled loss. Returns the symbolic gradients' values."""
    g = loss.graph
    f_loss = g.compile(outputs=loss, backend="numpy")
    grads = dg.grad(loss, list(wrt))
    f_grad = g.compile(outputs=grads, backend="numpy")
    got = call(f_grad, feeds)
    got = got if isinstance(got, tuple) else (got,)
    for node, value in zip(wrt, got):
        x = feeds[node.name]
        assert value.shape == x.shape, f"gradient of {node.name} has shape {value.shape}, input {x.shape}"
        expected = numeric_grad(lambda: float(call(f_loss, feeds)), x, FD_EPS)
        np.testing.assert_allclose(value, expected, rtol=FD_RTOL, atol=FD_ATOL, err_msg=f"d loss / d {node.name}")
    return got


def graph_errors_in_thread(fn, timeout: float = 60, **feeds) -> list:
    """Call `fn(**feeds)` on a daemon thread and return the GraphErrors it raised; fails the test if
    the call is still running after `timeout` seconds (a deadlock)."""
    errors = []

    def call():
        try:
            fn(**feeds)
        except dg.GraphError as error:
            errors.append(error)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout=timeout)
    assert not thread.is_alive(), "the call deadlocked"
    return errors


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(script: str, *args: str, timeout: float = 300) -> str:
    """Run examples/<script> in a fresh interpreter (as a user would) and return its stdout;
    a failing run fails the test with the script's stderr."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{script} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc.stdout

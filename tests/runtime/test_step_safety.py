"""A native step that fails part-way changes nothing, Python callbacks see the right memory, and
a compiled function cannot be re-entered from its own step. (Regressions found for issue 8.)"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import graph_errors_in_thread

import drug as dg

BACKENDS = ["numpy", "llvm"]


class Cube(dg.Op):
    """A custom op without a native kernel: runs through the Python callback."""

    name = "test_safety_cube"
    arity = 1
    fail_backward = False

    def infer(self, x):
        return x

    def ref(self, x):
        return x**3

    def grad(self, g, out, x):
        return [CubeGrad()(g, x)]


class CubeGrad(dg.Op):
    name = "test_safety_cube_grad"
    arity = 2

    def infer(self, g, x):
        return x

    def ref(self, g, x):
        if Cube.fail_backward:
            raise ValueError("backward refused")
        return g * 3.0 * x * x


@pytest.mark.parametrize("backend", BACKENDS)
def test_callback_outputs_are_returned(backend):
    """The native runtime writes outputs straight into the arrays it returns; a callback wrote
    into the arena instead, so custom-op outputs came back as uninitialized memory."""
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 3))
    c = Cube()(x)
    fn = g.compile(outputs=[c, c * 2.0, dg.reshape(c, (None, 3, 1))], backend=backend)
    xv = np.arange(6.0).reshape(2, 3)
    for _ in range(2):  # the second call reuses the returned arrays' memory
        cube, double, column = fn(x=xv)
        np.testing.assert_array_equal(cube, xv**3)
        np.testing.assert_array_equal(double, 2 * xv**3)
        np.testing.assert_array_equal(column, (xv**3)[:, :, None])


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_failing_in_the_backward_pass_changes_nothing(backend, monkeypatch):
    """w1's update does not depend on the failing callback, and the native schedule ran it first:
    the step raised but w1 had moved. Kernels that may fail (callbacks, id checks) now run before
    every in-place update."""
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 3))
    w1, w2 = g.parameter("w1", (3,)), g.parameter("w2", (3,))
    step = g.compile(loss=dg.sum(Cube()(x * w2)) + dg.sum(w1 * w1), optimizer=dg.Adam(0.1), backend=backend)
    step(x=np.ones((2, 3)))
    before = [v.copy() for v in list(g.params.values()) + list(step.state.values())]
    monkeypatch.setattr(Cube, "fail_backward", True)
    with pytest.raises(ValueError, match="backward refused"):
        step(x=np.ones((2, 3)))
    for old, new in zip(before, list(g.params.values()) + list(step.state.values())):
        np.testing.assert_array_equal(new, old)
    assert step.step_count == 1


class CallsBack(dg.Op):
    """A custom op whose forward calls a compiled function (set on the class by the test)."""

    name = "test_safety_calls_back"
    arity = 1
    target = None

    def infer(self, x):
        return x

    def ref(self, x):
        CallsBack.target(x=np.ascontiguousarray(x))
        return x


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_step_cannot_reenter_its_graph(backend, monkeypatch):
    """Before: a plain lock deadlocked (native) or the nested call overwrote the running step's
    arena. Now: a clear GraphError, and the function works afterwards."""
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 2))
    fn = g.compile(outputs=CallsBack()(x) + 1.0, backend=backend)
    monkeypatch.setattr(CallsBack, "target", fn)
    errors = graph_errors_in_thread(fn, x=np.zeros((1, 2)))
    assert errors and "called while a step of the same graph is running" in str(errors[0])
    monkeypatch.setattr(CallsBack, "target", lambda **feeds: None)
    np.testing.assert_array_equal(fn(x=np.zeros((1, 2))), np.ones((1, 2)))

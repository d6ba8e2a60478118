"""@dg.elementwise on functions the tracer cannot turn into one expression (issue 16): a loop whose
condition depends on the inputs, a path with more branches than the tracer explores, expressions
too deep to hash or walk; each raises GraphError naming the function, in bounded time and memory.
Tracing is also safe from several threads at once."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

import drug as dg

NEVER_ENDS = """
import resource
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # on failure: MemoryError, not a swapping machine
import drug as dg

def countdown(x):
    while x > 0:
        x = x - 1.0
    return x

try:
    dg.elementwise(countdown)
except dg.GraphError as error:
    print(error)
"""


def test_a_data_dependent_while_loop_raises_naming_the_function():
    """Path enumeration bounded the number of paths but not the branches on one path: the first
    path (every condition true) never ended, taking 22 GB in ten minutes."""
    result = subprocess.run([sys.executable, "-c", NEVER_ENDS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("@dg.elementwise: countdown") and "branches" in result.stdout


def test_many_branches_on_one_path_raise():
    def staircase(x):
        total = 0.0
        for step in range(1000):
            if x > step:
                total = total + 1.0
        return total

    with pytest.raises(dg.GraphError, match="staircase.*branches"):
        dg.elementwise(staircase)


DEEP = """
import drug as dg

def deep(x):
    for _ in range(300_000):
        x = x * 1.0001 + 0.5
    return x

try:
    dg.elementwise(deep)
except dg.GraphError as error:
    print(error)
"""


def test_an_expression_too_deep_raises_instead_of_crashing():
    """Found by the issue-16 campaign: 300,000 chained operations made hashing the nested expression
    keys overflow the C stack (SIGSEGV); 20,000 raised RecursionError."""
    result = subprocess.run([sys.executable, "-c", DEEP], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert result.stdout.startswith("@dg.elementwise: deep") and "deeper than" in result.stdout


def test_long_straight_line_code_still_traces_and_differentiates():
    """A chain of a few hundred operations is fine, forward and gradient (no recursion limit)."""

    def chain(x):
        for _ in range(400):
            x = x * 0.999 + 0.001
        return x

    op = dg.elementwise(chain)
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None,))
    y = op(x)
    fn = g.compile(outputs=[y, dg.grad(dg.sum(y), [x])[0]], backend="numpy")
    value, slope = fn(x=np.array([0.5, 2.0]))
    np.testing.assert_allclose(value, [chain(0.5), chain(2.0)], rtol=1e-12)
    np.testing.assert_allclose(slope, [0.999**400] * 2, rtol=1e-12)


def test_functions_traced_on_several_threads_at_once_keep_their_own_branches():
    """The tracer's current path was one module global: a function traced while another thread was
    inside a trace (here both meet at a barrier between two branches) took the other's decisions,
    and the two expressions came out wrong."""
    barrier = threading.Barrier(2, timeout=10)

    def make(k):
        def f(x):
            y = x * k
            if x > k:
                y = y + 1.0
            barrier.wait()  # both threads are inside a run of the tracer here
            if x < 2.0 * k:
                y = y * 3.0
            return y

        return f

    results, errors = {}, []

    def trace(k):
        try:
            results[k] = dg.elementwise(make(k))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=trace, args=(k,)) for k in (1.0, 3.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    xs = np.array([-1.0, 0.5, 1.5, 2.5, 4.0, 7.0])
    barrier = threading.Barrier(1)  # the plain functions below run alone
    for k, op in results.items():
        g = dg.Graph(dtype="float64")
        x = g.input("x", (None,))
        got = g.compile(outputs=op(x), backend="numpy")(x=xs)
        np.testing.assert_allclose(got, [make(k)(v) for v in xs], rtol=1e-12, err_msg=f"k={k}")

"""Which ops are the same op (issue 16): common-subexpression elimination and the compile cache key
on the op's class itself (two classes made by one factory share module, qualname and source) and
its parameters; a class that is no longer used can be freed."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import drug as dg


def make_scale(factor: float):
    class Scale(dg.Op):
        name = "test_identity_scale"
        arity = 1

        def infer(self, x):
            return x

        def ref(self, x):
            return x * factor

        def grad(self, g, out, x):
            return [g * factor]

    return Scale


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_two_factory_classes_are_two_ops(backend):
    """Classes from one factory (same qualname) were merged by CSE natively: both outputs were 2x.
    (Fixed on main by keying ops on their class; kept as a regression test.)"""
    double, triple = make_scale(2.0), make_scale(3.0)
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 3))
    a, b = double()(x), triple()(x)
    fn = g.compile(outputs=[a, b, a + b], backend=backend)
    xv = np.arange(6.0).reshape(2, 3)
    got = fn(x=xv)
    for value, expected in zip(got, (2 * xv, 3 * xv, 5 * xv)):
        np.testing.assert_array_equal(value, expected)


def test_instances_of_one_class_with_equal_parameters_still_merge():
    double = make_scale(2.0)
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 3))
    assert double().key() == double().key()
    assert double().key() != make_scale(2.0)().key()
    fn = g.compile(outputs=[double()(x) + double()(x)], backend="llvm")
    assert fn.kernel_count <= 2  # one callback for the two equal nodes, one fused add


def test_a_factory_class_is_freed_with_its_graphs():
    """The key's class identity was memoized by functools.cache, keeping every class a factory ever
    made (and everything its closure holds) alive for the life of the process. (The op registry
    keeps the latest class of each name, so a second one is made.)"""
    cls = make_scale(5.0)
    g = dg.Graph(dtype="float64")
    x = g.input("x", (None, 2))
    fn = g.compile(outputs=cls()(x) * 2.0, backend="llvm")
    np.testing.assert_array_equal(fn(x=np.ones((1, 2))), [[10.0, 10.0]])
    ref = weakref.ref(cls)
    latest = make_scale(6.0)
    del cls, g, x, fn
    gc.collect()
    assert ref() is None
    assert latest.name == "test_identity_scale"

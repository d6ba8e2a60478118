"""Where the graph keeps large parameters and constants (core/pages.py): on a cache line, on huge
pages from HUGE_MIN bytes, a copy of the initial value the user keeps no handle on."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

import drug as dg
from drug.core import graph as graph_module
from drug.core.pages import ALIGN, HUGE_PAGE, aligned_copy, aligned_zeros


@pytest.mark.parametrize("huge", [False, True])
@pytest.mark.parametrize("nbytes", [0, 1, 1000, 3 << 20])
def test_aligned_memory_is_zeroed_and_writable(nbytes, huge):
    memory = aligned_zeros(nbytes, huge)
    boundary = HUGE_PAGE if huge and hasattr(mmap, "MADV_HUGEPAGE") else ALIGN
    assert memory.size == nbytes and not memory.any()
    assert nbytes == 0 or memory.ctypes.data % boundary == 0  # an empty array has no address to speak of
    memory[:] = 7
    assert nbytes == 0 or memory[-1] == 7


def test_aligned_copies_keep_shape_dtype_and_values():
    for value in (np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2], np.float64(2.5), np.zeros((0, 3))):
        copy = aligned_copy(np.asarray(value), huge_from=1 << 30)
        assert copy.shape == np.shape(value) and copy.dtype == np.asarray(value).dtype and copy.flags.c_contiguous
        np.testing.assert_array_equal(copy, value)


def test_large_parameters_live_on_huge_pages_and_train():
    g = dg.Graph(seed=0)
    rows = graph_module.HUGE_MIN // (4 * 64) + 1  # just over the threshold in float32
    init = np.ones((rows, 64), np.float32)
    x = g.input("x", (None, rows))
    w = g.parameter("w", (rows, 64), init=init)
    small = g.parameter("b", (64,))
    assert g.params["w"].ctypes.data % (HUGE_PAGE if hasattr(mmap, "MADV_HUGEPAGE") else ALIGN) == 0
    assert g.params["b"].ctypes.data % ALIGN == 0
    init[...] = 0  # the graph holds its own copy
    assert g.params["w"].min() == 1
    step = g.compile(loss=dg.mean((x @ w + small) ** 2), optimizer=dg.SGD(0.01), backend="llvm")
    before = g.params["w"].copy()
    step(x=np.ones((2, rows), np.float32))
    assert not np.array_equal(g.params["w"], before)  # updated in place, where the graph keeps it


def test_constants_live_where_parameters_would_and_stay_read_only():
    g = dg.Graph(seed=0)
    big = g.constant(np.ones((graph_module.HUGE_MIN // 4 + 1,), np.float32))
    small = g.constant(np.arange(3.0))
    assert big.op.value.ctypes.data % (HUGE_PAGE if hasattr(mmap, "MADV_HUGEPAGE") else ALIGN) == 0
    assert small.op.value.ctypes.data % ALIGN == 0 and small.op.value.dtype == np.float32
    assert g.constant(2.5).op.value.shape == ()  # a scalar stays 0-d
    with pytest.raises(ValueError):
        big.op.value[0] = 2


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="no transparent huge pages here")
@pytest.mark.parametrize("nbytes", [1, 1_600_000, HUGE_PAGE, HUGE_PAGE + 1, 5 << 20])
def test_huge_page_memory_spans_whole_huge_pages(nbytes):
    """The kernel backs an address range with a huge page only if the mapping covers all of it: the
    memory's last huge page must lie inside the mapping, wherever the mapping starts."""
    memory = aligned_zeros(nbytes, huge=True)
    mapping = memory.base
    start = memory.ctypes.data - mapping.ctypes.data
    assert start + -(-nbytes // HUGE_PAGE) * HUGE_PAGE <= mapping.size

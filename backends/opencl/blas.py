"""GEMMs through CLBlast (pyclblast), enqueued on the step's queue like any kernel: sizes are
evaluated once per batch size, so a step only calls into CLBlast."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pyclblast
import pyopencl as cl
import pyopencl.array as cl_array

from ...compiler.schedule import Schedule
from .device import Device
from .lowering import Gemm


def prepare(device: Device, gemm: Gemm, batch: int, buffers: dict, schedule: Schedule) -> Callable | None:
    """A callable enqueuing `gemm` at this batch size, or None when it has nothing to compute."""
    m, n, k, count = (s.at(batch) for s in (gemm.m, gemm.n, gemm.k, gemm.count))
    dtype = np.dtype(gemm.dtype)
    queue = device.queue
    if m * n * count == 0:
        return None
    if k == 0:  # an empty sum: C = 0
        start, nbytes = gemm.c_offset.at(batch) * dtype.itemsize, count * m * n * dtype.itemsize
        return functools.partial(cl.enqueue_fill_buffer, queue, buffers[gemm.c], dtype.type(0), start, nbytes)

    def matrix(slot: int):
        elements = max(schedule.buffers[slot].nbytes(batch) // dtype.itemsize, 1)
        return cl_array.Array(queue, (1, elements), dtype, data=buffers[slot])

    a, b, c = matrix(gemm.a), matrix(gemm.b), matrix(gemm.c)
    lda, ldb, ldc = gemm.lda.at(batch), gemm.ldb.at(batch), gemm.ldc.at(batch)
    offsets = dict(a_offset=gemm.a_offset.at(batch), b_offset=gemm.b_offset.at(batch), c_offset=gemm.c_offset.at(batch))
    flags = dict(alpha=1.0, beta=gemm.beta, a_transp=gemm.trans_a, b_transp=gemm.trans_b)
    if count == 1:
        return functools.partial(pyclblast.gemm, queue, m, n, k, a, b, c, lda, ldb, ldc, **flags, **offsets)
    strides = (gemm.stride_a.at(batch), gemm.stride_b.at(batch), gemm.stride_c.at(batch))
    return functools.partial(
        pyclblast.gemmStridedBatched, queue, m, n, k, count, a, b, c, lda, ldb, ldc, *strides, **flags, **offsets
    )

"""Device copies of host arrays (parameters, optimizer state): core/arrays.py's DeviceCopies for
an OpenCL device. One set of copies per (host arrays, device), shared by every compiled function
that reads them there: a train step and a predictor of one graph use the same parameter buffers,
so nothing moves between them. The copies live as long as their host arrays do."""

from __future__ import annotations

import weakref

import numpy as np
import pyopencl as cl

from ...core.arrays import HostArrays
from ...core.memory import human
from .device import Device

_SHARED: dict[tuple[int, int], Resident] = {}  # (id of the host arrays, device index) -> their copies


class Resident:
    """Buffers holding copies of named host arrays on one device; `valid` names those that hold
    the newest value (the host's, or one a step wrote)."""

    def __init__(self, device: Device):
        self.device = device
        self.buffers: dict[str, object] = {}
        self.valid: set[str] = set()

    def buffer(self, key: str, array: np.ndarray):
        """The device buffer of `key` (allocated on first use, for arrays like `array`)."""
        if key not in self.buffers:
            self.buffers[key] = allocate(self.device, array.nbytes, f"'{key}'")
        return self.buffers[key]

    def download(self, key: str, out: np.ndarray) -> None:
        if out.nbytes:
            cl.enqueue_copy(self.device.queue, out, self.buffers[key], is_blocking=True)

    def drop(self, key: str) -> None:
        self.valid.discard(key)

    def upload(self, store: HostArrays, keys) -> None:
        """Bring the newest values of `keys` (wherever they are) into these buffers."""
        for key in keys:
            if key not in self.valid:
                array = store.current(key)
                if array.nbytes:
                    cl.enqueue_copy(self.device.queue, self.buffer(key, array), array, is_blocking=False)
                store.copied_to(self, key)
                self.valid.add(key)


def resident(store: HostArrays, device: Device) -> Resident:
    """The copies of `store`'s arrays on `device`, shared by every compiled function using them."""
    key = (id(store), device.index)
    if key not in _SHARED:
        _SHARED[key] = Resident(device)
        weakref.finalize(store, _SHARED.pop, key, None)
    return _SHARED[key]


def allocate(device: Device, nbytes: int, what: str):
    """A device buffer of `nbytes` (at least one byte), or a MemoryError saying what needed it."""
    if nbytes > device.largest_buffer:
        raise MemoryError(
            f"{what} needs {human(nbytes)}, more than the largest buffer {device.title} allocates "
            f"({human(device.largest_buffer)}); nothing was run"
        )
    try:
        return cl.Buffer(device.context, cl.mem_flags.READ_WRITE, max(nbytes, 1))
    except cl.MemoryError as error:
        raise MemoryError(f"{what} needs {human(nbytes)}, which {device.title} could not allocate: {error}") from None

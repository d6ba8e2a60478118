"""OpenCL devices: what pyopencl sees, which one a compiled function runs on, and the context and
in-order queue every compiled function on that device shares.

A device is chosen by `backend="opencl:<device>"`, else by the DRUG_OPENCL_DEVICE environment
variable, else the first device listed; <device> is an index into `listing()` or a piece of a
device's "platform / name" (case-insensitive)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import pyopencl as cl

from ...core.errors import GraphError
from ...core.memory import human

ENV = "DRUG_OPENCL_DEVICE"
GROUP = 128  # work items per work group (fewer where a device or a kernel allows fewer)


def _platforms() -> list:
    try:
        return cl.get_platforms()
    except (cl.LogicError, cl.RuntimeError) as error:  # the ICD loader found no platform
        raise GraphError(
            f"no OpenCL platform found ({error}); install a driver: your GPU vendor's, or pocl for the CPU "
            "(apt-get install pocl-opencl-icd ocl-icd-libopencl1)"
        ) from None


@functools.cache
def all_devices() -> tuple:
    """Every device of every platform, in listing order."""
    found = tuple(d for p in _platforms() for d in p.get_devices())
    if not found:
        raise GraphError("the OpenCL platforms list no device")
    return found


def _title(device) -> str:
    return f"{device.platform.name.strip()} / {device.name.strip()}"


def listing() -> str:
    """One line per device: index, platform / name, OpenCL C version, memory, double precision."""
    lines = []
    for index, d in enumerate(all_devices()):
        fp64 = "float64" if has_fp64(d) else "no float64"
        lines.append(f"{index}: {_title(d)} ({d.opencl_c_version.strip()}, {human(d.global_mem_size)}, {fp64})")
    return "\n".join(lines)


def has_fp64(device) -> bool:
    return "cl_khr_fp64" in device.extensions.split()


def choose(spec: str | None) -> Device:
    """The device `spec` names (None: DRUG_OPENCL_DEVICE, else the first)."""
    spec = (spec or os.environ.get(ENV) or "0").strip()
    devices = all_devices()
    if spec.isdigit():
        if int(spec) >= len(devices):
            raise GraphError(f"no OpenCL device {spec}; the devices are:\n{listing()}")
        return _opened(int(spec))
    matches = [i for i, d in enumerate(devices) if spec.lower() in _title(d).lower()]
    if not matches:
        raise GraphError(f"no OpenCL device matches {spec!r}; the devices are:\n{listing()}")
    return _opened(matches[0])


@dataclass
class Device:
    """A device opened for drug: its context, queue and the limits code generation needs."""

    index: int
    device: object
    context: object
    queue: object

    @property
    def title(self) -> str:
        return _title(self.device)

    @property
    def fp64(self) -> bool:
        return has_fp64(self.device)

    @property
    def group(self) -> int:
        return min(GROUP, self.device.max_work_group_size)

    @property
    def lanes(self) -> int:
        """Work items sharing one reduction: a power of two the device allows in a group."""
        lanes = 1
        while lanes * 2 <= self.group:
            lanes *= 2
        return lanes

    @property
    def align(self) -> int:
        """Byte alignment of buffers carved out of one allocation (sub-buffer origins)."""
        return max(self.device.mem_base_addr_align // 8, 128)

    @property
    def memory(self) -> int:
        return self.device.global_mem_size

    @property
    def largest_buffer(self) -> int:
        return self.device.max_mem_alloc_size


@functools.cache
def _opened(index: int) -> Device:
    device = all_devices()[index]
    context = cl.Context([device])
    return Device(index, device, context, cl.CommandQueue(context, device))

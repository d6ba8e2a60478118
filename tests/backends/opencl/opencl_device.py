"""The device the OpenCL tests run on (the first one, or DRUG_OPENCL_DEVICE's), and `needs_device`,
which skips a test, saying why, where there is none (no pyopencl, no OpenCL driver)."""

from __future__ import annotations

import importlib.util

import pytest

import drug as dg


def _device_or_reason():
    try:
        return dg.backends.get_backend("opencl").device(), ""
    except dg.GraphError as error:
        return None, str(error)


DEVICE, NO_DEVICE = _device_or_reason()
needs_device = pytest.mark.skipif(DEVICE is None, reason=f"no OpenCL device: {NO_DEVICE}")
needs_pyopencl = pytest.mark.skipif(importlib.util.find_spec("pyopencl") is None, reason="pyopencl is not installed")

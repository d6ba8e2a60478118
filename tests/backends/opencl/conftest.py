"""The OpenCL tests run on the first OpenCL device (DRUG_OPENCL_DEVICE picks another) and skip,
saying why, where there is none (no pyopencl, no driver)."""

from __future__ import annotations

import pytest

import drug as dg


def _device_or_reason():
    try:
        return dg.backends.get_backend("opencl").device(), None
    except dg.GraphError as error:
        return None, str(error)


DEVICE, NO_DEVICE = _device_or_reason()


def pytest_collection_modifyitems(config, items):
    if DEVICE is None:
        skip = pytest.mark.skip(reason=f"no OpenCL device: {NO_DEVICE}")
        for item in items:
            if "backends/opencl" in str(item.fspath):
                item.add_marker(skip)

"""Bad input on the OpenCL backend gets a clear error and changes nothing: no OpenCL platform, no
pyopencl, a device that does not exist, a batch too big for the device's memory, a kernel the
device's compiler rejects (its build log, with the nodes of the kernel)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import drug as dg
from drug.backends.opencl.lowering import kernel
from drug.compiler.grid import Size

SCRIPT = """
import drug as dg
g = dg.Graph()
x = g.input("x", (None, 3))
try:
    g.compile(outputs=dg.exp(x), backend="opencl")
except dg.GraphError as error:
    print("GraphError:", error)
"""


def run_script(prelude: str = "", **env: str) -> str:
    """SCRIPT in a fresh interpreter with these environment variables added."""
    proc = subprocess.run(
        [sys.executable, "-c", prelude + SCRIPT], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_no_opencl_platform(tmp_path):
    """OCL_ICD_VENDORS pointing at an empty directory: the ICD loader finds no driver."""
    pytest.importorskip("pyopencl")
    out = run_script(OCL_ICD_VENDORS=str(tmp_path))
    assert "GraphError: no OpenCL platform found" in out and "pocl-opencl-icd" in out, out


def test_without_pyopencl():
    out = run_script("import sys; sys.modules['pyopencl'] = None\n")
    assert "GraphError: the opencl backend needs pyopencl and pyclblast" in out and "drug[gpu]" in out, out


@pytest.mark.parametrize("spec", ["99", "no such device"])
def test_unknown_device_lists_the_devices(spec, opencl):
    g = dg.Graph()
    x = g.input("x", (None, 3))
    with pytest.raises(dg.GraphError, match=r"(?s)no OpenCL device.*the devices are:\n0: "):
        g.compile(outputs=dg.exp(x), backend=f"opencl:{spec}")


def test_device_chosen_by_name_and_environment(monkeypatch, opencl):
    g = dg.Graph()
    x = g.input("x", (None, 3))
    by_name = g.compile(outputs=dg.exp(x), backend=f"opencl:{opencl.device.name[:6].lower()}")
    assert by_name.device == f"opencl ({opencl.title})"
    monkeypatch.setenv("DRUG_OPENCL_DEVICE", "42")
    with pytest.raises(dg.GraphError, match="no OpenCL device 42"):
        g.compile(outputs=dg.exp(x), backend="opencl")


def test_batch_too_big_for_the_device(rng, opencl):
    """Activations beyond the device's memory: MemoryError before anything runs; smaller batches work."""
    g = dg.Graph(dtype="float32")
    x = g.input("x", (None, 8))
    y = g.input("y", (None,), dtype="int32")
    wide = g.parameter("wide", (8, 4096))
    head = g.parameter("head", (4096, 2))
    step = g.compile(loss=dg.softmax_cross_entropy(dg.relu(x @ wide) @ head, y), optimizer=dg.SGD(lr=0.1),
                     backend="opencl")  # fmt: skip
    before = {k: v.copy() for k, v in g.params.items()}
    batch = opencl.memory // (4096 * 4) + 1  # one (batch, 4096) float32 activation is more than the memory
    xv = np.zeros((batch, 8), np.float32)
    with pytest.raises(MemoryError, match=rf"batch size {batch} need .* on {re.escape(opencl.title)}.*Nothing was run"):
        step(x=xv, y=np.zeros(batch, np.int32))
    assert step.step_count == 0
    for name, value in before.items():
        np.testing.assert_array_equal(g.params[name], value, err_msg=name)
    assert np.isfinite(step(x=xv[:16], y=np.zeros(16, np.int32)))


class _Broken(dg.Op):
    """An op whose (deliberately broken) OpenCL kernel does not compile."""

    name = "opencl_test_broken"
    arity = 1

    def infer(self, x):
        return x

    def ref(self, x):
        return x


@kernel(_Broken)
def _broken(k, node):
    f = k.function(Size.of(node.shape))
    f.lines += [f"    {f.write(node)}[item] = {f.read(node.inputs[0])}[item] + undeclared_name;"]


def test_build_failure_shows_the_log_and_the_nodes(opencl):
    g = dg.Graph(dtype="float32")
    x = g.input("x", (None, 3))
    broken = dg.core.node.apply(_Broken(), dg.exp(x))
    with pytest.raises(dg.GraphError) as caught:
        g.compile(outputs=dg.relu(broken), backend="opencl")
    message = str(caught.value)
    assert "rejected the step's program" in message and "nothing was run" in message
    assert f"computing {broken.label} ('opencl_test_broken'" in message, message
    assert "undeclared_name" in message, message  # the compiler's own words

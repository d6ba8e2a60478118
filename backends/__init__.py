"""Backends, registered by name: "numpy" (the reference executor, the test oracle), "llvm"
(native code) and "opencl" (OpenCL devices; needs the `gpu` extra when used). Importing this
package registers them; another backend is a package that calls `register` (see base.py and
docs/architecture.md)."""

from . import llvm, opencl, reference  # noqa: F401
from .base import Backend, Executor, available, get_backend, register

__all__ = ["Backend", "Executor", "available", "get_backend", "register"]

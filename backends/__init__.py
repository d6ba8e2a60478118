"""Backends, registered by name: "numpy" (the reference executor, the test oracle) and "llvm"
(native code). Importing this package registers both; another backend is a package that calls
`register` (see base.py and docs/architecture.md)."""

from . import llvm, reference  # noqa: F401
from .base import Backend, Executor, available, get_backend, register

__all__ = ["Backend", "Executor", "available", "get_backend", "register"]

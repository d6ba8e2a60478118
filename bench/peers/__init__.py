"""The implementations, by name. Each module is imported only when its peer is asked for, so that
thread settings (XLA flags, OpenMP) are in place before PyTorch or JAX loads."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..workloads import Data, Workload
from .base import Peer, Unsupported

PEERS = ("drug", "numpy", "torch", "torch.compile", "jax", "onnxruntime")
COMPILING_PEERS = ("drug", "torch.compile", "jax")
_MODULES = {
    "drug": "drug_impl",
    "numpy": "numpy_impl",
    "torch": "torch_impl",
    "torch.compile": "torch_impl",
    "jax": "jax_impl",
    "onnxruntime": "onnxruntime_impl",
}

Factory = Callable[[Workload, Data], Peer]


def _module(name: str):
    return importlib.import_module(f".{_MODULES[name]}", __name__)


def unavailable_reason(name: str) -> str | None:
    """None if the peer can run here, else why not (e.g. its framework is not installed)."""
    if name not in _MODULES:
        return f"unknown peer {name!r}; peers are {', '.join(PEERS)}"
    return _module(name).available()


def factory(name: str, backend: str = "llvm", notes: list[str] | None = None) -> Factory:
    """A function building this peer's implementation of a workload from the shared data."""
    module = _module(name)
    if name == "drug":
        return lambda w, d: module.build(w, d, backend=backend, notes=notes)
    if name.startswith("torch"):
        return lambda w, d: module.build(w, d, compiled=name == "torch.compile")
    return module.build


__all__ = ["PEERS", "COMPILING_PEERS", "Peer", "Unsupported", "factory", "unavailable_reason"]

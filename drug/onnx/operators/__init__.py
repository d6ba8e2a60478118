"""The import table, one module per family of ONNX ops (registry.py: how an entry is written)."""

from . import elementwise, linalg, nn, shape, values  # noqa: F401 (each module registers its converters)
from .registry import CONVERTERS, Converter, converts

SUPPORTED_OPS = tuple(sorted(CONVERTERS))

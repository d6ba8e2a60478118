"""The OpenCL kernels of the ops that are not fused elementwise code, one module per op family,
registered per op class (lowering.py). Importing this package registers them all."""

from . import conv, linalg, nn, shape  # noqa: F401

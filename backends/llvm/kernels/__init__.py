"""The native code of each op, one module per op family, registered per op class (lowering.py).
Importing this package registers them all."""

from . import conv, linalg, nn, norm, pool, reduce, scan, shape  # noqa: F401

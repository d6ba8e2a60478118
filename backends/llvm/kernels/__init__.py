"""The native code of each op, one module per op family, registered per op class (lowering.py).
Importing this package registers them all."""

from . import attention, batchnorm, conv, indexing, linalg, nn, norm, padding, pool, random, reduce, scan, shape  # noqa: F401

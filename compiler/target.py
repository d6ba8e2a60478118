"""What the target-independent kernel passes ask of a backend: which nodes it computes element by
element inside fused loops, which run as kernels of their own, and the scratch memory a kernel
needs. Each backend answers from its own lowering rules (backends/*/)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..core.node import Node
from ..core.types import Shape


class Target(Protocol):
    def fusible(self, node: Node) -> bool:
        """The node can be computed element by element inside a fused loop."""
        ...

    def has_kernel(self, node: Node) -> bool:
        """The node runs as a native kernel of its own (else: a callback to its NumPy reference)."""
        ...

    def workspace(self, node: Node) -> tuple[Shape, np.dtype] | None:
        """Scratch memory the node's kernel needs while it runs: (shape, dtype), None as the batch."""
        ...

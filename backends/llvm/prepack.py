"""Constant weights packed once, when a program is built, into the panels drug's sgemm reads.

A GEMM reads its B operand once per tile of rows; read in place, each step of the depth is a
short piece of a row kilobytes away from the last, and those pieces do not stay in L1 between
tiles (rows a power of two apart fall into few cache sets). Packing B into panels one tile wide
makes each panel one contiguous stream that does, but a copy per call costs what it saves on
the few rows of an inference batch. A constant never changes: packed here once, the GEMMs read
the panels directly (`gemm.PACKED_SYMBOL`), as inference runtimes do with their weights.
Parameters are not packed: their users may write them in place at any time (`g.params`); a
predictor compiled with `freeze=True` holds them as constants (compiler/freeze.py).
"""

from __future__ import annotations

import numpy as np

from ...compiler.schedule import Schedule
from ...core.graph import HUGE_MIN
from ...core.pages import aligned_zeros
from ...ops.linalg import MatMul, MatMulBias


def packed_constants(schedule: Schedule) -> dict[int, tuple[tuple[int, ...], bool]]:
    """The constants to pack: float32 matrices that only op-kernel GEMMs read, each as the B of a
    matrix product with a matrix, all alike: slot -> (the shape the GEMMs read the constant's
    values in, row-major: a reshape of it may stand between; whether op(B) is its transpose). A
    constant anything else reads (a fused loop, a callback, an output) is left as it is."""
    readers: dict[int, set[tuple[tuple[int, ...], bool] | None]] = {}
    for kernel in schedule.kernels:
        for node in kernel.nodes:
            for index, source in enumerate(node.inputs):
                slot = schedule.buffer_of.get(source.id)
                if slot is None or schedule.buffers[slot].kind != "const":
                    continue
                gemm_b = (
                    kernel.kind == "op"
                    and isinstance(node.op, (MatMul, MatMulBias))
                    and index == 1
                    and source.ndim == 2
                    and node.dtype == np.float32
                )
                transposed = source.id in schedule.transposed  # a folded transpose: the GEMM reads its input
                stored = source.inputs[0].shape if transposed else source.shape
                readers.setdefault(slot, set()).add((stored, transposed) if gemm_b else None)
    outputs = {schedule.slot(n) for n in schedule.program.outputs}
    return {
        slot: ways.pop()
        for slot, ways in readers.items()
        if len(ways) == 1 and None not in ways and slot not in outputs
    }


def pack(value: np.ndarray, transposed: bool, panel: int) -> np.ndarray:
    """op(B) (`value`, or its transpose) as `gemm.PACKED_SYMBOL` reads it: (panels, depth, panel)
    float32, panel q holding columns q*panel.. of every step, zeros past the last column."""
    steps = np.asarray(value.T if transposed else value, np.float32)
    depth, columns = steps.shape
    panels = -(-columns // panel)
    padded = np.zeros((depth, panels * panel), np.float32)
    padded[:, :columns] = steps
    nbytes = padded.nbytes
    packed = aligned_zeros(nbytes, huge=nbytes >= HUGE_MIN).view(np.float32).reshape(panels, depth, panel)
    packed[...] = padded.reshape(depth, panels, panel).transpose(1, 0, 2)
    packed.setflags(write=False)
    return packed

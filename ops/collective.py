"""Collective ops: values combined across the processes of an MPI communicator.

They have no native kernel on purpose: the native backend runs them through its Python callback
at their place in the step's schedule (after the values they read are computed, before any
in-place parameter update), and the NumPy backend runs the same `ref`. The op only calls the
communicator it is given (an mpi4py Comm), so it registers and imports without MPI installed."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.node import apply, user_call
from ..core.op import Op, same_float_dtype
from ..core.types import TensorType
from .elementwise import mul


class AllreduceSum(Op):
    """The elementwise sum of `x` over every rank of `comm` (MPI_Allreduce with MPI_SUM)."""

    name = "allreduce_sum"
    arity = 1

    def __init__(self, comm: Any):
        self.comm = comm
        self.size = int(comm.Get_size())

    def params(self) -> dict[str, Any]:
        # the communicator object is not a stable key: its name and size are (compile cache, CSE)
        return {"comm": self.comm.Get_name(), "size": self.size}

    def infer(self, x: TensorType) -> TensorType:
        same_float_dtype(self.name, [x])
        return x

    def ref(self, x: np.ndarray) -> np.ndarray:
        out = np.empty(x.shape, x.dtype)
        self.ref_into(out, x)
        return out

    def ref_into(self, out: np.ndarray, x: np.ndarray) -> None:
        """The native callback's form: MPI receives straight into the step's buffer, no copy."""
        if not out.flags.c_contiguous:
            out[...] = self.ref(x)
            return
        self.comm.Allreduce(np.ascontiguousarray(x), out)  # mpi4py's default op is MPI.SUM

    def grad(self, g, out, x):
        # the map is linear and self-adjoint: every rank's x adds to every rank's output
        return [apply(AllreduceSum(self.comm), g)]


@user_call()
def allreduce_sum(x, comm: Any):
    """`x` summed over the ranks of `comm` (an mpi4py communicator), as a graph node."""
    return apply(AllreduceSum(comm), x)


@user_call()
def allreduce_mean(x, comm: Any):
    """`x` averaged over the ranks of `comm`: the sum times 1/size, a multiply that fuses into
    the loop reading it (an optimizer update) instead of another pass over the buffer."""
    size = int(comm.Get_size())
    return allreduce_sum(x, comm) if size == 1 else mul(allreduce_sum(x, comm), 1.0 / size)

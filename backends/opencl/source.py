"""OpenCL C text: C types of dtypes, literals, sizes known up to the batch, and the frame every
kernel function shares. Kernels read `long batch` (the bound batch size), `drug_status`, a
one-int buffer where a kernel that finds bad data (an id out of range) records the failure, and
`drug_kernel`, the index of the schedule kernel being run (what the failure records)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ...compiler.grid import Size
from ...core.errors import GraphError
from ...core.types import Shape

# NumPy bools are bytes: uchar
C_TYPES = {"float32": "float", "float64": "double", "int32": "int", "int64": "long", "bool": "uchar"}
STATUS = "drug_status"
BATCH = "batch"
TRAILING_PARAMS = (f"const long {BATCH}", f"__global int* restrict {STATUS}", "const int drug_kernel")
# a kernel that finds bad data records its schedule index (+ 1) unless an earlier kernel did
FAIL = f"atomic_cmpxchg({STATUS}, 0, drug_kernel + 1)"


def c_type(dtype: np.dtype) -> str:
    try:
        return C_TYPES[np.dtype(dtype).name]
    except KeyError:
        raise GraphError(f"the opencl backend has no {np.dtype(dtype)} arrays (only {sorted(C_TYPES)})") from None


def literal(value: float | int, dtype: np.dtype) -> str:
    """`value` as a C constant of `dtype` (float32 constants carry the `f` suffix)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return "1" if value else "0"
    if dtype.kind in "iu":
        return f"{int(value)}L" if dtype.itemsize == 8 else str(int(value))
    value = float(value)
    if math.isnan(value):
        return f"(({c_type(dtype)})NAN)"
    if math.isinf(value):
        return f"(({c_type(dtype)})({'-' if value < 0 else ''}INFINITY))"
    text = repr(value)
    return f"{text}f" if dtype == np.float32 else text


def size(s: Size) -> str:
    """A Size as a C `long` expression of the batch."""
    factors = ([str(s.coefficient)] if s.coefficient != 1 or not s.power else []) + [BATCH] * s.power
    return factors[0] if len(factors) == 1 else f"({'*'.join(factors)})"


def dims(shape: Shape) -> list[str]:
    return [BATCH if d is None else str(d) for d in shape]


def offset(terms: Sequence[tuple[str, Size]]) -> str:
    """sum of index * stride, leaving out zero strides; "0" when nothing is left."""
    parts = [index if stride.is_one else f"{index}*{size(stride)}" for index, stride in terms if not stride.is_zero]
    return " + ".join(parts) if parts else "0"


def unflatten(flat: str, extents: Sequence[Size], names: Sequence[str], lines: list[str], indent: str) -> None:
    """Declare `names` (one per extent, last varying fastest) as the multi-index of `flat`."""
    rest = flat
    for i in reversed(range(len(extents))):
        if i == 0:
            lines.append(f"{indent}const long {names[i]} = {rest};")
        elif extents[i].is_one:
            lines.append(f"{indent}const long {names[i]} = 0;")
        else:  # an empty extent means no work item runs this: divide by 1, not 0, to compile cleanly
            divisor = "1" if extents[i].is_zero else size(extents[i])
            lines.append(f"{indent}const long {names[i]} = {rest} % {divisor};")
            lines.append(f"{indent}const long {names[i]}_rest = {rest} / {divisor};")
            rest = f"{names[i]}_rest"


@dataclass
class Params:
    """The buffer parameters of one kernel function, named by position (p0, p1, ...) so that
    kernels alike up to their buffers render to the same text and share one function."""

    slots: list[int] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    written: list[bool] = field(default_factory=list)

    def use(self, slot: int, dtype: np.dtype, write: bool = False) -> str:
        """The parameter name of buffer `slot` (declared on first use)."""
        if slot not in self.slots:
            self.slots.append(slot)
            self.types.append(c_type(dtype))
            self.written.append(False)
        position = self.slots.index(slot)
        self.written[position] |= write
        return f"p{position}"

    def declarations(self) -> list[str]:
        out = []
        for i, (type_, written) in enumerate(zip(self.types, self.written)):
            const = "" if written else "const "
            out.append(f"__global {const}{type_}* restrict p{i}")
        return out + list(TRAILING_PARAMS)


@dataclass
class Function:
    """One `__kernel` function: its parameters and body lines; named when added to a program."""

    params: Params
    body: list[str]
    group_size: int | None = None  # a required work-group size (kernels using local memory)

    def text(self, name: str) -> str:
        attribute = f"__attribute__((reqd_work_group_size({self.group_size}, 1, 1))) " if self.group_size else ""
        head = f"__kernel {attribute}void {name}(" + ", ".join(self.params.declarations()) + ")"
        return head + " {\n" + "\n".join(self.body) + "\n}\n"

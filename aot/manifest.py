"""<name>.json: what a generated library contains, for tools and for people deploying it."""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import __version__
from .layout import Model, Tensor, Value
from .lower import Target

FORMAT = "drug-aot-1"


def _tensor(t: Tensor | Value, name: str) -> dict[str, Any]:
    return {"name": name, "shape": [None if d is None else int(d) for d in t.shape], "dtype": str(t.dtype)}


def render(
    model: Model, target: Target, blas_int_bits: int, source: str, optimizer: Any, checkpoint: str | None
) -> dict[str, Any]:
    functions = {
        table.name: {
            "symbol": f"drug_{model.name}_{table.name}",
            "inputs": [_tensor(v, v.c_name) for v in table.inputs],
            "outputs": [_tensor(v, v.c_name) for v in table.outputs],
            "arena_bytes": {str(batch): size for batch, size in table.arena_bytes.items()},
        }
        for table in model.tables
    }
    return {
        "format": FORMAT,
        "name": model.name,
        "drug_version": __version__,
        "source": source,
        "library": f"lib{model.name}.so",
        "header": f"{model.name}.h",
        "target": {"triple": target.triple, "cpu": target.cpu, "features": target.features},
        "blas": {
            "function": "cblas_sgemm",
            "int_bits": blas_int_bits,
            "abi": "LP64 (32-bit int)" if blas_int_bits == 32 else "ILP64 (64-bit int)",
        },
        "max_batch": model.max_batch,
        "functions": functions,
        "parameters": [_tensor(p, p.name) for p in model.params],
        "optimizer": None if optimizer is None else {"type": type(optimizer).__name__, **dataclasses.asdict(optimizer)},
        "optimizer_state": [_tensor(s, s.name) | {"initial": s.fill} for s in model.states],
        "parameter_bytes": sum(int(p.dtype.itemsize) * _count(p.shape) for p in model.params),
        "checkpoint": checkpoint,
    }


def _count(shape: tuple) -> int:
    total = 1
    for d in shape:
        total *= int(d)
    return total

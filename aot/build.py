"""compile_library: a CompileSpec in, lib<name>.so + <name>.h + <name>.json out."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import csource, header, layout, link, lower, manifest
from .spec import CompileSpec, check_library_name


@dataclass(frozen=True)
class Outputs:
    library: Path
    header: Path
    manifest: Path


def compile_library(
    spec: CompileSpec,
    out: str | os.PathLike,
    name: str,
    target_cpu: str = "host",
    blas_int_bits: int = 32,
    max_batch: int = 65536,
    checkpoint: str | os.PathLike | None = None,
    cc: str | None = None,
    source: str = "<python>",
    keep: str | os.PathLike | None = None,
) -> Outputs:
    """Compile the spec's train step and/or predictor into a native library in directory `out`."""
    name = check_library_name(name)
    if blas_int_bits not in (32, 64):
        raise ValueError(f"blas_int_bits must be 32 (LP64) or 64 (ILP64), got {blas_int_bits}")
    cc = link.find_cc(cc)
    functions = lower.plan(spec)
    model = layout.describe(name, functions, max_batch, blas_int_bits, checkpoint)
    target = lower.resolve_target(target_cpu)
    entries = {t.name: t.entry for t in model.tables}
    obj = lower.emit_object(functions, entries, (f"drug_{name}_blob", model.blob), target, blas_int_bits)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = Outputs(out / f"lib{name}.so", out / f"{name}.h", out / f"{name}.json")
    header_text = header.render(model, target, blas_int_bits, source)
    link.link(
        paths.library,
        name,
        csource.render(model),
        header_text,
        obj,
        csource.exported(model),
        cc,
        Path(keep) if keep else None,
    )
    paths.header.write_text(header_text)
    info = manifest.render(model, target, blas_int_bits, source, spec.optimizer, checkpoint and os.fspath(checkpoint))
    paths.manifest.write_text(json.dumps(info, indent=2) + "\n")
    return paths

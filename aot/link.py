"""Linking a library: the generated C, the runtime's C sources and the LLVM object, with `cc -shared`.
A version script exports the public functions only; --no-undefined makes any symbol outside
libc and libm a link error rather than a surprise at load time."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..core.errors import GraphError

CSRC = Path(__file__).parent / "csrc"
RUNTIME_SOURCES = ("rt_handle.c", "rt_checkpoint.c", "rt_zip.c", "rt_sha256.c")
# Implicit declarations and int-to-pointer conversions are always bugs (an undeclared function
# returning a pointer has it truncated to an int): errors, not warnings nobody sees.
CFLAGS = (
    "-O2", "-std=c11", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra",
    "-Werror=implicit-function-declaration", "-Werror=int-conversion",
)  # fmt: skip


def find_cc(cc: str | None = None) -> str:
    cc = cc or os.environ.get("CC") or "cc"
    found = shutil.which(shlex.split(cc)[0]) if cc.strip() else None
    if not found:
        raise GraphError(f"no C compiler {cc!r} found: install one (e.g. gcc) or name it with --cc / $CC")
    return cc


def link(
    library: Path,
    name: str,
    c_source: str,
    header: str,
    obj: bytes,
    exports: list[str],
    cc: str,
    keep: Path | None = None,
) -> None:
    """Build `library`; with `keep`, also leave the generated sources and the object there."""
    with tempfile.TemporaryDirectory(prefix=f"drug-compile-{name}-") as tmp:
        work = Path(tmp)
        (work / f"{name}.h").write_text(header)
        (work / f"{name}_model.c").write_text(c_source)
        (work / f"{name}_step.o").write_bytes(obj)
        exported = "".join(f"    {e};\n" for e in exports)
        (work / f"{name}.map").write_text(f"{{\n  global:\n{exported}  local: *;\n}};\n")
        command = [
            *shlex.split(cc),
            "-shared",
            *CFLAGS,
            f"-I{work}",
            f"-I{CSRC}",
            *(str(CSRC / s) for s in RUNTIME_SOURCES),
            str(work / f"{name}_model.c"),
            str(work / f"{name}_step.o"),
            f"-Wl,--version-script={work / f'{name}.map'}",
            "-Wl,--no-undefined",
            "-Wl,-z,noexecstack",
            "-o",
            str(library),
            "-lm",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for path in work.iterdir():
                shutil.copy2(path, keep / path.name)
        if result.returncode != 0:
            raise GraphError(f"linking lib{name}.so failed:\n$ {shlex.join(command)}\n{result.stderr.strip()}")

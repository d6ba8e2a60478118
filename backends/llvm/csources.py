"""drug's C sources (csrc/): the thread pool, loaded with ctypes, and the call lane, a Python
extension. Both are built when drug is installed (setup.py), each with the SHA-256 of its source
compiled in; a development tree whose build is missing or older than its source compiles the
source into the cache directory instead, so that an out-of-date build is never loaded."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .jit import cache_dir

Build = TypeVar("Build")

CSRC = Path(__file__).parent / "csrc"
FLAGS = ["-std=c11", "-O2", "-fPIC", "-shared", "-fvisibility=hidden"]


def digest(source: Path) -> str:
    """The SHA-256 of a source file, which a build of it reports."""
    return hashlib.sha256(source.read_bytes()).hexdigest()


def installed(source: Path) -> list[Path]:
    """The builds setup.py made of a source (extension module `_<its stem>`)."""
    return sorted(Path(__file__).parent.glob(f"_{source.stem}*.so"))


def load(
    source: Path, macro: str, open_build: Callable[[Path, str], Build | None], python: bool = False
) -> Build | None:
    """The first build of `source` that `open_build(path, digest)` accepts (built from this
    source): an installed one, else one compiled into the cache directory (`compile_into_cache`,
    which raises OSError or CalledProcessError when it cannot compile)."""
    source_digest = digest(source)
    found = next(filter(None, (open_build(path, source_digest) for path in installed(source))), None)
    if found is not None:
        return found
    return open_build(compile_into_cache(source, macro, source_digest, python), source_digest)


def compile_into_cache(source: Path, macro: str, source_digest: str, python: bool = False) -> Path:
    """Build `source` into the cache directory (once per digest), with `macro` defined as its
    digest; `python`: as an extension module, with Python's headers."""
    target = cache_dir() / f"{source.stem}-{source_digest[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    command = [*shlex.split(os.environ.get("CC") or "cc"), *FLAGS, "-pthread", f'-D{macro}="{source_digest}"']
    if python:
        command.append(f"-I{sysconfig.get_paths()['include']}")
    command += [str(source), "-o", str(tmp)]
    subprocess.run(command, check=True, capture_output=True)
    os.replace(tmp, target)
    return target

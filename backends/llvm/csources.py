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
from pathlib import Path

from .jit import cache_dir

CSRC = Path(__file__).parent / "csrc"
FLAGS = ["-std=c11", "-O2", "-fPIC", "-shared", "-fvisibility=hidden"]


def digest(source: Path) -> str:
    """The SHA-256 of a source file, which a build of it reports."""
    return hashlib.sha256(source.read_bytes()).hexdigest()


def installed(stem: str) -> list[Path]:
    """The builds setup.py made of a source (`stem`: the extension module's name)."""
    return sorted(Path(__file__).parent.glob(f"{stem}*.so"))


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

"""The plain call of a compiled step in C (csrc/drug_lane.c), loaded once per process.

A call whose feeds are exactly what the inputs declare, at a batch size the executor holds
buffers for, is checked, bound and run there without the Python around a step; anything else
takes the Python path, which checks, converts and explains. DRUG_LANE=0 turns it off (every
call then takes the Python path); without a build or a C compiler calls take it too."""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import os
import subprocess
import warnings
from pathlib import Path
from types import ModuleType

from . import csources

SOURCE = csources.CSRC / "drug_lane.c"
MODULE = "drug.backends.llvm._drug_lane"


def enabled() -> bool:
    return os.environ.get("DRUG_LANE", "1") != "0"


def _load(path: Path, digest: str) -> ModuleType | None:
    """The extension at `path` if it was built from the current source."""
    loader = importlib.machinery.ExtensionFileLoader(MODULE, str(path))
    spec = importlib.util.spec_from_file_location(MODULE, path, loader=loader)
    try:
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    except ImportError:
        return None
    return module if getattr(module, "SOURCE", None) == digest else None


@functools.cache
def extension() -> ModuleType | None:
    """The extension (its Lane type, MAX_INPUTS and MAX_DIMS), or None: turned off, or no build
    and no compiler."""
    if not enabled():
        return None
    try:
        return csources.load(SOURCE, "DRUG_LANE_SOURCE", _load, python=True)
    except (OSError, subprocess.CalledProcessError) as error:
        warnings.warn(f"drug: cannot build its call lane ({error}); calls take the Python path", stacklevel=2)
        return None

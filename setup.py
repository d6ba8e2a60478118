"""Everything but drug's C sources is configured in setup.cfg.

Two small C sources are compiled when drug is installed: the thread pool of native steps
(backends/llvm/csrc/drug_pool.c, which drug loads with ctypes) and the lane of a plain call
(csrc/drug_lane.c, a Python extension). Each build carries its source's hash, so that drug can
tell a build made from an older source (backends/llvm/csources.py)."""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

CSRC = Path("backends/llvm/csrc")
FLAGS = ["-std=c11", "-O2", "-fvisibility=hidden"]


def extension(module: str, source: str, macro: str, **options) -> Extension:
    path = CSRC / source
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Extension(
        f"drug.backends.llvm.{module}",
        [str(path)],
        define_macros=[(macro, f'"{digest}"')],
        extra_compile_args=FLAGS,
        **options,
    )


setup(
    ext_modules=[
        extension("_drug_pool", "drug_pool.c", "DRUG_POOL_SOURCE", extra_link_args=["-pthread"]),
        extension("_drug_lane", "drug_lane.c", "DRUG_LANE_SOURCE"),
    ]
)

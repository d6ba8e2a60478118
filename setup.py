"""Everything but the thread pool is configured in setup.cfg.

The thread pool of native steps is a small C library (backends/llvm/csrc/drug_pool.c) that drug
loads with ctypes; built as an extension module, it is compiled when drug is installed. The
source's hash goes in, so that drug can tell a library built from an older source."""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = Path("backends/llvm/csrc/drug_pool.c")
digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()

setup(
    ext_modules=[
        Extension(
            "drug.backends.llvm._drug_pool",
            [str(SOURCE)],
            define_macros=[("DRUG_POOL_SOURCE", f'"{digest}"')],
            extra_compile_args=["-std=c11", "-O2", "-fvisibility=hidden"],
            extra_link_args=["-pthread"],
        )
    ]
)

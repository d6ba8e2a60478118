"""`python -m drug.backends.llvm.prebuild`: compile drug's own GEMM and convolution kernels for
this machine into the installed package. `make install` runs it, so that the first program
compiled on a machine does not wait for them too (without it they are compiled on first use and
cached like programs)."""

from __future__ import annotations

import sys

from . import blas, gemm


def main() -> int:
    paths = gemm.prebuild_kernels(blas.find_gemm("float32").int_bits)
    print(f"drug: prebuilt {len(paths)} kernel modules for this machine in {paths[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

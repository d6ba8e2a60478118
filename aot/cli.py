"""drug-compile: the command line of drug.aot (see its docstring for the build() convention)."""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from ..core.errors import GraphError
from . import __doc__ as DESCRIPTION
from .build import compile_library
from .spec import UserCodeError, check_library_name, load_spec


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="drug-compile", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("source", help="a Python file (path/to/model.py) or module (pkg.model) defining build()")
    p.add_argument("--out", required=True, help="directory for lib<name>.so, <name>.h and <name>.json")
    p.add_argument("--name", help="library name, a C identifier (default: the file or module name)")
    p.add_argument(
        "--target-cpu",
        default="host",
        help="'host' (default: this CPU), 'generic' (portable x86-64) or an LLVM CPU name (e.g. skylake)",
    )
    p.add_argument(
        "--blas-int",
        type=int,
        choices=(32, 64),
        default=32,
        help="integer width of the sgemm passed to create(): 32 = LP64 CBLAS (default, e.g. "
        "libopenblas-dev), 64 = ILP64",
    )
    p.add_argument("--max-batch", type=int, default=65536, help="largest batch a call accepts (default 65536)")
    p.add_argument("--checkpoint", help="a train.save() checkpoint whose parameters become the initial values")
    p.add_argument("--cc", help="C compiler (default: $CC or cc)")
    p.add_argument("--keep", metavar="DIR", help="also keep the generated C, the object file and the export map here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        if args.name is not None:
            check_library_name(args.name)  # before running the user's build()
        spec, default_name = load_spec(args.source)
        outputs = compile_library(
            spec,
            args.out,
            args.name or default_name,
            target_cpu=args.target_cpu,
            blas_int_bits=args.blas_int,
            max_batch=args.max_batch,
            checkpoint=args.checkpoint,
            cc=args.cc,
            source=args.source,
            keep=args.keep,
        )
    except (GraphError, OSError) as error:
        if isinstance(error, UserCodeError) and not isinstance(error.__cause__, GraphError):
            traceback.print_exception(error.__cause__, file=sys.stderr)  # a bug in the user's code: where it is
        print(f"drug-compile: error: {error}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    print(f"drug-compile: wrote {outputs.library}, {outputs.header}, {outputs.manifest} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

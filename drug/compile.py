"""`python -m drug.compile`: the drug-compile command (drug.aot.cli)."""

from .aot.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m drug.aot` runs drug-compile."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

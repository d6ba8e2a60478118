"""`python -m drug.bench` runs the benchmark CLI."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""A longer differential-fuzzing campaign than the test suite runs (tests/graph_fuzz.py): random
graphs on both backends, failures written out (without shrinking) instead of stopping.

    .venv/bin/python tests/fuzz_campaign.py 2000 failures.txt   # graphs, where to write failures"""

from __future__ import annotations

import sys
import time
import traceback
import warnings

import graph_fuzz as gf
from hypothesis import HealthCheck, assume, given, settings


def main(count: int, out: str) -> None:
    warnings.simplefilter("ignore")  # NumPy warns about overflow/invalid values the graphs produce
    stats = {"graphs": 0, "errors": 0, "failures": 0}
    start = time.time()

    @settings(max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(gf.specs())
    def run(spec):
        assume(gf.size(spec) <= 4096)
        stats["graphs"] += 1
        try:
            reference = gf.outcome(spec, "numpy")
            stats["errors"] += reference[0] == "error"
            gf.assert_same(reference, gf.outcome(spec, "llvm"), gf.RTOL[spec.dtype])
        except Exception:  # noqa: BLE001 - recorded, the campaign goes on
            stats["failures"] += 1
            with open(out, "a") as f:
                f.write(f"{spec!r}\n{traceback.format_exc()[-3000:]}\n\n")
        if stats["graphs"] % 100 == 0:
            print(f"{stats} after {time.time() - start:.0f} s", flush=True)

    run()
    print(f"{stats} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])

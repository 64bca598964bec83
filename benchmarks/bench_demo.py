"""The full `cuantiza demo` (digits CNN, every workflow), recorded in RESULTS.md.

Run: ``python benchmarks/bench_demo.py`` (about a minute and a half).
"""

from __future__ import annotations

import tempfile

from _results import machine, write_section

from cuantiza import progress
from cuantiza.cli import demo

if __name__ == "__main__":
    progress.set_quiet(True)
    with tempfile.TemporaryDirectory() as d:
        rows = demo.run(quick=False, out=d)
    fp32 = rows[0].accuracy
    body = (
        f"## Digits CNN, every workflow (`cuantiza demo`, `bench_demo.py`)\n\n{machine()}; 1,257 "
        "training "
        f"and 540 held-out images of scikit-learn's digits; latency = whole test split, median, "
        f"round-robin.\n\n{demo.table(rows)}\n\n{demo.NOTES}\n\nTargets (fp32 {fp32:.2f}%): "
        + "; ".join(f"{r.name} {r.accuracy - fp32:+.2f} points" for r in rows[1:])
        + "."
    )
    write_section("bench_demo", body)
    print(body)

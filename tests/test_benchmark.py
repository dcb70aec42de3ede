"""The trial-loop benchmark script keeps working (its figures are not asserted: speed
targets belong in benchmarks, not in tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "trial_loop.py"


def test_trial_loop_benchmark_runs_and_prints_ratios():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--dataset", "synthetic", "--batch-sizes", "32", "--norms", "bn,gn", "--repeats", "1"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert "bare samples/s" in out and "min ratio" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("bn", "gn"))]
    assert len(rows) == 2 and all(float(r[-1]) > 0 for r in rows)

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
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("cnn")]
    assert [r[1] for r in rows] == ["bn", "gn"] and all(float(r[5]) > 0 for r in rows)
    for row in rows:  # the median ratio, then the lowest and highest round's
        low, high = map(float, row[6].split("–"))
        assert low <= float(row[5]) <= high


def test_trial_loop_benchmark_on_cifar_shaped_data_with_resnet_20():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--cifar-shaped", "128", "--archs", "resnet", "--batch-sizes", "64", "--norms", "bn",
         "--repeats", "1", "--channels-last"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    assert "CIFAR-10-shaped" in out and "fp32, channels_last" in out
    (row,) = [line.split() for line in out.splitlines() if line.strip().startswith("resnet")]
    assert row[1:3] == ["bn", "64"] and float(row[5]) > 0

"""The store-scale benchmark keeps working (its figures are printed, never asserted)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "store_scale.py"


@pytest.mark.parametrize("clock", [[], ["--cpu"]], ids=["wall clock", "cpu"])
def test_store_scale_benchmark_runs_and_prints_its_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], clock: list[str]
) -> None:
    argv = [str(SCRIPT), "--runs", "200", "--epochs", "2", "--step-runs", "3", "--repeat", "1", "--dir", str(tmp_path), *clock]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(SCRIPT), run_name="__main__")
    out = capsys.readouterr().out
    for figure in ("runs/s", "metric docs/s (batched per run)", "steps/s", "ls filtered (s)", "DataFrame of the study (s)",
                   "report (s)"):
        assert figure in out, figure
    assert (tmp_path / "reports-200" / "scale.md").is_file()
    assert ("figures by run count (CPU seconds for the timings)" in out) == bool(clock)

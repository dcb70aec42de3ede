"""Every committed report rebuilds from the runs committed beside it.

For each ``reports/<report>.md`` (``<study>.md``, or ``<study>-<profile>.md`` for a
profile's report): import the runs beside it, ``reports/<report>/results.jsonl.gz``, into an
empty store, load the study and profile that export holds, rebuild the report from the
store alone, and compare: the markdown must be the
committed file except the date and store of its "Generated" line, and every committed CSV
table must come out the same. A report without its runs beside it fails: it could not be
checked. And no committed report decides a claim on fewer seeds than a verdict needs: each
claim in its ``findings.csv`` reads at least ``MIN_SEEDS`` seeds per cell."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from committed_exports import exported_study  # beside this file

from bench.report.claims import MIN_SEEDS
from bench.report.findings import FINDINGS_TABLE
from bench.report.writer import RUNS_FILE, report_path, write_report
from bench.spec import load_spec
from bench.store import open_store
from bench.store.transfer import import_jsonl

ROOT = Path(__file__).resolve().parents[1]
REPORTS = sorted((ROOT / "reports").glob("*.md"))


def _normalized(text: str) -> list[str]:
    return ["- Generated: (date and store)" if line.startswith("- Generated: ") else line for line in text.splitlines()]


@pytest.mark.parametrize("report", REPORTS, ids=[p.stem for p in REPORTS])
def test_a_committed_report_rebuilds_from_its_committed_runs(report: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # as `bench report STUDY` runs from the checkout (the footer names ablations/STUDY.yaml)
    folder = report.with_suffix("")
    export = folder / RUNS_FILE
    assert export.is_file(), f"{report.name} has no committed runs ({export.relative_to(ROOT)})"
    out = tmp_path / "reports"
    (out / folder.name).mkdir(parents=True)
    shutil.copy(export, out / folder.name / RUNS_FILE)  # the footer links the runs file when it is there
    name, profile = exported_study(export)
    spec = load_spec(name, profile=profile)
    assert report_path(spec, ROOT / "reports") == report, f"{export} holds the runs of {spec.key}, not of {report.name}"
    with open_store(str(tmp_path / "store.sqlite")) as store:
        import_jsonl(store, export)
        rebuilt = write_report(spec, store, out)
    assert _normalized(rebuilt.read_text()) == _normalized(report.read_text())
    for table in sorted(folder.glob("*.csv")):
        assert (out / folder.name / table.name).read_text() == table.read_text(), f"{table.relative_to(ROOT)} differs"


@pytest.mark.parametrize("report", REPORTS, ids=[p.stem for p in REPORTS])
def test_every_claim_of_a_committed_report_reads_enough_seeds(report: Path) -> None:
    findings = pd.read_csv(report.with_suffix("") / f"{FINDINGS_TABLE}.csv")
    few = findings[findings["n"] < MIN_SEEDS]
    assert few.empty, f"{report.name}: {', '.join(few['claim'])} read fewer than {MIN_SEEDS} seeds per cell"

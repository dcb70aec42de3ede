"""`bench report` end to end on a store filled by hand (no training): the files it writes,
its options, its errors, and that it only reads the store."""

from __future__ import annotations

import csv
import hashlib
import sqlite3
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.spec import load_spec
from bench.store import open_store

runner = CliRunner()

SPEC = """
    name: tiny
    description: A tiny study, its runs written straight into the store.
    base: {dataset: synthetic, arch: cnn, width: 8, epochs: 2}
    axes:
      norm: [bn, gn]
      batch_size: [16, 64]
    repeats: 3
    report:
      title: Tiny
      baseline: {norm: bn}
      budget: epochs
      sections:
        - {kind: pivot, rows: norm, columns: batch_size}
        - {kind: scaling, x: batch_size, group: norm}
        - {kind: curves, group: norm, panels: batch_size}
        - {kind: time-to-accuracy, target: 0.6, columns: batch_size}
"""


def accuracy(norm: str, seed: int) -> float:
    return (0.70 if norm == "bn" else 0.60) + 0.01 * seed * seed  # gn − bn = −0.10 for every seed


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, Path]:
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(textwrap.dedent(SPEC))
    store_path = tmp_path / "store.sqlite"
    store = open_store(str(store_path))
    try:
        for config in load_spec(spec_path).expand():
            diverged = config.norm == "gn" and config.batch_size == 64 and config.seed == 2
            final = None if diverged else accuracy(config.norm, config.seed) + (0.02 if config.batch_size == 16 else 0)
            store.upsert_run(config.trial_id, {
                "config": config.to_dict(), "status": "diverged" if diverged else "completed",
                "summary": {"final_val_acc": final, "epochs_done": 1 if diverged else 2, "steps": 2 * 512 // config.batch_size,
                            "train_seconds": 4.0},
                "env": {"torch": "2", "device": "cpu: test", "host": "test", "python": "3"},
            }, study="tiny")
            store.upsert_metrics([
                {"run_id": config.trial_id, "epoch": epoch, "step": epoch * 512 // config.batch_size,
                 "val_acc": (final or 0.3) - 0.05 * (2 - epoch), "train_seconds": 2.0}
                for epoch in range(1, 2 if diverged else 3)
            ])
    finally:
        store.close()
    return spec_path, store_path


def invoke(store: Path, *args: str):
    return runner.invoke(app, ["--store", str(store), "report", *args])


def snapshot(path: Path) -> tuple[str, list]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = [connection.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall() for table in ("runs", "metrics", "studies")]
    finally:
        connection.close()
    return hashlib.sha256(path.read_bytes()).hexdigest(), rows


def test_report_writes_markdown_figures_and_tables_from_the_store_alone(study, tmp_path):
    spec_path, store_path = study
    before = snapshot(store_path)
    out = tmp_path / "reports"
    result = invoke(store_path, str(spec_path), "--reports-dir", str(out), "--ci", "t", "--alpha", "0.1")
    assert result.exit_code == 0, result.output
    assert snapshot(store_path) == before  # bench report only reads the store

    text = (out / "tiny.md").read_text()
    assert "90% confidence interval of the mean in brackets (t-based" in text
    assert f"Rebuild this report: `bench report {spec_path} --ci t --alpha 0.1`" in text  # a path spec by its path
    assert "Held equal: 2 epochs per trial" in text and "1 trial stopped before the last epoch (1 diverged)" in text
    assert "(n=2; 1 of 3 diverged)" in text  # gn at 64: the diverged seed is counted, not averaged
    for name in ("pivot-final_val_acc.csv", "pivot-final_val_acc.tex", "final_val_acc-vs-batch_size.png",
                 "curves-val_acc.png", "curves-val_acc.csv", "time-to-accuracy-val_acc.csv", "time-to-accuracy-val_acc.tex"):
        assert (out / "tiny" / name).stat().st_size > 100, name
        assert f"(tiny/{name})" in text or name.endswith(".png") and f"](tiny/{name})" in text
    assert not (out / "tiny" / "curves-val_acc.tex").exists()  # curves export their numbers only

    with (out / "tiny" / "pivot-final_val_acc.csv").open() as handle:
        rows = {(r["norm"], r["batch_size"]): r for r in csv.DictReader(handle)}
    gn16 = rows[("gn", "16")]
    # seeds 0, 1, 2 differ from bn by exactly −10 points: the paired test is undefined
    assert float(gn16["delta"]) == pytest.approx(-10.0) and gn16["pairs"] == "3" and gn16["p"] == ""
    assert rows[("gn", "64")]["n"] == "2" and rows[("gn", "64")]["diverged"] == "1" and rows[("gn", "64")]["pairs"] == "2"
    assert "\\toprule" in (out / "tiny" / "pivot-final_val_acc.tex").read_text()


def test_report_options_are_checked(study, tmp_path):
    spec_path, store_path = study
    for args, expected in (
        (("--ci", "wald"), "`ci` must be one of none, t, bootstrap"),
        (("--alpha", "1"), "significance level in (0, 1)"),
        (("--correction", "bonferroni"), "`correction` must be one of none, holm"),
    ):
        result = invoke(store_path, str(spec_path), "--reports-dir", str(tmp_path / "r"), *args)
        assert result.exit_code == 1 and expected in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_a_bad_report_spec_is_refused_before_reading_the_store(tmp_path):
    spec_path = tmp_path / "bad.yaml"
    spec_path.write_text(textwrap.dedent(SPEC).replace("{kind: curves, group: norm, panels: batch_size}",
                                                       "{kind: curves, group: norm, smooth: 3}"))
    result = runner.invoke(app, ["report", str(spec_path), "--reports-dir", str(tmp_path / "r")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Study 'tiny': report section 3 (curves) has no option 'smooth'. A curves section takes: group (" in " ".join(result.output.split())


def test_an_export_beside_the_report_rebuilds_it_in_an_empty_store(study, tmp_path):
    spec_path, store_path = study
    out = tmp_path / "reports"
    assert invoke(store_path, str(spec_path), "--reports-dir", str(out)).exit_code == 0
    assert "results.jsonl.gz" not in (out / "tiny.md").read_text()  # no export beside it yet
    exported = runner.invoke(app, ["--store", str(store_path), "store", "export", str(out / "tiny" / "results.jsonl.gz"),
                                   "--study", "tiny"])
    assert exported.exit_code == 0, exported.output
    first = (out / "tiny" / "pivot-final_val_acc.csv").read_text()
    # a reader with nothing but the committed files: import into a fresh store, rebuild
    fresh = tmp_path / "fresh.sqlite"
    imported = runner.invoke(app, ["--store", str(fresh), "store", "import", str(out / "tiny" / "results.jsonl.gz")])
    assert imported.exit_code == 0, imported.output
    assert invoke(fresh, str(spec_path), "--reports-dir", str(out)).exit_code == 0
    assert (out / "tiny" / "pivot-final_val_acc.csv").read_text() == first
    assert "- The runs: [`tiny/results.jsonl.gz`](tiny/results.jsonl.gz)" in (out / "tiny.md").read_text()


def test_a_rebuild_removes_the_files_of_sections_the_spec_dropped(study, tmp_path):
    spec_path, store_path = study
    out = tmp_path / "reports"
    assert invoke(store_path, str(spec_path), "--reports-dir", str(out)).exit_code == 0
    (out / "tiny" / "results.jsonl.gz").write_bytes(b"kept")
    (out / "tiny" / "notes.txt").write_text("kept")
    assert (out / "tiny" / "curves-val_acc.png").exists()
    lines = spec_path.read_text().splitlines(keepends=True)
    spec_path.write_text("".join(line for line in lines if "kind: curves" not in line))
    assert invoke(store_path, str(spec_path), "--reports-dir", str(out)).exit_code == 0
    left = {p.name for p in (out / "tiny").iterdir()}
    assert "curves-val_acc.png" not in left and "curves-val_acc.csv" not in left
    assert {"results.jsonl.gz", "notes.txt", "pivot-final_val_acc.csv", "final_val_acc-vs-batch_size.png"} <= left

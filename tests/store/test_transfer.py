"""Moving results: JSON Lines export/import, CSV/Parquet tables, store-to-store copy."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import mongomock
import pandas as pd
import pytest
from typer.testing import CliRunner

import bench.store
from bench.cli import app
from bench.errors import StoreError
from bench.store import EmbeddedStore, MongoStore, ResultStore
from bench.store.transfer import copy_store, export_jsonl, export_table, import_jsonl, table_frame

runner = CliRunner()


def _fill(store: ResultStore) -> None:
    for i, (norm, status) in enumerate((("bn", "completed"), ("gn", "failed"), ("ln", "completed"))):
        run_id = f"run{i}"
        store.upsert_run(
            run_id,
            {"status": status, "attempts": 1, "config": {"norm": norm, "batch_size": 8 * (i + 1), "milestones": [0.5]},
             "summary": {"final_val_acc": 0.5 + i / 10, "loss": math.nan}, "env": {"host": "h"}},
            study="a",
        )
        store.upsert_metrics([{"run_id": run_id, "epoch": e, "val_acc": e / 10} for e in (1, 2)])
        store.upsert_steps(run_id, [{"step": s, "loss": 1.0 / (s + 1), "lr": 0.1} for s in range(1200)])
    store.upsert_run("run0", {}, study="b")
    store.upsert_run("solo", {"status": "pending", "config": {"norm": "in", "batch_size": "64"}}, study="b")
    store.save_study("a", {"trial_ids": ["run0", "run1", "run2"]})
    store.save_study("b", {"trial_ids": ["run0", "solo"]})


def _snapshot(store: ResultStore) -> dict[str, Any]:
    ids = [r["_id"] for r in store.find_runs()]
    return {
        "runs": sorted(store.find_runs(), key=lambda r: r["_id"]),
        "metrics": store.find_metrics(ids),
        "steps": store.find_steps(ids),
        "studies": store.list_studies(),
    }


def test_export_then_import_rebuilds_the_store(tmp_path: Path, store: ResultStore) -> None:
    _fill(store)
    counts = export_jsonl(store, tmp_path / "all.jsonl.gz")
    assert counts == {"studies": 2, "runs": 4, "metrics": 6, "steps": 3600}
    with gzip.open(tmp_path / "all.jsonl.gz", "rt") as handle:
        header = json.loads(handle.readline())
    assert header["format"] == "bench-results" and header["source"].startswith(store.kind)
    with EmbeddedStore(tmp_path / "copy.sqlite") as target:
        assert import_jsonl(target, tmp_path / "all.jsonl.gz")["runs"] == 4
        assert _snapshot(target) == _snapshot(store)
        import_jsonl(target, tmp_path / "all.jsonl.gz")  # importing twice changes nothing
        assert _snapshot(target) == _snapshot(store)
        assert target.info()["metrics"] == 6 and target.info()["steps"] == 3600


def test_export_of_one_study(tmp_path: Path, store: ResultStore) -> None:
    _fill(store)
    counts = export_jsonl(store, tmp_path / "b.jsonl", study="b")
    assert counts == {"studies": 1, "runs": 2, "metrics": 2, "steps": 1200}
    with pytest.raises(StoreError, match="No study 'nope'"):
        export_jsonl(store, tmp_path / "x.jsonl", study="nope")
    assert not (tmp_path / "x.jsonl").exists()


def test_import_never_replaces_a_finished_run_with_an_unfinished_copy(tmp_path: Path) -> None:
    with EmbeddedStore(tmp_path / "old.sqlite") as old:
        old.upsert_run("r", {"status": "running", "attempts": 1}, study="old")
        export_jsonl(old, tmp_path / "old.jsonl")
    with EmbeddedStore(tmp_path / "new.sqlite") as new:
        new.upsert_run("r", {"status": "completed", "attempts": 2, "summary": {"acc": 0.9}}, study="new")
        counts = import_jsonl(new, tmp_path / "old.jsonl")
        assert counts["runs_kept"] == 1
        run = new.get_run("r")
        assert (run["status"], run["attempts"], run["summary"], run["study"]) == ("completed", 2, {"acc": 0.9}, ["new", "old"])


def test_copy_an_embedded_store_to_mongodb(tmp_path: Path) -> None:
    with EmbeddedStore(tmp_path / "local.sqlite") as local:
        _fill(local)
        target = MongoStore(client=mongomock.MongoClient(), database="server")
        counts = copy_store(local, target)
        assert counts["runs"] == 4 and counts["metrics"] == 6 and counts["steps"] == 3600
        assert _snapshot(target) == _snapshot(local)


def test_tables_as_csv_and_parquet(tmp_path: Path, store: ResultStore) -> None:
    _fill(store)
    assert export_table(store, tmp_path / "runs.csv", "runs", "csv") == 4
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert list(runs.columns[:3]) == ["run_id", "status", "study"]
    assert {"config.norm", "config.batch_size", "summary.final_val_acc", "env.host"} <= set(runs.columns)
    assert runs.set_index("run_id").loc["run0", "study"] == "a,b"
    assert export_table(store, tmp_path / "runs.parquet", "runs", "parquet") == 4
    parquet = pd.read_parquet(tmp_path / "runs.parquet")
    assert parquet["config.batch_size"].tolist() == ["8", "16", "24", "64"]  # mixed types become text
    assert parquet.loc[0, "config.milestones"] == "[0.5]"
    assert export_table(store, tmp_path / "m.parquet", "metrics", "parquet", study="a") == 6
    assert list(pd.read_parquet(tmp_path / "m.parquet").columns) == ["run_id", "epoch", "val_acc"]
    steps = table_frame(store, "steps", study="a")
    assert list(steps.columns) == ["run_id", "step", "loss", "lr"] and len(steps) == 3600
    with pytest.raises(StoreError, match="Valid tables"):
        table_frame(store, "epochs")


def test_cli_export_import_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source.sqlite"
    with EmbeddedStore(source) as store:
        _fill(store)
    base = ["--store", str(source), "store"]
    result = runner.invoke(app, [*base, "export", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    assert "2 studies, 4 runs, 6 metrics, 3600 steps" in result.output
    result = runner.invoke(app, [*base, "export", str(tmp_path / "runs.parquet"), "--study", "a"])
    assert result.exit_code == 0 and "3 rows (runs)" in result.output
    result = runner.invoke(app, [*base, "export", str(tmp_path / "steps.csv"), "--table", "steps"])
    assert result.exit_code == 0 and "3600 rows (steps)" in result.output
    result = runner.invoke(app, [*base, "export", str(tmp_path / "out.xlsx")])
    assert result.exit_code == 1 and "--format" in result.output
    target = tmp_path / "target.sqlite"
    result = runner.invoke(app, ["--store", str(target), "store", "import", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0 and "2 studies, 4 runs, 6 metric documents, 3600 steps" in result.output
    result = runner.invoke(app, ["--store", str(target), "store", "import", str(tmp_path / "runs.parquet")])
    assert result.exit_code == 1 and "cannot be imported" in " ".join(result.output.split())
    server = MongoStore(client=mongomock.MongoClient(), database="copy", uri="mongodb://alice:s3cret@db:27017/copy")
    real_open = bench.store.open_store
    monkeypatch.setattr(bench.store, "open_store", lambda uri=None, **kw: server if str(uri).startswith("mongodb") else real_open(uri, **kw))
    result = runner.invoke(app, [*base, "copy", "--to", "mongodb://alice:s3cret@db:27017/copy"])
    assert result.exit_code == 0, result.output
    assert "into mongodb mongodb://alice:***@db:27017/copy: 2 studies, 4 runs" in result.output
    assert "s3cret" not in result.output
    assert MongoStore(client=server.client, database="copy").count_runs() == 4

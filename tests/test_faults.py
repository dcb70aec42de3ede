"""Faults outside training never lose or overwrite a result: a busy store, a mistaken
device, an empty store behind a report, missing dataset files, a grid whose trials fail."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import bench.grid.local as local
from bench.cli import app
from bench.errors import BenchError
from bench.grid import GridOptions, run_study
from bench.spec import load_spec, trial_from_assignments
from bench.store import EmbeddedStore
from bench.trial import TrialResult, run_trial

runner = CliRunner()

SPEC = """
    name: faults
    base: {dataset: synthetic, arch: cnn, width: 8, epochs: 2, batch_size: 64}
    axes:
      norm: [bn, gn]
    seeds: [0]
    report:
      sections:
        - {kind: pivot, rows: norm, columns: batch_size}
"""
TRAIN = ["--set", "dataset=synthetic", "--set", "epochs=1", "--set", "width=8", "--set", "norm=gn", "--set", "batch_size=16"]


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    path = tmp_path / "faults.yaml"
    path.write_text(textwrap.dedent(SPEC))
    return path


class WriteLock:
    """A second connection holding the file's write lock (``BEGIN IMMEDIATE``)."""

    def __init__(self, path: Path):
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.execute("COMMIT")
        self.conn.close()


# -- a slow store ---------------------------------------------------------------------


def test_writes_to_a_locked_file_are_journaled_then_replayed_by_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with EmbeddedStore(path, busy_timeout=0.1) as store:
        store.upsert_run("r", {"status": "running"})
        lock = WriteLock(path)
        store.upsert_metrics([{"run_id": "r", "epoch": 1, "val_acc": 0.5}])  # waits, retries, then journals
        store.upsert_run("r", {"status": "completed", "summary": {"final_val_acc": 0.5}})  # straight to the journal
        assert store.journal.pending() == 2
        lock.release()
        store._offline_until = 0.0  # the retry interval has passed
        store.upsert_run("other", {"status": "pending"})  # the next write replays the journal first
        assert not store.journal.has_entries()
        assert store.get_run("r")["status"] == "completed" and store.get_metrics("r")[0]["val_acc"] == 0.5


def test_sync_replays_and_says_when_the_file_is_still_locked(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with EmbeddedStore(path, busy_timeout=0.1) as store:
        lock = WriteLock(path)
        store.upsert_run("r", {"status": "pending"})
        with pytest.raises(BenchError, match="1 writes stay in the journal"):
            store.sync()
        lock.release()
    with EmbeddedStore(path, busy_timeout=0.1) as store:  # another process finds the journal beside the file
        assert store.sync() == 1 and store.get_run("r")["status"] == "pending"


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.ray)])
def test_a_grid_on_a_locked_store_trains_every_trial_and_loses_nothing(spec_path: Path, tmp_path: Path, executor: str) -> None:
    path = tmp_path / "s.sqlite"
    spec = load_spec(str(spec_path))
    with EmbeddedStore(path, busy_timeout=0.1) as store:
        lock = WriteLock(path)  # held longer than the busy timeout: the whole grid
        try:
            outcome = run_study(spec, store, GridOptions(executor=executor, max_concurrent=1, device="cpu"))
        finally:
            lock.release()
        assert (outcome.counts["completed"], outcome.counts["failed"], outcome.write_errors) == (2, 0, [])
        assert store.sync() > 0
        runs = store.find_runs({"study": "faults"})
        assert len(runs) == 2 and {r["status"] for r in runs} == {"completed"}
        assert all(r["attempts"] == 1 and r["summary"]["epochs_done"] == 2 for r in runs)
        assert len(store.find_metrics([r["_id"] for r in runs])) == 4


def test_an_epoch_callback_that_raises_does_not_fail_the_trial() -> None:
    def broken(metrics: dict[str, Any]) -> None:
        raise sqlite3.OperationalError("database is locked")

    config = trial_from_assignments({"dataset": "synthetic", "epochs": 2, "width": 8, "batch_size": 64})
    result = run_trial(config, broken, report_steps=broken)
    assert result.status == "completed" and result.error is None and result.summary["epochs_done"] == 2


# -- a mistake downgrades a finished run ----------------------------------------------


def test_an_unknown_or_absent_device_is_refused_before_anything_runs(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    assert runner.invoke(app, ["--store", str(store), "train", *TRAIN]).exit_code == 0
    with EmbeddedStore(store) as handle:
        (before,) = handle.find_runs()
    for device, message in (("tpu", "Unknown torch device 'tpu'"), ("cuda:7", "cuda")):
        result = runner.invoke(app, ["--store", str(store), "train", *TRAIN, "--device", device])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    with EmbeddedStore(store) as handle:
        assert handle.find_runs() == [before]


def test_a_failed_attempt_goes_into_history_and_the_run_keeps_its_result(tmp_path: Path, monkeypatch) -> None:
    store = tmp_path / "s.sqlite"
    assert runner.invoke(app, ["--store", str(store), "train", *TRAIN]).exit_code == 0
    with EmbeddedStore(store) as handle:
        (done,) = handle.find_runs()

    def failing(config: Any, report: Any = None, **_: Any) -> TrialResult:
        return TrialResult(status="failed", summary={"wall_seconds": 0.1}, error="Traceback ...\nRuntimeError: out of memory\n")

    monkeypatch.setattr(local, "run_trial", failing)
    result = runner.invoke(app, ["--store", str(store), "train", *TRAIN])
    assert result.exit_code == 1
    with EmbeddedStore(store) as handle:
        run = handle.get_run(done["_id"])
    assert (run["status"], run["summary"], run["finished_at"], run["attempts"]) == (
        "completed", done["summary"], done["finished_at"], 2)
    assert [h["outcome"] for h in run["history"]] == ["completed", "failed"]
    assert run["history"][1]["error"] == "RuntimeError: out of memory" and run["history"][1]["host"]


# -- a report overwritten from an empty store -----------------------------------------


def test_a_report_is_not_rewritten_from_a_store_without_its_runs(spec_path: Path, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    (reports / "faults").mkdir(parents=True)
    (reports / "faults.md").write_text("the real results")
    (reports / "faults" / "pivot.png").write_bytes(b"png")
    EmbeddedStore(tmp_path / "empty.sqlite").close()  # a store, without the study's runs
    base = ["--store", str(tmp_path / "empty.sqlite"), "report", str(spec_path), "--reports-dir", str(reports)]
    result = runner.invoke(app, base)
    assert result.exit_code == 1 and "holds none of the 2 runs" in result.output and "--force" in result.output
    assert (reports / "faults.md").read_text() == "the real results" and (reports / "faults" / "pivot.png").exists()
    import bench

    with pytest.raises(BenchError, match="holds none"):
        bench.write_report(load_spec(str(spec_path)), store=str(tmp_path / "empty.sqlite"), reports_dir=reports)
    result = runner.invoke(app, [*base, "--force"])
    assert result.exit_code == 0 and (reports / "faults.md").read_text() != "the real results"


# -- missing datasets, failed trials --------------------------------------------------


def test_a_missing_dataset_is_one_error_before_any_trial_starts(spec_path: Path, tmp_path: Path, monkeypatch) -> None:
    import bench.zoo.datasets as datasets

    class Offline:
        def __init__(self, **_: Any):
            raise OSError("Network is unreachable")

    monkeypatch.setattr(datasets, "_torchvision_dataset", lambda name: Offline)
    data = tmp_path / "data"
    store = tmp_path / "s.sqlite"
    result = runner.invoke(app, ["--store", str(store), "grid", str(spec_path), "--executor", "local", "--no-report",
                                 "--set", "dataset=mnist", "--data-dir", str(data)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "'mnist'" in text and str(data) in text and "train-images-idx3-ubyte" in text
    with EmbeddedStore(store) as handle:
        assert handle.count_runs() == 0  # nothing ran, nothing failed


def test_a_grid_whose_trials_fail_exits_non_zero_and_says_what_next(spec_path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(local, "run_trial", lambda *a, **k: TrialResult(status="failed", error="boom"))
    store = tmp_path / "s.sqlite"
    args = ["--store", str(store), "grid", str(spec_path), "--executor", "local", "--no-report"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "bench results ls --study faults --status failed" in " ".join(result.output.split())
    with EmbeddedStore(store) as handle:
        assert handle.count_runs({"status": "failed"}) == 2


# -- a full disk ----------------------------------------------------------------------


def fill_disk_at(monkeypatch, nth: int) -> None:
    """The store's ``nth`` write (and every later one) fails as on a full disk."""
    calls = {"n": 0}
    apply = EmbeddedStore._apply

    def full(self: EmbeddedStore, op: str, args: dict, action: str = "replay a journaled write") -> Any:
        calls["n"] += 1
        if calls["n"] < nth:
            return apply(self, op, args, action)
        with self._write(action):
            raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(EmbeddedStore, "_apply", full)


@pytest.mark.parametrize("nth", [1, 2, 3, 4, 5])
def test_a_full_disk_during_registration_leaves_no_run_without_a_status(spec_path: Path, tmp_path: Path, monkeypatch, nth: int) -> None:
    path = tmp_path / "s.sqlite"
    EmbeddedStore(path).close()
    with monkeypatch.context() as patch:
        fill_disk_at(patch, nth)  # registering two new trials takes five writes
        result = runner.invoke(app, ["--store", str(path), "grid", str(spec_path), "--executor", "local", "--no-report"])
    output = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"error: The disk holding the result store {path} is full" in output
    assert "finished trials are kept" in output and "failed to" not in output
    assert result.output.count("error:") == 1
    with EmbeddedStore(path) as store:
        assert all(run.get("status") == "pending" for run in store.find_runs())


def test_a_full_disk_names_the_disk_not_the_write_that_failed(spec_path: Path, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "s.sqlite"
    EmbeddedStore(path).close()
    with monkeypatch.context() as patch:
        fill_disk_at(patch, 5)  # the update that queues the trials
        result = runner.invoke(app, ["--store", str(path), "grid", str(spec_path), "--executor", "local", "--no-report"])
    output = " ".join(result.output.split())
    assert result.exit_code == 1
    assert "update runs" not in output.split("full")[0]  # the cause comes first
    assert "Free space on it, or choose another location with BENCH_STORE or --store, and run the same command again" in output
    assert runner.invoke(app, ["--store", str(path), "grid", str(spec_path), "--executor", "local", "--no-report"]).exit_code == 0
    with EmbeddedStore(path) as store:
        assert {run["status"] for run in store.find_runs()} == {"completed"}

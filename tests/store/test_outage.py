"""MongoDB going away: writes are journaled locally, training goes on, nothing is lost or
duplicated when the journal is replayed (by the next write, a read, or `bench store sync`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import bench.grid.local as local
import bench.store
from bench.cli import app
from bench.errors import StoreError
from bench.grid import GridOptions, plan, run_grid
from bench.spec import load_spec
from bench.store import Journal
from bench.trial import TrialResult

NOW = "2024-06-01T00:00:00+00:00"


def _server(client: Any) -> Any:
    return client.raw("bench_test")


def _write_a_trial(store: Any, run_id: str, epochs: range) -> None:
    store.upsert_run(run_id, {"config": {"norm": "gn"}}, study="s")
    store.claim_run(run_id, {"heartbeat_at": NOW}, driver="d", stale_before=NOW)
    store.upsert_metrics([{"run_id": run_id, "epoch": e, "val_acc": e / 10} for e in epochs])
    store.upsert_steps(run_id, [{"step": s, "loss": 1.0 / (s + 1)} for s in range(5)])
    store.upsert_run(run_id, {"status": "completed", "summary": {"final_val_acc": 0.9}})
    store.save_study("s", {"trial_ids": [run_id]})


def _state(store: Any, run_id: str) -> tuple:
    run = store.get_run(run_id)
    return (
        run["status"],
        run["attempts"],
        run["study"],
        [(m["epoch"], m["val_acc"]) for m in store.get_metrics(run_id)],
        len(store.find_steps([run_id])),
        store.get_study("s")["trial_ids"],
    )


def test_writes_during_an_outage_are_journaled_then_replayed_by_the_next_write(faulty: Any) -> None:
    store, client = faulty()
    store.upsert_metrics([{"run_id": "r", "epoch": 0, "val_acc": 0.0}])
    client.down = True
    _write_a_trial(store, "r", range(1, 4))  # nothing raises: training goes on
    store.update_runs({"_id": "r"}, {"env": {"host": "h"}})
    assert store.journal.pending() == 7
    assert _server(client).runs.count_documents({}) == 0  # the server has none of it yet
    client.down = False
    store.upsert_run("other", {})  # the next write replays the journal first, in order
    assert store.journal.pending() == 0 and not store.journal.path.exists()
    assert _state(store, "r") == ("completed", 1, ["s"], [(e, e / 10) for e in range(4)], 5, ["r"])
    assert store.get_run("r")["env"] == {"host": "h"}
    assert _server(client).metrics.count_documents({}) == 4


def test_a_read_replays_the_journal_first(faulty: Any) -> None:
    store, client = faulty()
    client.down = True
    store.upsert_run("r", {"status": "pending"})
    with pytest.raises(StoreError, match="failed to read a run"):
        store.get_run("r")  # reads cannot be journaled: a clear error, not a hang
    client.down = False
    assert store.get_run("r")["status"] == "pending"


def test_a_replay_cut_short_resumes_without_duplicating(faulty: Any, tmp_path: Path) -> None:
    store, client = faulty()
    client.down = True
    _write_a_trial(store, "r", range(1, 4))
    saved = tmp_path / "saved.jsonl"
    shutil.copy(store.journal.path, saved)
    client.down = False
    client.fail_after = 3  # the server goes away again in the middle of the replay
    with pytest.raises(StoreError, match="still unreachable"):
        store.sync()
    client.fail_after, client.down = None, False
    remaining = store.journal.pending()
    assert 0 < remaining < 6
    assert store.sync() == remaining
    expected = ("completed", 1, ["s"], [(e, e / 10) for e in range(1, 4)], 5, ["r"])
    assert _state(store, "r") == expected
    shutil.copy(saved, store.journal.path)  # the whole journal replayed a second time
    assert store.sync() == 6
    assert _state(store, "r") == expected  # the attempt still counted once, nothing doubled


def test_sync_replays_what_a_killed_process_left(faulty: Any) -> None:
    first, client = faulty()
    client.down = True
    _write_a_trial(first, "r", range(1, 3))
    first.close()  # the process ends with the server still down
    client.down = False
    second, _ = faulty()
    assert second.sync() == 6 and second.sync() == 0
    assert _state(second, "r") == ("completed", 1, ["s"], [(1, 0.1), (2, 0.2)], 5, ["r"])


def test_sync_while_the_server_is_still_down_says_so(faulty: Any) -> None:
    store, client = faulty()
    client.down = True
    store.upsert_run("r", {})
    with pytest.raises(StoreError) as info:
        store.sync()
    assert "still unreachable" in str(info.value) and "1 writes stay in the journal" in str(info.value)
    assert store.journal.pending() == 1


def test_while_offline_writes_go_straight_to_the_journal(faulty: Any) -> None:
    store, client = faulty(retry_interval=3600)
    client.down = True
    store.upsert_run("a", {})
    client.down = False  # back, but the store waits for its retry interval
    calls = len(client.calls)
    for i in range(5):
        store.upsert_metrics([{"run_id": "a", "epoch": i}])
    assert len(client.calls) == calls and store.journal.pending() == 6
    assert store.sync() == 6 and len(store.get_metrics("a")) == 5


def test_a_journal_line_torn_by_a_kill_is_set_aside(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    journal.append("upsert_run", {"run_id": "a"})
    with open(journal.path, "a") as handle:
        handle.write('{"op": "upsert_run", "args": {"run_')  # the process died mid-append
    seen: list[tuple[str, dict]] = []
    assert journal.replay(lambda op, args: seen.append((op, args))) == 1
    assert seen == [("upsert_run", {"run_id": "a"})]
    assert "run_" in journal.rejected_path.read_text() and not journal.has_entries()


def test_a_grid_goes_on_when_mongodb_disappears_in_the_middle(
    faulty: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, client = faulty()
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(
        "name: s\nbase: {dataset: synthetic, arch: cnn, width: 8, epochs: 3}\naxes:\n  norm: [bn, gn, ln]\nrepeats: 1\n"
    )
    seen = {"epochs": 0}

    def trial(config: Any, report: Any, **_: Any) -> TrialResult:
        for epoch in range(1, config.epochs + 1):
            seen["epochs"] += 1
            client.down = 2 <= seen["epochs"] <= 7  # gone from the 2nd epoch to the 7th
            report({"epoch": epoch, "val_acc": epoch / 10})
        return TrialResult(status="completed", summary={"final_val_acc": 0.3}, env={"host": "h"})

    monkeypatch.setattr(local, "run_trial", trial)
    grid_plan = plan(load_spec(str(spec_path)), store)
    recorder = run_grid(grid_plan, store, GridOptions(executor="local"))
    assert recorder.counts["completed"] == 3 and seen["epochs"] == 9
    runs = store.find_runs({"study": "s"})
    assert [r["status"] for r in runs] == ["completed"] * 3 and all(r["attempts"] == 1 for r in runs)
    metrics = store.find_metrics([r["_id"] for r in runs])
    assert sorted((m["run_id"], m["epoch"]) for m in metrics) == sorted((r["_id"], e) for r in runs for e in (1, 2, 3))
    assert store.journal.pending() == 0


def test_bench_store_sync_replays_the_journal(faulty: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store, client = faulty()
    client.down = True
    _write_a_trial(store, "r", range(1, 2))
    store.close()
    client.down = False
    monkeypatch.setattr(bench.store, "open_store", lambda uri=None, **_: faulty()[0])
    result = CliRunner().invoke(app, ["store", "sync"])
    assert result.exit_code == 0, result.output
    assert "6 journaled writes replayed" in result.output
    result = CliRunner().invoke(app, ["store", "sync"])
    assert "Nothing journaled" in result.output
    writer = faulty()[0]
    client.down = True
    writer.upsert_run("x", {})
    monkeypatch.setattr(bench.store, "open_store", lambda uri=None, **_: writer)
    result = CliRunner().invoke(app, ["store", "sync"])
    assert result.exit_code == 1 and "still unreachable" in result.output and "Traceback" not in result.output
    entries = [json.loads(line) for line in writer.journal.path.read_text().splitlines()]
    assert [e["op"] for e in entries] == ["upsert_run"]

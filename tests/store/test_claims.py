"""Starting attempts, conditional run updates and status counts, on every backend; and
two grids sharing one store."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import bench.grid.local as local
from bench.errors import QueryError, StoreError
from bench.grid import GridOptions, plan, run_grid
from bench.spec import load_spec
from bench.store import EmbeddedStore, ResultStore
from bench.trial import TrialResult

OLD, NOW, LATER = "2024-01-01T00:00:00+00:00", "2024-06-01T00:00:00+00:00", "2024-06-01T00:10:00+00:00"


def _claim(store: ResultStore, run_id: str, driver: str, stale: str = NOW, **kw: Any) -> bool:
    return store.claim_run(run_id, {"heartbeat_at": NOW, "started_at": NOW}, driver=driver, stale_before=stale, **kw)


def test_claim_creates_a_run_and_counts_the_attempt(store: ResultStore) -> None:
    assert _claim(store, "r", "d1")
    run = store.get_run("r")
    assert (run["status"], run["driver"], run["attempts"], run["heartbeat_at"]) == ("running", "d1", 1, NOW)
    assert run["attempt_id"] and run["schema_version"] >= 2


def test_a_live_run_of_another_driver_is_refused_and_left_untouched(store: ResultStore) -> None:
    store.upsert_run("r", {"status": "pending", "attempts": 0}, study="s")
    assert _claim(store, "r", "d1")
    store.upsert_run("r", {"heartbeat_at": LATER})
    before = store.get_run("r")
    assert not _claim(store, "r", "d2", stale=NOW)  # its heartbeat is newer than the threshold
    assert store.get_run("r") == before
    assert _claim(store, "r", "d1", stale=NOW)  # the same driver may restart it
    assert _claim(store, "r", "d2", stale=LATER)  # an abandoned run is taken over
    run = store.get_run("r")
    assert (run["driver"], run["attempts"], run["study"]) == ("d2", 3, ["s"])


def test_a_running_run_without_heartbeat_is_abandoned(store: ResultStore) -> None:
    store.upsert_run("r", {"status": "running", "attempts": 1})
    assert _claim(store, "r", "d2", stale=OLD)


def test_finished_runs_are_refused_unless_asked(store: ResultStore) -> None:
    for status in ("completed", "diverged"):
        store.upsert_run(status, {"status": status, "attempts": 1, "summary": {"acc": 0.9}})
        assert not _claim(store, status, "d1")
        assert store.get_run(status)["status"] == status
        assert _claim(store, status, "d1", skip_finished=False)
        assert store.get_run(status)["attempts"] == 2
    for status in ("failed", "interrupted", "pending"):
        store.upsert_run(status, {"status": status})
        assert _claim(store, status, "d1")


def test_update_runs_is_conditional_and_counts_matches(store: ResultStore) -> None:
    for run_id, status, beat in (("a", "running", OLD), ("b", "running", LATER), ("c", "completed", OLD), ("d", "running", None)):
        store.upsert_run(run_id, {"status": status, "heartbeat_at": beat, "summary": {"acc": 0.5}}, study="s")
    stale = {"status": "running", "$or": [{"heartbeat_at": {"$lte": NOW}}, {"heartbeat_at": None}]}
    assert store.update_runs(stale, {"status": "interrupted", "finished_at": NOW}) == 2
    assert {r["_id"]: r["status"] for r in store.find_runs()} == {"a": "interrupted", "b": "running", "c": "completed", "d": "interrupted"}
    assert store.get_run("a")["summary"] == {"acc": 0.5} and store.get_run("a")["study"] == ["s"]
    assert store.update_runs({"status": "failed"}, {"status": "pending"}) == 0
    with pytest.raises(StoreError, match="'study'"):
        store.update_runs({}, {"study": ["x"]})
    with pytest.raises(StoreError, match="'status'"):
        store.update_runs({}, {"status": "finished"})
    with pytest.raises(QueryError, match=r"\$where"):
        store.update_runs({"$where": "1"}, {"status": "pending"})
    assert store.count_runs({"status": "pending"}) == 0


def test_status_counts_per_study(store: ResultStore) -> None:
    store.upsert_run("a", {"status": "completed"}, study="s1")
    store.upsert_run("a", {}, study="s2")
    store.upsert_run("b", {"status": "failed"}, study="s1")
    store.upsert_run("c", {"status": "pending"})
    store.upsert_run("d", {})
    assert store.status_counts() == {
        "": {"": 1, "pending": 1},
        "s1": {"completed": 1, "failed": 1},
        "s2": {"completed": 1},
    }


def _shared_stores(backend: str, tmp_path: Path, faulty: Any, n: int) -> list[Any]:
    """n stores on one database: separate SQLite connections, or MongoStores on one client."""
    if backend == "embedded":
        return [EmbeddedStore(tmp_path / "shared.sqlite") for _ in range(n)]
    stores = [faulty()[0] for _ in range(n)]
    assert len({id(s.client) for s in stores}) == 1
    return stores


@pytest.mark.parametrize("backend", ["embedded", "mongomock"])
def test_concurrent_claims_let_exactly_one_driver_win(tmp_path: Path, faulty: Any, backend: str) -> None:
    """Eight drivers race for the same runs: each run gets exactly one attempt."""
    stores = _shared_stores(backend, tmp_path, faulty, 8)
    wins: list[tuple[str, str]] = []
    barrier = threading.Barrier(len(stores))

    def race(index: int, s: ResultStore) -> None:
        barrier.wait()
        for run in range(20):
            if s.claim_run(f"r{run}", {"heartbeat_at": "9999"}, driver=f"d{index}", stale_before=NOW):
                wins.append((f"r{run}", f"d{index}"))

    threads = [threading.Thread(target=race, args=(i, s)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(run for run, _ in wins) == sorted(f"r{i}" for i in range(20))
    for run, driver in wins:
        doc = stores[0].get_run(run)
        assert (doc["attempts"], doc["driver"]) == (1, driver)
    for s in stores:
        s.close()


# --------------------------------------------------------------------------- two grids


SPEC = """
name: {name}
base: {{dataset: synthetic, arch: cnn, width: 8, epochs: 3}}
axes:
  norm: [bn, gn]
  batch_size: {batches}
repeats: 2
"""


def _fake_trial(config: Any, report: Any, **_: Any) -> TrialResult:
    for epoch in range(1, config.epochs + 1):
        time.sleep(0.002)
        report({"epoch": epoch, "val_acc": 0.1 * epoch, "train_loss": 1.0 / epoch})
    return TrialResult(status="completed", summary={"final_val_acc": 0.3, "epochs_done": config.epochs}, env={"host": "test"})


@pytest.mark.parametrize("backend", ["embedded", "mongomock"])
def test_two_grids_at_once_lose_and_mix_up_nothing(
    tmp_path: Path, faulty: Any, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """Two overlapping studies run side by side on one store: every trial runs once, under
    one driver, with exactly its epochs, and both studies list their shared trials."""
    monkeypatch.setattr(local, "run_trial", _fake_trial)
    paths = {}
    for name, batches in (("left", "[16, 32, 64]"), ("right", "[32, 64, 128]")):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(SPEC.format(name=name, batches=batches))
    stores = dict(zip(paths, _shared_stores(backend, tmp_path, faulty, 2), strict=True))
    recorders: dict[str, Any] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def grid(name: str) -> None:
        try:
            grid_plan = plan(load_spec(str(paths[name])), stores[name])
            barrier.wait()  # both plan before either runs: every shared trial is todo twice
            recorders[name] = run_grid(grid_plan, stores[name], GridOptions(executor="local"))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=grid, args=(name,)) for name in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store = stores["left"]
    runs = store.find_runs()
    assert len(runs) == 2 * 2 * 4  # norms × seeds × the four distinct batch sizes
    assert {r["status"] for r in runs} == {"completed"}
    assert all(r["attempts"] == 1 for r in runs)
    shared = [r for r in runs if r["config"]["batch_size"] in (32, 64)]
    assert len(shared) == 8 and all(sorted(r["study"]) == ["left", "right"] for r in shared)
    metrics = store.find_metrics([r["_id"] for r in runs])
    assert sorted((m["run_id"], m["epoch"]) for m in metrics) == sorted((r["_id"], e) for r in runs for e in (1, 2, 3))
    done = sum(r.counts["completed"] for r in recorders.values())
    skipped = sum(r.counts["skipped"] for r in recorders.values())
    assert done == len(runs) and done + skipped == 2 * 12
    assert {s["_id"] for s in store.list_studies()} == {"left", "right"}
    for s in stores.values():
        s.close()

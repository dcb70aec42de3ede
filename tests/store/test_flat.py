"""The analysis frames read from flat rows equal the frames built from the documents.

``runs_frame`` / ``metrics_frame`` of a store (the embedded store reads its flat rows, a
MongoDB store projected documents) must give exactly the DataFrame that
:func:`bench.report.frame.runs_frame` builds from ``find_runs`` — same columns in the
same order, dtypes, values and row order — whatever the documents hold, and the embedded
store's flat rows must follow every write path.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench.report.frame import load_results, metrics_frame
from bench.store.flat import runs_frame_from_docs as runs_frame  # the store's frames, before the report adds `outcome`
from bench.store import EmbeddedStore, ResultStore
from bench.store.base import runs_by_id
from bench.store.embedded import FILE_VERSION
from bench.store.status import requeue
from bench.store.transfer import copy_store, export_jsonl, import_jsonl


def equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert list(a.columns) == list(b.columns) and list(a.dtypes) == list(b.dtypes)


def fill(store: ResultStore) -> None:
    """Runs of several studies with varied documents: missing fields, None, lists, nested
    summaries, texts, booleans, integers and floats in one field."""
    store.upsert_run("a1", {"status": "completed", "attempts": 1, "started_at": "2024-01-01T00:00:00+00:00",
                            "config": {"norm": "gn", "batch_size": 8, "lr": 0.1, "lr_milestones": [30, 60], "amp": True},
                            "derived": {"effective_lr": 0.025},
                            "summary": {"final_val_acc": 0.9, "steps": 100, "device": "cpu", "loss_spikes": 0,
                                        "curve": {"a": [1, 2]}, "norm": "shadowed"},
                            "env": {"host": "h1", "code": {"trial": "abc"}, "git_commit": "c1"}}, study="s1")
    store.upsert_run("a2", {"status": "diverged", "attempts": 2, "error": "Traceback\n  boom\nValueError: nan loss\n",
                            "config": {"norm": "bn", "batch_size": 16, "lr": 1, "lr_milestones": None, "amp": None},
                            "summary": {"final_val_acc": None, "steps": 7.5, "device": None, "loss_spikes": 3}}, study="s1")
    store.upsert_run("a3", {"status": "failed", "config": {"norm": "ln", "batch_size": 2 ** 62, "extra_key": "x"},
                            "summary": {"final_val_acc": 1, "text_or_number": "n/a"}, "error": "   "}, study="s1")
    store.upsert_run("a3", {"summary": {"final_val_acc": 1, "text_or_number": 4}}, study="s2")
    store.upsert_run("b1", {"status": "pending", "config": {"norm": "ünïcode ✓", "batch_size": 4}}, study="s2")
    store.upsert_run("b2", {})  # in no study, no config
    store.upsert_run("b3", {"status": "running", "config": {"batch_size": 4, "amp": False}, "derived": {}, "summary": {}},
                     study="s2", on_insert={"attempts": 0})
    store.upsert_metrics([
        {"run_id": "a1", "epoch": 1, "val_acc": 0.5, "train_loss": 2, "lr": 0.1},
        {"run_id": "a1", "epoch": 2, "val_acc": 0.6, "train_loss": 1.5, "lr": 0.1, "note": "warm"},
        {"run_id": "a2", "epoch": 1, "val_acc": None, "train_loss": float("nan"), "hist": [1, 2]},
        {"run_id": "a3", "epoch": 3, "val_acc": 1, "flag": True},
        {"run_id": "a3", "epoch": 1, "val_acc": 0.25, "flag": False, "note": None},
    ])


FILTERS: list[Any] = [None, {}, {"study": "s1"}, {"study": "s2"}, {"status": "completed"}, {"config.norm": "gn"},
                      {"_id": {"$in": ["a3", "a1", "zz"]}}, {"study": "missing"}, {"summary.steps": {"$gte": 50}},
                      {"$or": [{"study": "s2"}, {"status": {"$exists": False}}]}]


def check_frames(store: ResultStore) -> None:
    for query in FILTERS:
        equal(store.runs_frame(query), runs_frame(store.find_runs(query)))
    every = [r["_id"] for r in store.find_runs()]
    for ids in (every, every[::-1], ["a2"], [], ["nope"]):
        equal(store.metrics_frame(ids), metrics_frame(store.find_metrics(ids)))
        extra = [{"_id": "p1", "status": "pending", "config": {"norm": "gn", "batch_size": 1, "lr_milestones": [1]}}]
        equal(store.runs_frame(ids=ids, extra=extra), runs_frame([*runs_by_id(store, ids), *extra]))
        assert store.run_envs(ids) == [(r["_id"], r.get("env")) for r in runs_by_id(store, ids)]


def test_frames_equal_the_frames_built_from_documents(store: ResultStore) -> None:
    check_frames(store)  # empty
    fill(store)
    check_frames(store)


class DocumentsOnly:
    """A store without the fast paths: what load_results did before them."""

    def __init__(self, store: ResultStore):
        self.store = store

    def find_runs(self, *args: Any, **kwargs: Any) -> list[dict]:
        return self.store.find_runs(*args, **kwargs)

    def find_metrics(self, run_ids: list[str]) -> list[dict]:
        return self.store.find_metrics(run_ids)

    def find_steps(self, run_ids: list[str]) -> list[dict]:
        return self.store.find_steps(run_ids)


def test_load_results_is_unchanged(store: ResultStore) -> None:
    fill(store)
    for study in ("s1", "s2", None):
        for metrics in (False, True):
            equal(load_results(study, store=store, metrics=metrics),
                  load_results(study, store=DocumentsOnly(store), metrics=metrics))
    equal(load_results("s1", {"config.norm": "bn"}, store=store), load_results("s1", {"config.norm": "bn"}, store=DocumentsOnly(store)))


# --------------------------------------------------------------------------- embedded: flat rows follow every write


def consistent(store: EmbeddedStore) -> None:
    """The flat rows decode to the frames of the documents, and there is one per document."""
    conn = store._connection()
    for table, flat in (("runs", "runs_flat"), ("metrics", "metrics_flat")):
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == conn.execute(f"SELECT count(*) FROM {flat}").fetchone()
    assert conn.execute("SELECT count(*) FROM runs JOIN runs_flat f ON f.id = runs.id AND f.seq = runs.rowid").fetchone()[0] == \
        conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    studies = {(study, seq) for seq, doc in conn.execute("SELECT rowid, doc FROM runs")
               for value in [json.loads(doc).get("study")]
               for study in ([value] if isinstance(value, str) else value if isinstance(value, list) else [])
               if isinstance(study, str)}
    assert set(conn.execute("SELECT study, seq FROM run_studies").fetchall()) == studies
    check_frames(store)


@pytest.fixture
def embedded(tmp_path: Path) -> EmbeddedStore:
    store = EmbeddedStore(tmp_path / "flat.sqlite", busy_timeout=0, retry_interval=0)
    yield store
    store.close()


def test_upserts_and_on_insert_keep_flat_rows(embedded: EmbeddedStore) -> None:
    fill(embedded)
    consistent(embedded)
    embedded.upsert_run("a1", {"summary": {"final_val_acc": 0.95}, "config": {"norm": "bn", "batch_size": 8}})
    embedded.upsert_metrics([{"run_id": "a1", "epoch": 2, "val_acc": 0.7}, {"run_id": "b2", "epoch": 1, "val_acc": 0.1}])
    consistent(embedded)


def test_claims_keep_flat_rows(embedded: EmbeddedStore) -> None:
    fill(embedded)
    assert embedded.claim_run("b1", {"heartbeat_at": "2024-01-01T00:00:00+00:00"}, driver="h:1:x", stale_before="2000-01-01")
    assert embedded.claim_run("new", {"config": {"norm": "gn"}, "heartbeat_at": "2024-01-01"}, driver="h:1:x", stale_before="2000-01-01")
    assert not embedded.claim_run("new", {}, driver="h:2:y", stale_before="2000-01-01")
    consistent(embedded)


def test_update_runs_and_reset_keep_flat_rows(embedded: EmbeddedStore) -> None:
    fill(embedded)
    assert embedded.update_runs({"study": "s2"}, {"summary": {"final_val_acc": 0.5}, "status": "failed"}) == 3
    assert requeue(embedded, "s2", "failed") == 3
    consistent(embedded)


def test_journal_replay_keeps_flat_rows(embedded: EmbeddedStore) -> None:
    fill(embedded)
    other = sqlite3.connect(embedded.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock: writes are journaled
    embedded.upsert_run("j1", {"status": "completed", "config": {"norm": "gn"}}, study="s1")
    embedded.upsert_metrics([{"run_id": "j1", "epoch": 1, "val_acc": 0.3}])
    embedded.update_runs({"_id": "a1"}, {"status": "failed"})
    assert embedded.journal.pending() == 3
    other.execute("ROLLBACK")
    other.close()
    assert embedded.sync() == 3
    consistent(embedded)
    assert embedded.runs_frame({"_id": "a1"})["status"].tolist() == ["failed"]


def test_import_and_copy_keep_flat_rows(store: ResultStore, tmp_path: Path) -> None:
    fill(store)
    export_jsonl(store, tmp_path / "all.jsonl")
    with EmbeddedStore(tmp_path / "imported.sqlite") as target:
        import_jsonl(target, tmp_path / "all.jsonl")
        import_jsonl(target, tmp_path / "all.jsonl")  # twice changes nothing
        consistent(target)
        equal(target.runs_frame({"study": "s1"}), store.runs_frame({"study": "s1"}))
    with EmbeddedStore(tmp_path / "copied.sqlite") as target:
        copy_store(store, target)
        consistent(target)


# --------------------------------------------------------------------------- upgrades


def downgrade_to_version_2(path: Path) -> None:
    """The file as bench wrote it before flat rows: no flat tables, user_version 2."""
    conn = sqlite3.connect(path)
    for table in ("runs_flat", "metrics_flat", "flat_shapes", "flat_texts", "run_studies", "meta"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()


def test_a_version_2_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite"
    with EmbeddedStore(path) as store:
        fill(store)
        before = (store.runs_frame(), store.find_runs(), store.find_metrics(["a1", "a2", "a3"]))
    downgrade_to_version_2(path)
    with EmbeddedStore(path, read_only=True) as reader:  # a reader never writes: it reads the documents
        assert not reader._flat
        check_frames(reader)
        equal(reader.runs_frame(), before[0])
    with EmbeddedStore(path) as store:
        assert store._flat
        assert store.find_runs() == before[1] and store.find_metrics(["a1", "a2", "a3"]) == before[2]
        consistent(store)
        equal(store.runs_frame(), before[0])
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == FILE_VERSION
    conn.close()
    with EmbeddedStore(path, read_only=True) as reader:
        assert reader._flat
        consistent(reader)


def test_flat_rows_of_another_version_are_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "f.sqlite"
    with EmbeddedStore(path) as store:
        fill(store)
        conn = store._connection()
        conn.execute("UPDATE meta SET value = -1 WHERE key = 'flat_version'")
        conn.execute("DELETE FROM runs_flat WHERE id = 'a1'")  # whatever an older encoding left
    with EmbeddedStore(path, read_only=True) as reader:
        assert not reader._flat  # not trusted: read from the documents
        check_frames(reader)
    with EmbeddedStore(path) as store:
        consistent(store)


def test_the_flat_tables_hold_numbers_and_interned_texts(embedded: EmbeddedStore) -> None:
    fill(embedded)
    conn = embedded._connection()
    texts = {t for (t,) in conn.execute("SELECT text FROM flat_texts")}
    assert {"gn", "completed", "s1"} <= texts and "a1" not in texts  # run ids are read from the key
    shapes = [json.loads(s) for (s,) in conn.execute("SELECT spec FROM flat_shapes")]
    assert all(isinstance(shape, list) for shape in shapes)


def test_metrics_read_row_by_row_equal_the_aggregated_read(embedded: EmbeddedStore) -> None:
    fill(embedded)
    every = [r["_id"] for r in embedded.find_runs()]
    equal(embedded._metrics_frame_by_rows(every), embedded.metrics_frame(every))
    equal(embedded._metrics_frame_by_rows(every), metrics_frame(embedded.find_metrics(every)))


def test_frames_can_be_changed(embedded: EmbeddedStore) -> None:
    fill(embedded)
    frame = embedded.runs_frame()
    frame.loc[0, "batch_size"] = 3  # no column is a view of a read-only buffer
    frame["attempts"] += 1
    epochs = embedded.metrics_frame(["a2"])  # one shape: columns straight from the words
    epochs.loc[0, "epoch"] = 9
    assert frame.loc[0, "batch_size"] == 3 and epochs.loc[0, "epoch"] == 9

"""The analysis frames read from flat rows equal the frames built from the documents.

``runs_frame`` / ``metrics_frame`` of a store (the embedded store reads its flat rows, a
MongoDB store projected documents) must give exactly the DataFrame that
:func:`bench.report.frame.runs_frame` builds from ``find_runs`` — same columns in the
same order, dtypes, values and row order — whatever the documents hold, and the embedded
store's flat rows must follow every write path.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import struct
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench.report.frame import load_results, metrics_frame
from bench.store.flat import runs_frame_from_docs as runs_frame  # the store's frames, before the report adds `outcome`
from bench.store import EmbeddedStore, ResultStore
from bench.store.base import runs_by_id
from bench.store.embedded import FILE_VERSION
from bench.store.flat import FLAT_VERSION, merge_block, pack_block, unpack_block
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
        # one read: the frame with the trials not found, and the environments of those found
        found: list[set[str]] = []
        frame, envs = store.runs_frame(ids=[*ids, "p1"], extra=lambda stored: found.append(stored) or extra, envs=True)
        equal(frame, runs_frame([*runs_by_id(store, [*ids, "p1"]), *extra]))
        assert envs == store.run_envs(ids) and found == [{r["_id"] for r in runs_by_id(store, ids)}]


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


def test_a_study_store_reads_as_its_documents(tmp_path: Path) -> None:
    """A store filled as a grid fills it (benchmarks/store_scale.py: every config field of
    every trial, most at their defaults, kept in the row shapes; 3 epochs per run, some
    written again one at a time with fewer fields; steps): its frames are those built
    from its documents, on both backends' paths."""
    import importlib.util
    import random

    from bench.spec import load_spec

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "store_scale.py"
    module_spec = importlib.util.spec_from_file_location("store_scale", script)
    scale = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(scale)
    spec_path = tmp_path / "scale.yaml"
    spec_path.write_text(scale.SPEC.format(epochs=3, norms=["bn", "gn"], batches=[8, 32], lrs=[0.05, 0.1], seeds=[0, 1, 2]))
    trials = load_spec(str(spec_path)).expand()
    with EmbeddedStore(tmp_path / "scale.sqlite") as store:
        scale.fill(store, trials, 3, 2, random.Random(0))
        for metrics in (False, True):
            equal(load_results("scale", store=store, metrics=metrics), load_results("scale", store=DocumentsOnly(store), metrics=metrics))
        ids = [t.trial_id for t in trials]
        equal(store.runs_frame(ids=ids[::-1]), runs_frame(runs_by_id(store, ids[::-1])))
        conn = store._connection()
        assert conn.execute("SELECT max(length(nums)) FROM runs_flat").fetchone()[0] < 400  # defaults live in the shapes


# --------------------------------------------------------------------------- embedded: flat rows follow every write


def consistent(store: EmbeddedStore) -> None:
    """The flat rows decode to the frames of the documents, and there is one per document."""
    conn = store._connection()
    assert conn.execute("SELECT count(*) FROM runs").fetchone() == conn.execute("SELECT count(*) FROM runs_flat").fetchone()
    epochs = {}  # run → its epochs, as its block holds them
    for run_id, block in conn.execute("SELECT run_id, epochs FROM metrics_flat"):
        epochs[run_id] = list(struct.unpack(f"<{len(block) // 8}q", block))
    assert epochs == {run_id: [e for _, e in rows] for run_id, rows in
                      itertools.groupby(conn.execute("SELECT run_id, epoch FROM metrics ORDER BY run_id, epoch"), key=lambda r: r[0])}
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


def test_a_file_with_flat_rows_of_version_3_is_upgraded_in_place(tmp_path: Path) -> None:
    """A store written by bench with a metrics row per document (data/flat-v3.sql) gathers
    them into blocks when opened for writing, and reads the same as from its documents."""
    path = tmp_path / "v3.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript((Path(__file__).parent / "data" / "flat-v3.sql").read_text())
    conn.close()
    with EmbeddedStore(path, read_only=True) as reader:  # not upgraded by a reader: its documents are read
        assert not reader._flat
        check_frames(reader)
        before = (reader.runs_frame(), reader.find_runs(), reader.find_metrics(["a1", "a2", "a3"]), reader.find_steps(["a1"]))
    with EmbeddedStore(path) as store:
        assert store._flat
        consistent(store)
        equal(store.runs_frame(), before[0])
        assert (store.find_runs(), store.find_metrics(["a1", "a2", "a3"]), store.find_steps(["a1"])) == before[1:]
        assert store.get_study("s1") == {"_id": "s1", "spec_hash": "abc"}
        store.upsert_metrics([{"run_id": "a1", "epoch": 3, "val_acc": 0.7}])  # written into the gathered block
        consistent(store)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'flat_version'").fetchone()[0] == FLAT_VERSION
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'metrics_flat_rows'").fetchone()[0] == 0
    conn.close()


def test_blocks_take_epochs_in_any_order(embedded: EmbeddedStore) -> None:
    """A trial's next epoch is appended to its run's block; an epoch written again, or
    before the last, is merged into it; rows of other shapes and with JSON values too."""
    writes = [
        [{"run_id": "r", "epoch": 3, "val_acc": 0.3}],
        [{"run_id": "r", "epoch": 1, "val_acc": 0.1, "hist": [1, 2]}],
        [{"run_id": "r", "epoch": 5, "val_acc": 0.5, "note": "late"}, {"run_id": "s", "epoch": 1, "val_acc": 1}],
        [{"run_id": "r", "epoch": 6, "val_acc": 0.6, "hist": [3]}, {"run_id": "r", "epoch": 7, "val_acc": 0.7}],
        [{"run_id": "r", "epoch": 3, "val_acc": 0.35, "hist": {"a": 1}}],  # replaces epoch 3
        [{"run_id": "r", "epoch": 2, "val_acc": 0.2}, {"run_id": "r", "epoch": 8, "val_acc": None}],
    ]
    for docs in writes:
        embedded.upsert_metrics(docs)
        equal(embedded.metrics_frame(["r", "s"]), metrics_frame(embedded.find_metrics(["r", "s"])))
    consistent(embedded)
    frame = embedded.metrics_frame(["r"])
    assert frame["epoch"].tolist() == [1, 2, 3, 5, 6, 7, 8]
    hist = frame["hist"].tolist()
    assert (hist[0], hist[2], hist[4]) == ([1, 2], {"a": 1}, [3]) and frame["note"].tolist()[3] == "late"


def test_merge_block_appends_or_merges() -> None:
    rows = [(1, 7, b"a" * 8, None), (2, 7, b"b" * 8, '["x"]')]
    block = merge_block(None, rows, {}.get)
    assert unpack_block(block, {7: 1}) == rows
    appended = merge_block(block, [(4, 8, b"c" * 16, '[{"k":1}]')], lambda shapes: pytest.fail("an append decodes nothing"))
    assert appended == pack_block([*rows, (4, 8, b"c" * 16, '[{"k":1}]')])
    merged = merge_block(appended, [(2, 7, b"d" * 8, None), (3, 7, b"e" * 8, None)], lambda shapes: {7: 1, 8: 2})
    assert unpack_block(merged, {7: 1, 8: 2}) == [(1, 7, b"a" * 8, None), (2, 7, b"d" * 8, None), (3, 7, b"e" * 8, None),
                                                  (4, 8, b"c" * 16, '[{"k":1}]')]


def test_a_scan_reads_the_runs_of_many_ids_in_the_order_of_their_chunks(embedded: EmbeddedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past _SCAN_IDS ids making up a large part of the table, the runs are read in one pass
    and put in runs_by_id's order: by chunk of ID_CHUNK ids, then as stored."""
    import bench.store.base as base
    import bench.store.embedded as module

    fill(embedded)
    every = [r["_id"] for r in embedded.find_runs()]
    monkeypatch.setattr(module, "ID_CHUNK", 2)
    monkeypatch.setattr(base, "ID_CHUNK", 2)
    orders = [every, every[::-1], ["b3", "a1", "zz", "a2", "b1"], ["a1", "a1", "b3", "a1"], ["a2", "x", "a3"] * 2]
    expected = [embedded._flat_runs("read", "id, shape, env", None, ids) for ids in orders]
    monkeypatch.setattr(module, "_SCAN_IDS", 1)
    scanned = [embedded._flat_runs("read", "id, shape, env", None, ids) for ids in orders]
    assert scanned == expected
    assert [row[0] for row in scanned[2]] == ["a1", "b3", "a2", "b1"]  # chunks (b3 a1) (zz a2) (b1): as stored within each
    for ids in orders:
        equal(embedded.runs_frame(ids=ids), runs_frame(runs_by_id(embedded, ids)))


def test_frames_can_be_changed(embedded: EmbeddedStore) -> None:
    fill(embedded)
    frame = embedded.runs_frame()
    frame.loc[0, "batch_size"] = 3  # no column is a view of a read-only buffer
    frame["attempts"] += 1
    epochs = embedded.metrics_frame(["a2"])  # one shape: columns straight from the words
    epochs.loc[0, "epoch"] = 9
    assert frame.loc[0, "batch_size"] == 3 and epochs.loc[0, "epoch"] == 9

"""Collections, tables and indexes: what queries use is indexed, created once, and an
older embedded file is upgraded in place."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import bench.store.embedded as embedded
from bench.store import EmbeddedStore
from bench.store.embedded import FILE_VERSION
from bench.store.base import INDEXED_RUN_PATHS
from bench.store.mongo import COLLECTIONS
from bench.store.query import compile_filter


def test_mongodb_indexes_are_created_once(faulty: Any) -> None:
    store, client = faulty()
    created = client.calls.count("create_index")
    expected = sum(len(spec["indexes"]) for spec in COLLECTIONS.values())
    assert created == expected
    assert {"run_id_1_bucket_1", "run_id_1_epoch_1"} <= {i["name"] for spec in COLLECTIONS.values() for i in spec["indexes"]}
    assert {f"{path}_1" for path in INDEXED_RUN_PATHS} <= set(store.db["runs"].index_information())
    faulty()  # a second process opening the same database
    assert client.calls.count("create_index") == created


def test_embedded_schema_is_created_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.sqlite"
    EmbeddedStore(path).close()
    # Any schema statement run again would now fail: opening must not run them.
    monkeypatch.setattr(embedded, "_SCHEMA", ["CREATE TABLE runs (x)"])
    with EmbeddedStore(path) as store:
        store.upsert_run("r", {"status": "pending"})


def test_queries_use_the_indexes(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    EmbeddedStore(path).close()
    conn = sqlite3.connect(path)
    try:
        def plan(sql: str, *params: Any) -> str:
            return str(conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall())

        for field in INDEXED_RUN_PATHS:
            if field != "study":
                # The compiled filters (what find_runs runs) search the index on the value,
                # not the unselective one on its type.
                index = "runs_" + field.replace(".", "_")
                for value in ("x", 8):
                    where, params = compile_filter({field: value})
                    assert f"USING INDEX {index} (" in plan(f"SELECT doc FROM runs WHERE {where}", *params), (field, value)
        assert "PRIMARY KEY" in plan("SELECT doc FROM metrics WHERE run_id = ? ORDER BY epoch", "r")
        assert "PRIMARY KEY" in plan("SELECT doc FROM steps WHERE run_id IN (?, ?) ORDER BY run_id, step", "a", "b")
        assert "sqlite_autoindex_runs_1" in plan("SELECT doc FROM runs WHERE id IN (?, ?)", "a", "b")
    finally:
        conn.close()


def test_filters_on_the_run_id_use_the_primary_key() -> None:
    assert compile_filter({"_id": {"$in": ["a", "b", 3]}}) == ("id IN (?, ?)", ["a", "b"])
    assert compile_filter({"_id": "a", "status": "running"})[0].startswith("(id = ? AND ")
    assert compile_filter({"_id": {"$in": [1]}}) == ("0", [])


def test_a_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, doc TEXT NOT NULL)")
    conn.execute("CREATE TABLE metrics (run_id TEXT NOT NULL, epoch INTEGER NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (run_id, epoch)) WITHOUT ROWID")
    conn.execute("CREATE TABLE studies (id TEXT PRIMARY KEY, doc TEXT NOT NULL)")
    old = {"_id": "r", "status": "completed", "study": ["s"], "schema_version": 1}
    conn.execute("INSERT INTO runs VALUES (?, ?)", ("r", json.dumps(old)))
    conn.execute("INSERT INTO metrics VALUES (?, ?, ?)", ("r", 1, json.dumps({"run_id": "r", "epoch": 1})))
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with EmbeddedStore(path) as store:
        assert store.get_run("r") == old and store.get_metrics("r") == [{"run_id": "r", "epoch": 1}]
        store.upsert_steps("r", [{"step": 0, "loss": 1.0}])
        assert store.find_steps(["r"]) == [{"run_id": "r", "step": 0, "loss": 1.0}]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == FILE_VERSION == 3
    conn.close()

"""The ResultStore contract, checked against every backend in ``conftest.BACKENDS``."""

from __future__ import annotations

import datetime as dt
import json
import math
import multiprocessing
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import mongomock
import numpy as np
import pytest

import bench.store.embedded
import bench.store.mongo
from bench.errors import BenchError, QueryError, StoreError
from bench.store import (
    SCHEMA_VERSION,
    EmbeddedStore,
    MongoStore,
    ResultStore,
    mask_uri,
    open_store,
    sanitize,
)
from bench.store.base import RUN_STATUSES
from bench.store.embedded import FILE_VERSION
from bench.store.mongo import COLLECTIONS, database_from_uri

REPO = Path(__file__).resolve().parents[2]


def _ids(docs: list[dict]) -> list[str]:
    return [doc["_id"] for doc in docs]


# --------------------------------------------------------------------------- runs


def test_store_satisfies_the_protocol(store: ResultStore) -> None:
    assert isinstance(store, ResultStore)
    assert store.kind in ("embedded", "mongodb")
    assert store.location


def test_upsert_creates_then_sets_top_level_fields(store: ResultStore) -> None:
    assert store.get_run("a1") is None
    store.upsert_run(
        "a1", {"status": "pending", "config": {"norm": "bn", "lr": 0.1}, "attempts": 0}
    )
    assert store.get_run("a1") == {
        "_id": "a1",
        "status": "pending",
        "config": {"norm": "bn", "lr": 0.1},
        "attempts": 0,
        "schema_version": SCHEMA_VERSION,
    }
    store.upsert_run(
        "a1",
        {"status": "running", "attempts": 1, "started_at": "2024-05-01T10:00:00+00:00"},
    )
    store.upsert_run("a1", {"config": {"norm": "ln"}, "error": None})
    assert store.get_run("a1") == {
        "_id": "a1",
        "status": "running",
        "config": {"norm": "ln"},  # $set replaces the whole top-level value
        "attempts": 1,
        "started_at": "2024-05-01T10:00:00+00:00",
        "error": None,
        "schema_version": SCHEMA_VERSION,
    }


def test_upsert_with_no_fields_creates_a_bare_run(store: ResultStore) -> None:
    store.upsert_run("bare", {})
    assert store.get_run("bare") == {"_id": "bare", "schema_version": SCHEMA_VERSION}


def test_study_is_added_as_a_set(store: ResultStore) -> None:
    store.upsert_run("r", {"status": "pending"}, study="norm-vs-batch")
    store.upsert_run("r", {"status": "running"}, study="norm-vs-batch")
    store.upsert_run("r", {}, study="optim")
    store.upsert_run("r", {"status": "completed"})
    assert store.get_run("r")["study"] == ["norm-vs-batch", "optim"]
    store.upsert_run("r", {"study": ["solo"]}, study="extra")
    assert store.get_run("r")["study"] == ["solo", "extra"]
    store.upsert_run("r", {"study": ["solo", "extra"]}, study="solo")
    assert store.get_run("r")["study"] == ["solo", "extra"]


@pytest.mark.parametrize(
    ("run_id", "fields", "study", "fragment"),
    [
        ("r", {"status": "done"}, None, "'status'"),
        ("r", {"attempts": "3"}, None, "'attempts'"),
        ("r", {"attempts": True}, None, "'attempts'"),
        ("r", {"config": [1, 2]}, None, "'config'"),
        ("r", {"study": "not-a-list"}, None, "'study'"),
        ("r", {"study": [1]}, None, "'study'"),
        ("r", {"error": 3}, None, "'error'"),
        ("r", {"_id": "other"}, None, "'_id'"),
        ("", {}, None, "run id"),
        ("r", {}, "", "study name"),
        ("r", ["status"], None, "mapping"),
    ],
)
def test_invalid_run_writes_are_refused_and_leave_nothing(
    store: ResultStore, run_id: str, fields: dict, study: str | None, fragment: str
) -> None:
    with pytest.raises(StoreError) as info:
        store.upsert_run(run_id, fields, study=study)
    assert fragment in str(info.value)
    assert store.count_runs() == 0


def test_status_error_lists_allowed_values(store: ResultStore) -> None:
    with pytest.raises(StoreError) as info:
        store.upsert_run("r", {"status": "finished"})
    for status in RUN_STATUSES:
        assert status in str(info.value)


def test_schema_version_is_always_set_by_the_store(store: ResultStore) -> None:
    store.upsert_run("r", {"schema_version": 99})
    assert store.get_run("r")["schema_version"] == SCHEMA_VERSION


# --------------------------------------------------------------------------- queries


def _seed(store: ResultStore) -> None:
    rows = [
        (
            "c",
            {
                "status": "completed",
                "config": {"norm": "bn", "batch_size": 64},
                "summary": {"acc": 0.7},
            },
            "s1",
        ),
        (
            "a",
            {
                "status": "failed",
                "config": {"norm": "ln", "batch_size": 128},
                "summary": {"acc": 0.2},
            },
            "s1",
        ),
        (
            "b",
            {
                "status": "completed",
                "config": {"norm": "bn", "batch_size": 256},
                "summary": {"acc": 0.9},
            },
            "s2",
        ),
        ("d", {"status": "running", "config": {"norm": "gn", "batch_size": "32"}}, None),
        (
            "e",
            {
                "status": "completed",
                "config": {"norm": "ln", "batch_size": 64},
                "summary": {"acc": 0.7},
            },
            "s2",
        ),
    ]
    for run_id, fields, study in rows:
        store.upsert_run(run_id, fields, study=study)
    store.upsert_run("e", {}, study="s1")


def test_find_runs_supports_every_operator(store: ResultStore) -> None:
    _seed(store)
    cases = [
        ({"status": "completed"}, ["c", "b", "e"]),
        ({"status": {"$eq": "failed"}}, ["a"]),
        ({"status": {"$ne": "completed"}}, ["a", "d"]),
        ({"config.batch_size": {"$gt": 64}}, ["a", "b"]),
        ({"config.batch_size": {"$gte": 64}}, ["c", "a", "b", "e"]),
        ({"config.batch_size": {"$lt": 128}}, ["c", "e"]),
        ({"config.batch_size": {"$lte": 128}}, ["c", "a", "e"]),
        ({"config.batch_size": {"$lte": "4"}}, ["d"]),
        ({"config.norm": {"$in": ["bn", "gn"]}}, ["c", "b", "d"]),
        ({"config.norm": {"$nin": ["bn", "gn"]}}, ["a", "e"]),
        ({"summary": {"$exists": False}}, ["d"]),
        ({"summary.acc": {"$exists": True}}, ["c", "a", "b", "e"]),
        ({"summary.acc": None}, ["d"]),
        ({"summary.acc": {"$ne": 0.7}}, ["a", "b", "d"]),
        ({"study": "s1"}, ["c", "a", "e"]),
        ({"study": {"$in": ["s2"]}}, ["b", "e"]),
        ({"study": {"$nin": ["s1"]}}, ["b", "d"]),
        ({"study": {"$exists": False}}, ["d"]),
        ({"$or": [{"config.norm": "gn"}, {"summary.acc": {"$gte": 0.9}}]}, ["b", "d"]),
        (
            {"$and": [{"study": "s1"}, {"$or": [{"status": "failed"}, {"config.norm": "ln"}]}]},
            ["a", "e"],
        ),
        ({"status": "completed", "config.batch_size": 64}, ["c", "e"]),
    ]
    for filter, expected in cases:
        assert _ids(store.find_runs(filter)) == expected, filter
        assert store.count_runs(filter) == len(expected), filter


def test_sort_limit_and_count(store: ResultStore) -> None:
    _seed(store)
    assert _ids(store.find_runs()) == ["c", "a", "b", "d", "e"]  # insertion order
    assert _ids(store.find_runs(sort=[("summary.acc", -1)])) == ["b", "c", "e", "a", "d"]
    assert _ids(store.find_runs(sort=[("summary.acc", 1)])) == ["d", "a", "c", "e", "b"]
    assert _ids(store.find_runs(sort=[("status", 1), ("config.batch_size", -1)])) == [
        "b",
        "c",
        "e",
        "a",
        "d",
    ]
    assert _ids(store.find_runs(sort=[("config.batch_size", 1)])) == ["c", "e", "a", "b", "d"]
    assert _ids(store.find_runs({"status": "completed"}, sort=[("_id", -1)], limit=2)) == ["e", "c"]
    assert _ids(store.find_runs(limit=1)) == ["c"]
    assert store.find_runs({"status": "diverged"}) == []
    assert store.count_runs() == 5
    assert store.count_runs({"study": "s2"}) == 2


def test_invalid_queries_raise_query_error(store: ResultStore) -> None:
    _seed(store)
    for bad in ({"$where": "this.a == 1"}, {"status": {"$regex": "^c"}}, {"a..b": 1}):
        with pytest.raises(QueryError):
            store.find_runs(bad)
        with pytest.raises(QueryError):
            store.count_runs(bad)
    assert store.count_runs() == 5


# --------------------------------------------------------------------------- metrics


def test_metrics_replay_replaces_instead_of_duplicating(store: ResultStore) -> None:
    first = [{"run_id": "r", "epoch": e, "loss": 1.0 / (e + 1), "acc": 0.1 * e} for e in range(5)]
    store.upsert_metrics(first)
    store.upsert_metrics(
        [{"run_id": "r", "epoch": 3, "loss": 0.01}, {"run_id": "r", "epoch": 4, "loss": 0.02}]
    )
    store.upsert_metrics(first[:2])  # a replayed write
    got = store.get_metrics("r")
    assert [m["epoch"] for m in got] == [0, 1, 2, 3, 4]
    assert got[3] == {"run_id": "r", "epoch": 3, "loss": 0.01}
    assert got[0] == first[0]
    assert all("_id" not in m for m in got)
    assert store.info()["metrics"] == 5


def test_metrics_are_sorted_and_duplicates_in_a_batch_keep_the_last(store: ResultStore) -> None:
    store.upsert_metrics(
        [
            {"run_id": "r", "epoch": 2, "loss": 2.0},
            {"run_id": "r", "epoch": 0, "loss": 0.0},
            {"run_id": "r", "epoch": 2, "loss": 2.5},
            {"run_id": "r", "epoch": 1, "loss": 1.0},
        ]
    )
    assert [(m["epoch"], m["loss"]) for m in store.get_metrics("r")] == [
        (0, 0.0),
        (1, 1.0),
        (2, 2.5),
    ]
    store.upsert_metrics([])
    assert store.get_metrics("missing") == []


def test_find_metrics_orders_by_run_then_epoch_for_many_ids(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small IN-list chunks so a few hundred ids cross many chunk boundaries.
    monkeypatch.setattr(bench.store.embedded, "_IN_CHUNK", 64)
    monkeypatch.setattr(bench.store.mongo, "_IN_CHUNK", 64)
    ids = [f"run{i:04d}" for i in range(300)]
    store.upsert_metrics(
        [
            {"run_id": r, "epoch": e, "loss": float(i)}
            for i, r in enumerate(reversed(ids))
            for e in (1, 0)
        ]
    )
    wanted = ids[::-1] + ids[:3] + ["unknown"]
    got = store.find_metrics(wanted)
    assert [(m["run_id"], m["epoch"]) for m in got] == [(r, e) for r in ids for e in (0, 1)]
    assert store.find_metrics([]) == []
    assert [m["epoch"] for m in store.find_metrics(["run0007"])] == [0, 1]


@pytest.mark.parametrize(
    "doc",
    [
        {"epoch": 1},
        {"run_id": "", "epoch": 1},
        {"run_id": 5, "epoch": 1},
        {"run_id": "r"},
        {"run_id": "r", "epoch": "1"},
        {"run_id": "r", "epoch": 1.5},
        {"run_id": "r", "epoch": True},
    ],
)
def test_metrics_need_run_id_and_integer_epoch(store: ResultStore, doc: dict) -> None:
    with pytest.raises(StoreError, match=r"run_id|epoch"):
        store.upsert_metrics([{"run_id": "ok", "epoch": 0}, doc])
    assert store.get_metrics("ok") == []  # the batch is refused as a whole


def test_metrics_accept_numpy_epochs(store: ResultStore) -> None:
    store.upsert_metrics([{"run_id": "r", "epoch": np.int64(3), "loss": np.float32(0.5)}])
    assert store.get_metrics("r") == [{"run_id": "r", "epoch": 3, "loss": 0.5}]


# --------------------------------------------------------------------------- studies, info


def test_studies_upsert_with_set_semantics(store: ResultStore) -> None:
    assert store.get_study("norm-vs-batch") is None
    store.save_study(
        "norm-vs-batch", {"spec": {"grid": {"norm": ["bn", "ln"]}}, "created_at": "t0"}
    )
    store.save_study("norm-vs-batch", {"updated_at": "t1"})
    store.save_study("alpha", {})
    store.save_study("alpha", {})
    assert store.get_study("norm-vs-batch") == {
        "_id": "norm-vs-batch",
        "spec": {"grid": {"norm": ["bn", "ln"]}},
        "created_at": "t0",
        "updated_at": "t1",
    }
    assert [s["_id"] for s in store.list_studies()] == ["alpha", "norm-vs-batch"]
    assert store.get_study("alpha") == {"_id": "alpha"}
    with pytest.raises(StoreError):
        store.save_study("", {})
    with pytest.raises(StoreError):
        store.save_study("x", {"_id": "y"})


def test_info_counts_documents_and_statuses(store: ResultStore) -> None:
    _seed(store)
    store.upsert_run("no-status", {})
    store.upsert_metrics([{"run_id": "a", "epoch": 0}, {"run_id": "a", "epoch": 1}])
    store.save_study("s1", {"spec": {}})
    info = store.info()
    assert info["kind"] == store.kind and info["location"] == store.location
    assert (info["runs"], info["metrics"], info["studies"]) == (6, 2, 1)
    assert info["status_counts"] == {"completed": 3, "failed": 1, "running": 1}
    if store.kind == "embedded":
        assert info["size_bytes"] > 0
    json.dumps(info)


# --------------------------------------------------------------------------- sanitize


def test_every_written_document_is_sanitized(store: ResultStore) -> None:
    store.upsert_run(
        "r",
        {
            "config": {"lr": np.float64(0.1), "$where": 1, "a.b": 2, "sizes": np.array([1, 2])},
            "summary": {"loss": math.nan, "best": math.inf, "worst": -math.inf, "ok": 0.5},
            "env": {
                "when": dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc),
                "dir": Path("/x"),
            },
            "note": "bad \ud800 text",
        },
    )
    assert store.get_run("r") == {
        "_id": "r",
        "config": {"lr": 0.1, "_where": 1, "a_b": 2, "sizes": [1, 2]},
        "summary": {"loss": None, "best": None, "worst": None, "ok": 0.5},
        "env": {"when": "2024-05-01T12:00:00+00:00", "dir": "/x"},
        "note": "bad ? text",
        "schema_version": SCHEMA_VERSION,
    }
    store.upsert_metrics([{"run_id": "r", "epoch": 0, "val.loss": math.nan, "$x": (1, 2)}])
    assert store.get_metrics("r") == [{"run_id": "r", "epoch": 0, "val_loss": None, "_x": [1, 2]}]
    store.save_study("s", {"grid": {"lr.max": {3, 1, 2}}, "bad": math.nan})
    assert store.get_study("s") == {"_id": "s", "grid": {"lr_max": [1, 2, 3]}, "bad": None}
    assert store.count_runs({"summary.loss": None}) == 1


def test_documents_round_trip_identically_across_backends(
    tmp_path: Path, store_factory: Any
) -> None:
    stores = [store_factory.make("embedded", tmp_path), store_factory.make("mongomock", tmp_path)]
    try:
        for s in stores:
            s.upsert_run(
                "0f3a",
                {
                    "status": "completed",
                    "config": {"norm": "bn", "batch_size": 128, "lr": 0.1, "milestones": [30, 60]},
                    "attempts": 2,
                    "started_at": "2024-05-01T10:00:00+00:00",
                    "finished_at": "2024-05-01T11:00:00+00:00",
                    "heartbeat_at": "2024-05-01T10:59:00+00:00",
                    "env": {"torch": "2.4.0", "cuda": None, "gpus": ["H100"]},
                    "summary": {"final_val_acc": 0.9375, "curve": [0.1, 0.5, 1e-300, -0.0]},
                    "error": None,
                    "unicode": "σ-norm ✓ \u0000 end",
                },
                study="norm-vs-batch",
            )
            s.upsert_run("0f3a", {}, study="norm-vs-batch")
            s.upsert_run("1b2c", {"status": "failed", "error": "boom"}, study="other")
            s.upsert_metrics(
                [
                    {"run_id": "0f3a", "epoch": e, "loss": 1 / (e + 1), "lr": [0.1, 0.01]}
                    for e in range(3)
                ]
            )
            s.save_study("norm-vs-batch", {"spec": {"repeats": 3}, "created_at": "2024-05-01"})
        embedded, mongo = (
            {
                "runs": s.find_runs(),
                "metrics": s.find_metrics(["0f3a", "1b2c"]),
                "studies": s.list_studies(),
                "run": s.get_run("0f3a"),
            }
            for s in stores
        )
        assert embedded == mongo
        assert json.dumps(embedded, sort_keys=True) == json.dumps(mongo, sort_keys=True)
        assert embedded["run"]["study"] == ["norm-vs-batch"]
    finally:
        for s in stores:
            s.close()


class _FakeTensor:
    """Quacks like a torch tensor: ``item()`` for scalars, ``tolist()`` for the rest."""

    def __init__(self, value: object):
        self.value = value

    def tolist(self) -> object:
        return self.value


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_sanitize_handles_any_input() -> None:
    cyclic: list = [1]
    cyclic.append(cyclic)
    deep: dict = {}
    node = deep
    for _ in range(200):
        node["x"] = {}
        node = node["x"]
    samples = [
        cyclic,
        deep,
        _Unprintable(),
        {_Unprintable(): 1},
        {1: "a", None: "b", ("t",): "c"},
        {"a.b": 1, "a_b": 2, "$c": 3, "\x00": 4},
        {1, "a", None},
        frozenset({2.5, 1}),
        "\ud800 lone surrogate",
        b"\xff\x00",
        2**70,
        10**400,
        np.array([[1.5, np.nan], [np.inf, 2]]),
        np.bool_(True),
        _FakeTensor(3),
        dt.date(2024, 1, 2),
        dt.time(3, 4),
        object(),
    ]
    for sample in samples:
        result = sanitize(sample)
        json.dumps(result, allow_nan=False)
    assert sanitize({"a.b": 1, "a_b": 2, "$c": 3}) == {"a_b": 1, "a_b_2": 2, "_c": 3}
    assert sanitize({1, 3, 2}) == [1, 2, 3]
    assert sanitize((1, (2, math.nan))) == [1, [2, None]]
    assert sanitize(np.array([[1.5, np.nan]])) == [[1.5, None]]
    assert sanitize(np.float32(0.25)) == 0.25 and type(sanitize(np.int64(3))) is int
    assert sanitize(np.bool_(False)) is False
    assert sanitize(_FakeTensor([1.0, math.inf])) == [1.0, None]
    assert sanitize(2**70) == float(2**70)
    assert sanitize(Path("a/b")) == "a/b"
    assert sanitize(dt.datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02T03:04:05"
    assert sanitize("\ud800x") == "?x"
    assert sanitize({"k": "\udcff", "ok": "é"}) == {"k": "?", "ok": "é"}
    assert isinstance(sanitize(_Unprintable()), str)
    original = {"k.k": [math.nan]}
    sanitize(original)
    assert "k.k" in original and math.isnan(original["k.k"][0])  # input untouched


# --------------------------------------------------------------------------- URIs, opening


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("mongodb://user:secret@host:27017/bench", "mongodb://user:***@host:27017/bench"),
        (
            "mongodb+srv://u:p%40ss@cluster.example.net/db?retryWrites=true",
            "mongodb+srv://u:***@cluster.example.net/db?retryWrites=true",
        ),
        ("mongodb://user:pa@ss/w@h1,h2/db", "mongodb://user:***@h1,h2/db"),
        ("mongodb://host:27017/bench", "mongodb://host:27017/bench"),
        ("mongodb://user@host/bench", "mongodb://user@host/bench"),
        (
            "mongodb://h/?tlsCertificateKeyFilePassword=pw&w=1",
            "mongodb://h/?tlsCertificateKeyFilePassword=***&w=1",
        ),
        (".bench/results.sqlite", ".bench/results.sqlite"),
    ],
)
def test_mask_uri(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked


def test_database_from_uri() -> None:
    assert database_from_uri("mongodb://u:p@h:1/results?authSource=admin") == "results"
    assert database_from_uri("mongodb://h:1/") is None
    assert database_from_uri("mongodb+srv://u:p/x@h") is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: MongoStore("mongodb://user:secret@127.0.0.1:1/?serverSelectionTimeoutMS=500"),
        lambda: MongoStore("mongodb://user:secret@127.0.0.1:1/bench", timeout_ms=300),
        lambda: open_store(
            "mongodb://bench:secret@127.0.0.1:1/db?connectTimeoutMS=300&serverSelectionTimeoutMS=300"
        ),
    ],
)
def test_unreachable_mongodb_fails_fast_without_leaking_the_password(make) -> None:
    start = time.monotonic()
    with pytest.raises(StoreError) as info:
        make()
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "***" in message and "secret" not in message
    assert "Could not reach the MongoDB server" in message
    assert "BENCH_MONGO_URI" in message and "embedded store" in message
    assert isinstance(info.value, BenchError)


def test_open_store_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BENCH_STORE", raising=False)
    monkeypatch.delenv("BENCH_MONGO_URI", raising=False)
    with open_store() as default:
        assert isinstance(default, EmbeddedStore)
        assert Path(default.location) == tmp_path / ".bench" / "results.sqlite"
    monkeypatch.setenv("BENCH_STORE", str(tmp_path / "env" / "r.sqlite"))
    with open_store() as from_env:
        assert Path(from_env.location) == tmp_path / "env" / "r.sqlite"
    with open_store("sqlite:///rel/x.sqlite") as relative:
        assert Path(relative.location) == tmp_path / "rel" / "x.sqlite"
    with open_store(f"sqlite:///{tmp_path}/abs.sqlite") as absolute:
        assert Path(absolute.location) == tmp_path / "abs.sqlite"
    with open_store(tmp_path / "pathlike.sqlite") as pathlike:
        assert pathlike.kind == "embedded"
    monkeypatch.setenv(
        "BENCH_MONGO_URI", "mongodb://u:secret@127.0.0.1:1/?serverSelectionTimeoutMS=300"
    )
    with pytest.raises(StoreError, match=re.escape("u:***@127.0.0.1:1")):
        open_store()  # BENCH_MONGO_URI wins over BENCH_STORE
    for bad in ("postgres://u:pw@h/db", "sqlite://", "  "):
        with pytest.raises(StoreError) as info:
            open_store(bad)
        assert "pw" not in str(info.value)


def test_mongo_database_name_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    client = mongomock.MongoClient()
    monkeypatch.setenv("BENCH_MONGO_DB", "from_env")
    assert MongoStore(client=client).database == "from_env"
    assert MongoStore(client=client, database="explicit").database == "explicit"
    monkeypatch.delenv("BENCH_MONGO_DB")
    assert MongoStore(client=client).database == "bench"


def test_mongo_store_creates_the_collections_and_indexes_of_mongo_init_js() -> None:
    script = (REPO / "store" / "mongo-init.js").read_text()
    block = re.search(
        r"// BEGIN COLLECTIONS\nconst COLLECTIONS = (.*?);\n// END COLLECTIONS", script, re.S
    )
    assert block, "mongo-init.js lost its COLLECTIONS block"
    assert json.loads(block.group(1)) == COLLECTIONS
    assert 'process.env.BENCH_MONGO_DB) || "bench"' in script
    store = MongoStore(client=mongomock.MongoClient(), database="idx")
    for name, spec in COLLECTIONS.items():
        indexes = store.db[name].index_information()
        for index in spec["indexes"]:
            assert indexes[index["name"]]["key"] == list(index["key"].items())
            assert bool(indexes[index["name"]].get("unique")) == bool(index.get("unique"))
    MongoStore(client=store.client, database="idx")  # creating again is a no-op


# --------------------------------------------------------------------------- embedded file


def _writer(path: str, name: str, barrier) -> None:  # runs in a child process
    store = EmbeddedStore(path)
    barrier.wait(timeout=30)
    for i in range(200):
        store.upsert_run(f"{name}-{i:03d}", {"status": "completed", "config": {"i": i}}, study=name)
        if i < 50:
            store.upsert_run(f"shared-{i:02d}", {f"seen_by_{name}": i}, study=name)
    store.close()


def test_embedded_file_shared_by_two_writing_processes_loses_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    EmbeddedStore(path).close()
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, name, barrier)) for name in ("p1", "p2")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    with EmbeddedStore(path) as store:
        assert store.count_runs() == 450
        assert store.count_runs({"study": "p1"}) == 250
        assert store.count_runs({"study": "p2"}) == 250
        shared = store.find_runs({"_id": {"$in": [f"shared-{i:02d}" for i in range(50)]}})
        assert len(shared) == 50
        for doc in shared:
            assert sorted(doc["study"]) == ["p1", "p2"]
            assert doc["seen_by_p1"] == doc["seen_by_p2"] == int(doc["_id"][-2:])


def _opener(path: str, barrier, errors) -> None:  # runs in a child process
    barrier.wait(timeout=30)
    try:
        EmbeddedStore(path).close()
    except StoreError as exc:
        errors.put(str(exc))


def test_a_new_embedded_file_opened_by_several_processes_at_once_opens_in_each(tmp_path: Path) -> None:
    """Two grids started at once on a store that does not exist yet: while one process
    switches the new file to WAL, SQLite answers the other's switch "database is locked" at
    once, past its busy handler (1 round in 4 failed so, before the store waited on it)."""
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    errors = ctx.Queue()
    for round_ in range(20):
        path = str(tmp_path / f"new-{round_}.sqlite")
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_opener, args=(path, barrier, errors)) for _ in range(4)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=60)
        assert [proc.exitcode for proc in procs] == [0] * 4
        assert errors.empty(), errors.get()
        with EmbeddedStore(path) as store:
            assert store.count_runs() == 0


class _LockedAtFirst:
    """A connection whose journal-mode switch is refused as locked ``times`` times."""

    def __init__(self, times: int, message: str = "database is locked") -> None:
        self.times, self.message, self.calls = times, message, 0

    def execute(self, sql: str):
        self.calls += 1
        if self.calls <= self.times:
            raise sqlite3.OperationalError(self.message)
        return self

    def fetchone(self) -> tuple[str]:
        return ("wal",)


def test_the_switch_to_wal_waits_on_a_lock_up_to_the_busy_timeout(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "w.sqlite", busy_timeout=5)
    conn = _LockedAtFirst(3)
    assert store._enter_wal(conn) == "wal" and conn.calls == 4
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        store._enter_wal(_LockedAtFirst(1, "disk I/O error"))  # not a lock: raised at once
    store.busy_timeout = 0.05
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store._enter_wal(_LockedAtFirst(10**9))  # held past the busy timeout
    store.close()


def test_embedded_store_is_usable_from_several_threads(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "t.sqlite")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                store.upsert_run(f"t{n}-{i}", {"status": "running"}, study="threads")
                store.upsert_metrics([{"run_id": f"t{n}-{i}", "epoch": 0, "loss": 1.0}])
                store.count_runs({"study": "threads"})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.count_runs({"study": "threads"}) == 200
    assert store.info()["metrics"] == 200
    store.close()


def test_embedded_file_uses_wal_and_indexes(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    EmbeddedStore(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == FILE_VERSION
        indexes = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert {"runs_status", "runs_config_norm", "runs_config_batch_size"} <= indexes
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT doc FROM runs WHERE json_extract(doc, '$.status') = ?",
            ("x",),
        ).fetchall()
        assert "runs_status" in str(plan)
    finally:
        conn.close()


def test_embedded_refuses_foreign_or_newer_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a usable bench result store"):
        EmbeddedStore(junk)
    newer = tmp_path / "newer.sqlite"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {FILE_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        EmbeddedStore(newer)
    with pytest.raises(StoreError, match="directory"):
        EmbeddedStore(tmp_path)


def test_closed_store_refuses_work(store: ResultStore) -> None:
    store.upsert_run("r", {})
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get_run("r")
    store.close()  # closing twice is harmless


def test_on_insert_fields_are_set_only_when_the_write_creates_the_run(store: Any) -> None:
    store.upsert_run("new", {"config": {"norm": "gn"}}, study="s", on_insert={"status": "pending"})
    store.upsert_run("old", {"status": "completed"})
    store.upsert_run("old", {"config": {"norm": "bn"}}, study="s", on_insert={"status": "pending"})
    store.upsert_run("both", {"status": "running"}, on_insert={"status": "pending", "attempts": 0})
    assert store.get_run("new")["status"] == "pending" and store.get_run("new")["study"] == ["s"]
    assert store.get_run("old")["status"] == "completed" and store.get_run("old")["config"] == {"norm": "bn"}
    assert (store.get_run("both")["status"], store.get_run("both")["attempts"]) == ("running", 0)
    with pytest.raises(StoreError, match="on_insert cannot set 'study'"):
        store.upsert_run("x", {}, on_insert={"study": ["s"]})
    with pytest.raises(StoreError, match="status"):
        store.upsert_run("x", {}, on_insert={"status": "queued"})
    assert store.get_run("x") is None

"""Bad data never breaks a write: oversized documents are cut predictably, values are
sanitized, and credentials never reach a stored document."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.errors import StoreError
from bench.grid import Recorder
from bench.store import ResultStore
from bench.store.size import MAX_DOCUMENT_BYTES, bson_size, fit
from bench.trial import TrialResult

MONGO_LIMIT = 16 * 1024 * 1024


def test_a_huge_run_document_is_cut_below_the_limit(store: ResultStore) -> None:
    traceback = "Traceback (most recent call last):\n" + "  frame\n" * 400_000 + "RuntimeError: out of memory\n"
    store.upsert_run(
        "r",
        {
            "status": "failed",
            "error": traceback,
            "summary": {"final_val_acc": 0.5, "curve": [0.1] * 300_000, "note": "kept"},
            "config": {"norm": "gn"},
        },
        study="s",
    )
    run = store.get_run("r")
    assert bson_size(run) <= MAX_DOCUMENT_BYTES < MONGO_LIMIT
    assert run["status"] == "failed" and run["study"] == ["s"] and run["config"] == {"norm": "gn"}
    assert run["error"].startswith("Traceback") and run["error"].endswith("RuntimeError: out of memory\n")
    assert "characters, cut to fit the document size limit" in run["error"]
    assert run["summary"]["final_val_acc"] == 0.5 and run["summary"]["note"] == "kept"
    assert run["summary"]["curve"][0] == 0.1 and "more items cut" in run["summary"]["curve"][-1]


def test_every_write_is_capped_so_a_run_never_reaches_16_mb(store: ResultStore) -> None:
    blob = "z" * (6 * 1024 * 1024)
    store.upsert_run("r", {"config": {"blob": blob}})
    store.upsert_run("r", {"env": {"blob": blob}})
    store.upsert_run("r", {"summary": {"blob": blob}, "error": blob})
    assert bson_size(store.get_run("r")) < MONGO_LIMIT
    store.upsert_metrics([{"run_id": "r", "epoch": 1, "val_acc": 0.5, "per_class": list(range(300_000))}])
    (metric,) = store.get_metrics("r")
    assert bson_size(metric) <= MAX_DOCUMENT_BYTES and metric["epoch"] == 1 and metric["val_acc"] == 0.5
    store.save_study("s", {"trial_ids": [f"{i:016x}" for i in range(100_000)]})
    assert bson_size(store.get_study("s")) <= MAX_DOCUMENT_BYTES


def test_cutting_is_deterministic_and_small_documents_are_untouched() -> None:
    small = {"_id": "r", "summary": {"acc": 0.5}}
    assert fit(small, 1024) is small
    big = {"_id": "r", "a": "x" * 5000, "b": list(range(2000)), "c": {"d": "y" * 5000, "e": 1}, "f": 2}
    first, second = fit(big, 4096), fit(big, 4096)
    assert first == second and bson_size(first) <= 4096
    assert first["_id"] == "r" and first["f"] == 2 and first["c"]["e"] == 1
    assert (type(first["a"]), type(first["b"]), type(first["c"])) == (str, list, dict)
    with pytest.raises(StoreError, match="too large"):
        fit({"_id": "x" * 5000, "a": 1}, 1024)


def test_a_long_run_id_is_refused_with_a_clear_message(store: ResultStore) -> None:
    with pytest.raises(StoreError, match="at most 512 characters"):
        store.upsert_run("r" * 600, {})


class _Weird:
    def __repr__(self) -> str:
        return "<weird>"


def test_a_trial_with_unencodable_results_is_recorded_not_crashed(store: ResultStore) -> None:
    recorder = Recorder(store, "s", 1)
    assert recorder.started("t")
    recorder.epoch("t", {"epoch": 1, "val.acc": np.float32(0.5), "loss": math.inf, "$bad": _Weird(), "obj": {1: {2, 3}}})
    result = TrialResult(
        status="completed",
        summary={"final_val_acc": np.float64(0.75), "loss": math.nan, "weights": np.zeros(300_000), "a.b": Path("/x")},
        env={"host": "h", "device": _Weird()},
    )
    recorder.finished("t", result)
    run = store.get_run("t")
    assert run["status"] == "completed" and run["summary"]["final_val_acc"] == 0.75 and run["summary"]["loss"] is None
    assert run["summary"]["a_b"] == "/x" and run["env"]["device"] == "<weird>"
    assert "more items cut" in run["summary"]["weights"][-1] and bson_size(run) < MONGO_LIMIT
    assert store.get_metrics("t") == [{"run_id": "t", "epoch": 1, "val_acc": 0.5, "loss": None, "_bad": "<weird>", "obj": {"1": [2, 3]}}]


@pytest.mark.parametrize(
    "text",
    [
        "pymongo.errors.OperationFailure at mongodb://alice:s3cret@db.example.org:27017/bench",
        "connect mongodb+srv://alice:s3cret@cluster0.example.net/?retryWrites=true failed",
        "redis://:s3cret@cache:6379/0 and postgres://bob:s3cret@pg/db",
    ],
)
def test_credentials_never_reach_stored_documents(store: ResultStore, text: str) -> None:
    store.upsert_run("r", {"status": "failed", "error": text, "env": {"notes": [text]}})
    store.save_study("s", {"command": f"bench grid s --note '{text}'"})
    store.update_runs({"_id": "r"}, {"summary": {"log": text}})
    stored = f"{store.get_run('r')}{store.get_study('s')}"
    assert "s3cret" not in stored and "***@" in stored


def test_both_backends_cut_identically(tmp_path: Path, store_factory: Any) -> None:
    stores = [store_factory.make("embedded", tmp_path), store_factory.make("mongomock", tmp_path)]
    try:
        docs = []
        for s in stores:
            s.upsert_run("r", {"error": "é" * 1_500_000, "summary": {"xs": [[i, "v"] for i in range(100_000)]}})
            docs.append(s.get_run("r"))
        assert docs[0] == docs[1]
    finally:
        for s in stores:
            s.close()

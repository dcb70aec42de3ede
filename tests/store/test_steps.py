"""Per-step metrics in bucket documents, on every backend."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bench.errors import StoreError
from bench.store import STEPS_PER_BUCKET, ResultStore, steps_frame
from bench.store.size import MAX_STEP_BYTES, bson_size
from bench.store.steps import prepare_steps


def _step(run: str, step: int, **extra: Any) -> dict[str, Any]:
    return {"step": step, "loss": 1.0 / (step + 1), "acc": step / 10_000, "lr": 0.1, **extra}


def test_steps_round_trip_in_order_across_buckets(store: ResultStore) -> None:
    n = 2 * STEPS_PER_BUCKET + 500
    steps = [_step("a", s) for s in range(n)]
    store.upsert_steps("a", steps[::-1][: n // 2])  # out of order, in two calls
    store.upsert_steps("a", steps[::-1][n // 2 :])
    store.upsert_steps("b", [_step("b", 0, grad_norm=2.0, first_grad_norm=2.0)])
    got = store.find_steps(["b", "a", "missing"])
    assert [(r["run_id"], r["step"]) for r in got] == [("a", s) for s in range(n)] + [("b", 0)]
    assert got[7] == {"run_id": "a", **_step("a", 7)}
    info = store.info()
    if store.kind == "mongodb":
        assert info["step_buckets"] == 3 + 1  # a has three buckets, b one
    else:
        assert info["steps"] == n + 1  # one row per step
    assert store.find_steps([]) == []


def test_replayed_steps_replace_instead_of_duplicating(store: ResultStore) -> None:
    first = [_step("r", s) for s in range(10)]
    store.upsert_steps("r", first)
    store.upsert_steps("r", first)  # a replay
    store.upsert_steps("r", [{"step": 3, "loss": 0.5}])  # the step's record is replaced whole
    got = store.find_steps(["r"])
    assert [r["step"] for r in got] == list(range(10))
    assert got[3] == {"run_id": "r", "step": 3, "loss": 0.5}
    assert got[4] == {"run_id": "r", **first[4]}
    assert store.info()["step_buckets" if store.kind == "mongodb" else "steps"] == (1 if store.kind == "mongodb" else 10)


def test_steps_are_sanitized_and_a_large_step_is_cut(store: ResultStore) -> None:
    store.upsert_steps(
        "r",
        [
            {"step": np.int64(0), "loss": math.nan, "grad.norm": np.float32(0.5), "$x": object()},
            {"step": 1, "note": "x" * 1_000_000, "curve": list(range(100_000))},
        ],
    )
    zero, one = store.find_steps(["r"])
    assert zero["loss"] is None and zero["grad_norm"] == 0.5 and isinstance(zero["_x"], str)
    assert bson_size({k: v for k, v in one.items() if k not in ("run_id", "step")}) <= MAX_STEP_BYTES
    assert one["note"].startswith("xxx") and "cut to fit" in one["note"]
    assert one["curve"][:3] == [0, 1, 2] and "more items cut" in one["curve"][-1]


def test_a_full_bucket_stays_far_below_the_mongodb_limit() -> None:
    big = [{"step": s, "blob": "y" * 100_000} for s in range(STEPS_PER_BUCKET)]
    (bucket,) = prepare_steps("r", big).values()
    assert len(bucket) == STEPS_PER_BUCKET
    assert bson_size({"run_id": "r", "bucket": 0, "steps": bucket}) < 8 * 1024 * 1024


@pytest.mark.parametrize(
    ("steps", "fragment"),
    [
        ([{"loss": 1.0}], "'step'"),
        ([{"step": -1}], "'step'"),
        ([{"step": 1.5}], "'step'"),
        ([{"step": True}], "'step'"),
        ([{"step": 0, "run_id": "other"}], "'other'"),
        ({"step": 0}, "list"),
        (["step"], "mapping"),
    ],
)
def test_invalid_steps_are_refused_as_a_whole(store: ResultStore, steps: Any, fragment: str) -> None:
    with pytest.raises(StoreError) as info:
        store.upsert_steps("r", [{"step": 9, "loss": 1.0}, *steps] if isinstance(steps, list) else steps)
    assert fragment in str(info.value)
    assert store.find_steps(["r"]) == []
    with pytest.raises(StoreError):
        store.upsert_steps("", [{"step": 0}])


def test_steps_frame_columns_and_order(store: ResultStore) -> None:
    store.upsert_steps("b", [{"step": 1, "loss": 0.5, "lr": 0.1}, {"step": 0, "loss": 0.9, "lr": 0.1}])
    store.upsert_steps("a", [{"step": 0, "loss": 1.0, "grad_norm": 3.0, "first_grad_norm": 3.0, "acc": None}])
    frame = steps_frame(store.find_steps(["a", "b"]))
    assert list(frame.columns) == ["run_id", "step", "acc", "first_grad_norm", "grad_norm", "loss", "lr"]
    assert list(zip(frame["run_id"], frame["step"], strict=True)) == [("a", 0), ("b", 0), ("b", 1)]
    assert frame.loc[0, "grad_norm"] == 3.0 and pd.isna(frame.loc[1, "grad_norm"]) and pd.isna(frame.loc[0, "acc"])
    empty = steps_frame([])
    assert list(empty.columns) == ["run_id", "step"] and empty.empty


def test_backends_return_identical_steps(tmp_path: Path, store_factory: Any) -> None:
    stores = [store_factory.make("embedded", tmp_path), store_factory.make("mongomock", tmp_path)]
    try:
        results = []
        for s in stores:
            s.upsert_steps("r", [_step("r", i, extra={"k.v": [1, math.inf]}) for i in (1500, 3, 999, 1000)])
            s.upsert_steps("r", [_step("r", 3, acc=1.0)])
            results.append(s.find_steps(["r"]))
        assert results[0] == results[1]
        assert [r["step"] for r in results[0]] == [3, 999, 1000, 1500]
    finally:
        for s in stores:
            s.close()

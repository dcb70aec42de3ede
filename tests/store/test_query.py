"""The filter subset: same answers on every backend, safe refusals, no injection."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.errors import QueryError
from bench.store import ResultStore, validate_filter
from bench.store.query import SUPPORTED_OPERATORS, compile_filter, compile_sort, validate_sort

NOTE = 'O\'Brien "quoted" --; DROP TABLE runs'

RUNS: dict[str, tuple[dict, list[str]]] = {
    "r1": (
        {
            "status": "completed",
            "config": {
                "norm": "bn",
                "batch_size": 128,
                "lr": 0.1,
                "optimizer": "sgd",
                "milestones": [30, 60],
                "pretrained": False,
            },
            "summary": {"final_val_acc": 0.91, "best_epoch": 10},
        },
        ["norm-vs-batch"],
    ),
    "r2": (
        {
            "status": "failed",
            "config": {"norm": "ln", "batch_size": 32, "lr": 0.01, "optimizer": "adam"},
            "summary": {"final_val_acc": 0.85},
            "error": "diverged at epoch 3",
        },
        ["norm-vs-batch", "optim"],
    ),
    "r3": (
        {
            "status": "completed",
            "config": {"norm": "gn", "batch_size": 256, "lr": 1, "optimizer": "sgd"},
            "summary": {"final_val_acc": None},
        },
        ["optim"],
    ),
    "r4": (
        {
            "status": "running",
            "config": {"norm": "none", "batch_size": "64", "optimizer": "sgd"},
            "summary": {},
        },
        [],
    ),
    "r5": (
        {
            "status": "diverged",
            "config": {
                "norm": "bn",
                "batch_size": 64,
                "lr": 0.1,
                "optimizer": "adamw",
                "augment": {"cutout": True, "mixup": 0.2},
            },
            "summary": {
                "final_val_acc": 0.5,
                "losses": [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}, {"epoch": 3}],
            },
        },
        ["norm-vs-batch"],
    ),
    "r6": (
        {
            "status": "pending",
            "config": {"norm": "bn", "batch_size": 128.0, "optimizer": "sgd", "pretrained": True},
        },
        [],
    ),
    "r7": (
        {
            "status": "completed",
            "config": {
                "norm": "ln",
                "batch_size": 128,
                "lr": 0.001,
                "optimizer": "sgd",
                "milestones": [],
            },
            "summary": {"final_val_acc": 0.93, "ranks": [3, 1, 2]},
            "note": NOTE,
        },
        [],
    ),
}
ALL = sorted(RUNS)

# (filter, ids MongoDB returns), checked on every backend.
CASES: list[tuple[dict | None, list[str]]] = [
    (None, ALL),
    ({}, ALL),
    ({"status": "completed"}, ["r1", "r3", "r7"]),
    ({"status": {"$eq": "failed"}}, ["r2"]),
    ({"_id": "r3"}, ["r3"]),
    ({"_id": {"$in": ["r1", "r9"]}}, ["r1"]),
    ({"config.norm": "bn"}, ["r1", "r5", "r6"]),
    # array membership
    ({"study": "norm-vs-batch"}, ["r1", "r2", "r5"]),
    ({"study": {"$in": ["optim", "other"]}}, ["r2", "r3"]),
    ({"study": {"$nin": ["norm-vs-batch"]}}, ["r3", "r4", "r6", "r7"]),
    ({"study": {"$ne": "optim"}}, ["r1", "r4", "r5", "r6", "r7"]),
    ({"study": {"$exists": False}}, ["r4", "r6", "r7"]),
    ({"study": None}, ["r4", "r6", "r7"]),
    ({"config.milestones": 60}, ["r1"]),
    ({"config.milestones": {"$gt": 40}}, ["r1"]),
    ({"config.milestones": {"$exists": True}}, ["r1", "r7"]),
    ({"config.milestones.0": 30}, ["r1"]),
    ({"summary.ranks": {"$lt": 2}}, ["r7"]),
    # numbers compare with numbers only (int and float alike), strings with strings
    ({"config.batch_size": 128}, ["r1", "r6", "r7"]),
    ({"config.batch_size": 64}, ["r5"]),
    ({"config.batch_size": "64"}, ["r4"]),
    ({"config.batch_size": {"$gte": 128}}, ["r1", "r3", "r6", "r7"]),
    ({"config.batch_size": {"$lt": "7"}}, ["r4"]),
    ({"config.batch_size": {"$gt": 32, "$lt": 256}}, ["r1", "r5", "r6", "r7"]),
    ({"config.batch_size": {"$in": [32, "64"]}}, ["r2", "r4"]),
    ({"config.lr": 1.0}, ["r3"]),
    ({"config.lr": {"$lte": 0.01}}, ["r2", "r7"]),
    ({"config.lr": {"$ne": 0.1}}, ["r2", "r3", "r4", "r6", "r7"]),
    ({"config.lr": {"$exists": False}}, ["r4", "r6"]),
    ({"config.norm": {"$gte": "gn", "$lt": "m"}}, ["r2", "r3", "r7"]),
    ({"config.pretrained": True}, ["r6"]),
    ({"config.pretrained": {"$ne": True}}, ["r1", "r2", "r3", "r4", "r5", "r7"]),
    ({"config.batch_size": True}, []),
    ({"config.augment.cutout": True}, ["r5"]),
    # null and missing
    ({"summary.final_val_acc": None}, ["r3", "r4", "r6"]),
    ({"summary.final_val_acc": {"$ne": None}}, ["r1", "r2", "r5", "r7"]),
    ({"summary.final_val_acc": {"$in": [None, 0.5]}}, ["r3", "r4", "r5", "r6"]),
    ({"summary.final_val_acc": {"$exists": True}}, ["r1", "r2", "r3", "r5", "r7"]),
    ({"summary.final_val_acc": {"$gt": 0.9}}, ["r1", "r7"]),
    ({"summary": None}, ["r6"]),
    ({"config.missing.deep": None}, ALL),
    ({"config.missing.deep": {"$exists": True}}, []),
    ({"error": {"$exists": True}}, ["r2"]),
    # paths through lists of sub-documents
    ({"summary.losses.loss": {"$lt": 1.8}}, ["r5"]),
    ({"summary.losses.epoch": 2}, ["r5"]),
    ({"summary.losses.1.loss": 1.5}, ["r5"]),
    ({"summary.losses.loss": {"$exists": True}}, ["r5"]),
    ({"summary.losses.loss": None}, ALL),
    # combinations
    ({"$or": [{"config.norm": "gn"}, {"summary.final_val_acc": {"$gte": 0.93}}]}, ["r3", "r7"]),
    (
        {
            "$and": [
                {"config.optimizer": "sgd"},
                {"$or": [{"status": "running"}, {"config.batch_size": 256}]},
            ]
        },
        ["r3", "r4"],
    ),
    ({"config.optimizer": {"$in": ["adam", "adamw"]}, "status": {"$ne": "diverged"}}, ["r2"]),
    (
        {"$or": [{"study": "optim"}, {"$and": [{"status": "pending"}, {"study": None}]}]},
        ["r2", "r3", "r6"],
    ),
    ({"status": {"$in": []}}, []),
    ({"status": {"$nin": []}}, ALL),
    ({"note": NOTE}, ["r7"]),
]

# MongoDB semantics that mongomock 4.x gets wrong (it treats True == 1, and misreads
# missing values under scalars or partially-populated lists); checked on the other
# backends, which implement the server's rules.
SERVER_ONLY_CASES: list[tuple[dict, list[str]]] = [
    ({"config.pretrained": 1}, []),
    ({"config.pretrained": 0}, []),
    ({"config.norm.x": None}, ALL),
    ({"summary.losses.loss": {"$exists": False}}, ["r1", "r2", "r3", "r4", "r6", "r7"]),
]


@pytest.fixture(scope="module")
def stores(
    tmp_path_factory: pytest.TempPathFactory, store_factory: Any
) -> Iterator[dict[str, ResultStore]]:
    loaded: dict[str, ResultStore] = {}
    for backend in store_factory.backends:
        store = store_factory.make(backend, tmp_path_factory.mktemp(backend))
        for run_id, (fields, studies) in RUNS.items():
            store.upsert_run(run_id, fields)
            for study in studies:
                store.upsert_run(run_id, {}, study=study)
        loaded[backend] = store
    yield loaded
    for store in loaded.values():
        store_factory.dispose(store)


def _ids(docs: list[dict]) -> list[str]:
    return [doc["_id"] for doc in docs]


@pytest.mark.parametrize(("filter", "expected"), CASES, ids=[repr(f) for f, _ in CASES])
def test_filter_matches_mongodb_semantics_on_every_backend(
    stores: dict[str, ResultStore], filter: dict | None, expected: list[str]
) -> None:
    results = {name: store.find_runs(filter) for name, store in stores.items()}
    for name, docs in results.items():
        assert _ids(docs) == expected, name
        assert stores[name].count_runs(filter) == len(expected), name
    first = next(iter(results.values()))
    for docs in results.values():
        assert docs == first  # identical documents, not only identical ids


@pytest.mark.parametrize(
    ("filter", "expected"), SERVER_ONLY_CASES, ids=[repr(f) for f, _ in SERVER_ONLY_CASES]
)
def test_filter_edge_semantics_follow_the_server(
    stores: dict[str, ResultStore], filter: dict, expected: list[str]
) -> None:
    for name, store in stores.items():
        if name != "mongomock":
            assert _ids(store.find_runs(filter)) == expected, name


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ([("config.batch_size", 1)], ["r2", "r5", "r1", "r6", "r7", "r3", "r4"]),
        ([("summary.final_val_acc", -1)], ["r7", "r1", "r2", "r5", "r3", "r4", "r6"]),
        (
            [("config.norm", 1), ("config.batch_size", -1)],
            ["r1", "r6", "r5", "r3", "r7", "r2", "r4"],
        ),
        ([("config.milestones", 1)], ["r7", "r2", "r3", "r4", "r5", "r6", "r1"]),
        ({"status": -1, "_id": -1}, ["r4", "r6", "r2", "r5", "r7", "r3", "r1"]),
    ],
)
def test_sort_orders_like_mongodb(
    stores: dict[str, ResultStore], sort: list, expected: list[str]
) -> None:
    for name, store in stores.items():
        assert _ids(store.find_runs(sort=sort)) == expected, name
        assert _ids(store.find_runs(sort=sort, limit=2)) == expected[:2], name


def test_limit_without_sort_keeps_insertion_order(stores: dict[str, ResultStore]) -> None:
    for name, store in stores.items():
        assert _ids(store.find_runs({"config.norm": "bn"}, limit=2)) == ["r1", "r5"], name


# --------------------------------------------------------------------------- refusals

REFUSED = ["$where", "$function", "$accumulator", "$out", "$merge"]


def _placements(op: str) -> list[dict]:
    return [
        {op: "function() { return true; }"},
        {"status": {op: "x"}},
        {"$and": [{"status": "completed"}, {op: "sleep(1000)"}]},
        {"$or": [{"a": 1}, {"$and": [{"b": {"$eq": 1}}, {"c": {op: {"body": "x"}}}]}]},
        {"status": {"$in": [{op: "x"}]}},
        {"config": {"nested": {op: "x"}}},
    ]


@pytest.mark.parametrize("op", REFUSED)
def test_javascript_and_write_stages_are_refused_for_safety_at_any_depth(op: str) -> None:
    for filter in _placements(op):
        with pytest.raises(QueryError) as info:
            validate_filter(filter)
        message = str(info.value)
        assert "refused for safety" in message
        assert op in message
        assert "$eq" in message  # points at what is allowed


@pytest.mark.parametrize("op", REFUSED)
def test_stores_refuse_unsafe_operators_before_querying(
    stores: dict[str, ResultStore], op: str
) -> None:
    for name, store in stores.items():
        with pytest.raises(QueryError, match="refused for safety"):
            store.find_runs({op: "return true"})
        with pytest.raises(QueryError, match="refused for safety"):
            store.count_runs({"$or": [{"status": {op: 1}}]})
        assert store.count_runs() == len(RUNS), name


@pytest.mark.parametrize(
    "op",
    [
        "$regex",
        "$not",
        "$nor",
        "$elemMatch",
        "$size",
        "$type",
        "$all",
        "$mod",
        "$expr",
        "$text",
        "$foo",
    ],
)
def test_unsupported_operators_name_the_supported_subset(op: str) -> None:
    for filter in ({op: [{"a": 1}]}, {"status": {op: "x"}}):
        with pytest.raises(QueryError) as info:
            validate_filter(filter)
        message = str(info.value)
        assert f"Unsupported query operator {op!r}" in message
        for supported in SUPPORTED_OPERATORS:
            assert supported in message


@pytest.mark.parametrize(
    "filter",
    [
        [],
        "status == 'completed'",
        {1: 2},
        {"status": {}},
        {"config": {"norm": "bn"}},
        {"status": {"$eq": "x", "plain": 1}},
        {"config.milestones": [30, 60]},
        {"status": {"$gt": None}},
        {"status": {"$in": "completed"}},
        {"status": {"$in": [["nested"]]}},
        {"status": {"$exists": 1}},
        {"status": {"$and": [{"a": 1}]}},
        {"$and": []},
        {"$or": {"status": "completed"}},
        {"$and": [None]},
        {"summary.x": math.nan},
        {"summary.x": 2**64},
        {"summary.x": object()},
        {"summary.x": b"bytes"},
        {"a..b": 1},
        {".a": 1},
        {"a.": 1},
        {"": 1},
        {"a-b": 1},
        {"a b": 1},
        {"a$b": 1},
        {".".join(["a"] * 17): 1},
    ],
    ids=repr,
)
def test_malformed_filters_raise_query_error(filter: object) -> None:
    with pytest.raises(QueryError):
        validate_filter(filter)  # type: ignore[arg-type]
    with pytest.raises(QueryError):
        compile_filter(filter)  # type: ignore[arg-type]


def test_validate_filter_returns_plain_values() -> None:
    np = pytest.importorskip("numpy")
    normalized = validate_filter(
        {"config.batch_size": np.int64(128), "summary.acc": {"$gte": np.float32(0.5)}}
    )
    assert normalized == {"config.batch_size": 128, "summary.acc": {"$gte": 0.5}}
    assert type(normalized["config.batch_size"]) is int
    assert type(normalized["summary.acc"]["$gte"]) is float


@pytest.mark.parametrize(
    "sort",
    ["status", [("status",)], [("status", 2)], [("status", True)], [("a b", 1)], [(1, 1)], 5],
    ids=repr,
)
def test_malformed_sorts_raise_query_error(stores: dict[str, ResultStore], sort: object) -> None:
    with pytest.raises(QueryError):
        validate_sort(sort)
    for store in stores.values():
        with pytest.raises(QueryError):
            store.find_runs(sort=sort)  # type: ignore[arg-type]


def test_negative_limit_is_refused(stores: dict[str, ResultStore]) -> None:
    for store in stores.values():
        with pytest.raises(QueryError, match="non-negative"):
            store.find_runs(limit=-1)


# --------------------------------------------------------------------------- injection

INJECTED_PATHS = [
    "status') OR 1=1 --",
    "config.norm' OR '1'='1",
    "status;DROP TABLE runs",
    'a"b',
    "status\x00",
    "$.status",
    "config[0]",
]

INJECTED_VALUES = [
    "' OR '1'='1",
    "x'); DROP TABLE runs; --",
    '"); DELETE FROM runs; --',
    "%",
    "_",
    "*",
    "$.status",
    "\x00",
]


@pytest.mark.parametrize("path", INJECTED_PATHS, ids=repr)
def test_injection_in_paths_is_rejected(stores: dict[str, ResultStore], path: str) -> None:
    with pytest.raises(QueryError):
        compile_filter({path: 1})
    for store in stores.values():
        with pytest.raises(QueryError):
            store.find_runs({path: "x"})
        with pytest.raises(QueryError):
            store.find_runs(sort=[(path, 1)])


@pytest.mark.parametrize("value", INJECTED_VALUES, ids=repr)
def test_injection_in_values_is_inert(stores: dict[str, ResultStore], value: str) -> None:
    sql, params = compile_filter({"status": value, "config.norm": {"$in": [value, "bn"]}})
    # The SQL text never depends on the values; they travel only as parameters.
    assert sql == compile_filter({"status": "x", "config.norm": {"$in": ["y", "bn"]}})[0]
    assert params.count(value) >= 2
    for name, store in stores.items():
        assert store.find_runs({"status": value}) == [], name
        assert store.count_runs({"config.norm": {"$gt": value}, "status": value}) == 0, name
        assert store.count_runs() == len(RUNS), name


def test_stored_text_with_sql_metacharacters_matches_exactly(
    stores: dict[str, ResultStore],
) -> None:
    for name, store in stores.items():
        assert _ids(store.find_runs({"note": NOTE})) == ["r7"], name
        assert store.find_runs({"note": NOTE[:-1]}) == [], name
        assert _ids(store.find_runs({"note": {"$gte": "O'B", "$lt": "O'C"}})) == ["r7"], name


def test_compiled_sql_uses_only_validated_paths() -> None:
    sql, params = compile_filter({"config.batch_size": {"$in": [32, 64]}, "study": "a"})
    assert "'$.config.batch_size'" in sql and "'$.study'" in sql
    assert params.count(32) >= 1 and params.count("a") >= 1
    assert all(term.count("?") == 0 for term in compile_sort([("summary.acc", -1)]))
    with pytest.raises(QueryError):
        compile_filter({"a": 1}, column="doc; DROP TABLE runs")


def test_query_error_is_a_bench_error() -> None:
    from bench.errors import BenchError

    with pytest.raises(BenchError):
        validate_filter({"$where": "1"})


def test_paths_may_use_digits_and_underscores(tmp_path: Path, store_factory: Any) -> None:
    store = store_factory.make("embedded", tmp_path)
    try:
        store.upsert_run("x", {"summary": {"top_1": 0.5, "2nd": [{"k": 1}]}})
        assert _ids(store.find_runs({"summary.top_1": 0.5})) == ["x"]
        assert _ids(store.find_runs({"summary.2nd.0.k": 1})) == ["x"]
        assert _ids(store.find_runs({"summary.2nd.k": 1})) == ["x"]
    finally:
        store.close()


def test_random_filters_agree_between_embedded_and_mongomock(
    tmp_path: Path, store_factory: Any
) -> None:
    """Differential check on generated documents and filters (fixed seed).

    Generation stays inside what mongomock models faithfully: no numeric-looking keys
    in documents, and no null or $exists:false tests on dotted paths.
    """
    rng = random.Random(20240501)
    keys = ["x", "y", "z"]

    def value(depth: int = 0) -> object:
        roll = rng.random()
        if roll < 0.25:
            return rng.choice([1, 2, 3, 2.5, -1])
        if roll < 0.45:
            return rng.choice(["a", "b", "c", "ab"])
        if roll < 0.5 or depth >= 2:
            return None
        if roll < 0.7:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {k: value(depth + 1) for k in rng.sample(keys, rng.randint(0, 3))}

    paths = ["x", "y", "x.y", "x.z", "y.x.z", "x.0", "x.1.y", "z.x"]

    def scalar(dotted: bool) -> object:
        return rng.choice([1, 2, 2.5, 3, "a", "b", "ab"] + ([] if dotted else [None]))

    def condition() -> dict:
        path = rng.choice(paths)
        dotted = "." in path
        op = rng.choice(["eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"])
        if op == "eq":
            return {path: scalar(dotted)}
        if op in ("$in", "$nin"):
            return {path: {op: [scalar(dotted) for _ in range(rng.randint(0, 3))]}}
        if op == "$exists":
            return {path: {op: True if dotted else rng.random() < 0.5}}
        return {path: {op: scalar(True)}}

    def generate(depth: int = 0) -> dict:
        if depth < 2 and rng.random() < 0.2:
            op = rng.choice(["$and", "$or"])
            return {op: [generate(depth + 1) for _ in range(rng.randint(1, 3))]}
        return condition()

    embedded = store_factory.make("embedded", tmp_path)
    mongo = store_factory.make("mongomock", tmp_path)
    try:
        for i in range(150):
            doc = {k: value() for k in rng.sample(keys, rng.randint(0, 3))}
            embedded.upsert_run(f"{i:03d}", doc)
            mongo.upsert_run(f"{i:03d}", doc)
        for _ in range(300):
            filter = generate()
            assert _ids(embedded.find_runs(filter)) == _ids(mongo.find_runs(filter)), filter
    finally:
        embedded.close()
        mongo.close()

"""Backends every store contract test runs against.

``store`` is parametrized over the embedded SQLite store, MongoStore on an in-memory
mongomock client and, when ``BENCH_TEST_MONGO_URI`` points at a server, MongoStore on
a real server (a fresh database per test, dropped afterwards).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import mongomock
import pytest

from bench.store import EmbeddedStore, MongoStore, ResultStore

REAL_MONGO_URI = os.environ.get("BENCH_TEST_MONGO_URI", "").strip()
BACKENDS = ["embedded", "mongomock"] + (["mongodb"] if REAL_MONGO_URI else [])


def make_store(backend: str, tmp_path: Path) -> ResultStore:
    if backend == "embedded":
        return EmbeddedStore(tmp_path / "results.sqlite")
    if backend == "mongomock":
        return MongoStore(client=mongomock.MongoClient(), database="bench_test")
    if backend == "mongodb":
        return MongoStore(REAL_MONGO_URI, database=f"bench_test_{uuid.uuid4().hex[:12]}")
    raise ValueError(f"unknown backend {backend!r}")


def dispose(store: ResultStore) -> None:
    if isinstance(store, MongoStore) and not isinstance(store.client, mongomock.MongoClient):
        store.client.drop_database(store.database)
    store.close()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultStore]:
    instance = make_store(request.param, tmp_path)
    try:
        yield instance
    finally:
        dispose(instance)


@pytest.fixture
def backend(request: pytest.FixtureRequest, store: ResultStore) -> str:
    """Name of the backend behind ``store``: embedded, mongomock or mongodb."""
    return request.node.callspec.params["store"]

"""Backends every store contract test runs against.

``store`` is parametrized over the embedded SQLite store, MongoStore on an in-memory
mongomock client and, when ``BENCH_TEST_MONGO_URI`` points at a server, MongoStore on
a real server (a fresh ``bench_test_*`` database per test, dropped afterwards, so the
URI's user needs the right to create and drop databases).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import mongomock
import pytest
from pymongo import MongoClient

from bench.store import EmbeddedStore, MongoStore, ResultStore

REAL_MONGO_URI = os.environ.get("BENCH_TEST_MONGO_URI", "").strip()
BACKENDS = ["embedded", "mongomock"] + (["mongodb"] if REAL_MONGO_URI else [])


class StoreFactory:
    """Opens and disposes stores by backend name (for tests that need several at once)."""

    backends: tuple[str, ...] = tuple(BACKENDS)

    def make(self, backend: str, tmp_path: Path) -> ResultStore:
        if backend == "embedded":
            return EmbeddedStore(tmp_path / "results.sqlite")
        if backend == "mongomock":
            return MongoStore(client=mongomock.MongoClient(), database="bench_test")
        if backend == "mongodb":
            return MongoStore(REAL_MONGO_URI, database=f"bench_test_{uuid.uuid4().hex[:12]}")
        raise ValueError(f"unknown backend {backend!r}")

    def dispose(self, store: ResultStore) -> None:
        store.close()
        if isinstance(store, MongoStore) and not isinstance(store.client, mongomock.MongoClient):
            # The store's own client may be closed by the test; drop with a fresh one.
            with MongoClient(REAL_MONGO_URI, serverSelectionTimeoutMS=5000) as client:
                client.drop_database(store.database)


@pytest.fixture(scope="session")
def store_factory() -> StoreFactory:
    return StoreFactory()


@pytest.fixture(params=BACKENDS)
def store(
    request: pytest.FixtureRequest, tmp_path: Path, store_factory: StoreFactory
) -> Iterator[ResultStore]:
    instance = store_factory.make(request.param, tmp_path)
    try:
        yield instance
    finally:
        store_factory.dispose(instance)

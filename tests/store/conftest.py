"""Backends every store contract test runs against.

``store`` is parametrized over the embedded SQLite store, MongoStore on an in-memory
mongomock client and, when ``BENCH_TEST_MONGO_URI`` points at a server, MongoStore on
a real server (a fresh ``bench_test_*`` database per test, dropped afterwards, so the
URI's user needs the right to create and drop databases). ``faulty`` makes MongoStores on
a client that fails on demand, to test outages.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mongomock
import mongomock.command_cursor
import pytest
from pymongo import MongoClient
from pymongo.errors import AutoReconnect

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


class FaultyClient:
    """A mongomock client that fails on demand, as a MongoDB server that goes away would.

    While ``down`` is set (or once ``fail_after`` more calls have succeeded), every
    database call raises ``AutoReconnect``. Calls are serialized, as a server applies each
    operation atomically, so several threads can share the in-memory database. ``calls``
    records the name of every method called.
    """

    address = None

    def __init__(self, client: mongomock.MongoClient | None = None):
        self._client = client or mongomock.MongoClient()
        self.down = False
        self.fail_after: int | None = None
        self.calls: list[str] = []
        self.lock = threading.RLock()

    def __getitem__(self, name: str) -> _Faulty:
        return _Faulty(self, self._client[name])

    def raw(self, database: str) -> Any:
        """The underlying database, bypassing faults (what the server really holds)."""
        return self._client[database]

    def close(self) -> None:
        pass

    def _check(self, name: str) -> None:
        if self.fail_after is not None:
            if self.fail_after <= 0:
                self.down = True
            self.fail_after -= 1
        if self.down:
            raise AutoReconnect(f"connection refused while calling {name} (simulated outage)")


class _Faulty:
    def __init__(self, owner: FaultyClient, target: Any):
        self._owner, self._target = owner, target

    def __getitem__(self, name: str) -> _Faulty:
        return _Faulty(self._owner, self._target[name])

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr
        owner = self._owner

        def call(*args: Any, **kwargs: Any) -> Any:
            with owner.lock:
                owner.calls.append(name)
                owner._check(name)
                result = attr(*args, **kwargs)
                if isinstance(result, (mongomock.collection.Cursor, mongomock.command_cursor.CommandCursor)):
                    result = list(result)
                return result

        return call


@pytest.fixture
def faulty(tmp_path: Path) -> Callable[..., tuple[MongoStore, FaultyClient]]:
    """Makes MongoStores on one FaultyClient, journaling to ``tmp_path/journal.jsonl``."""
    client = FaultyClient()

    def make(**kwargs: Any) -> tuple[MongoStore, FaultyClient]:
        kwargs.setdefault("journal", tmp_path / "journal.jsonl")
        kwargs.setdefault("retry_interval", 0.0)
        return MongoStore(client=client, database="bench_test", **kwargs), client

    return make

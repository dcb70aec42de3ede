"""Result storage: runs, per-epoch metrics, per-step buckets and studies, in SQLite or MongoDB.

``open_store()`` picks the backend (MongoDB when ``BENCH_MONGO_URI`` is set, else an
embedded SQLite file; ``with opened_store() as store:`` also closes it); both implement
:class:`ResultStore` with the same documents and the same validated MongoDB filter subset.
:mod:`bench.store.transfer` moves results between stores and files; :mod:`bench.store.status`
summarizes and re-queues grids.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from bench.store.base import SCHEMA_VERSION, ResultStore, mask_uri, open_store, sanitize
from bench.store.embedded import EmbeddedStore
from bench.store.journal import Journal
from bench.store.mongo import MongoStore
from bench.store.query import validate_filter
from bench.store.steps import STEPS_PER_BUCKET, steps_frame

__all__ = [
    "SCHEMA_VERSION",
    "STEPS_PER_BUCKET",
    "EmbeddedStore",
    "Journal",
    "MongoStore",
    "ResultStore",
    "mask_uri",
    "open_store",
    "opened_store",
    "sanitize",
    "steps_frame",
    "validate_filter",
]


@contextlib.contextmanager
def opened_store(uri: str | os.PathLike[str] | None = None, *, read_only: bool = False) -> Iterator[ResultStore]:
    """:func:`open_store` for a ``with`` block: the store is closed when the block ends."""
    store = open_store(uri, read_only=read_only)
    try:
        yield store
    finally:
        store.close()

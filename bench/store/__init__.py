"""Result storage: runs, per-epoch metrics and studies, in SQLite or MongoDB.

``open_store()`` picks the backend (MongoDB when ``BENCH_MONGO_URI`` is set, else an
embedded SQLite file); both implement :class:`ResultStore` with the same documents and
the same validated MongoDB filter subset.
"""

from bench.store.base import SCHEMA_VERSION, ResultStore, mask_uri, open_store, sanitize
from bench.store.embedded import EmbeddedStore
from bench.store.mongo import MongoStore
from bench.store.query import validate_filter

__all__ = [
    "SCHEMA_VERSION",
    "EmbeddedStore",
    "MongoStore",
    "ResultStore",
    "mask_uri",
    "open_store",
    "sanitize",
    "validate_filter",
]

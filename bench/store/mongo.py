"""The MongoDB result store, for results shared between machines and long campaigns.

It keeps the same three collections and document shapes as the embedded store and
accepts the same validated filter subset, so reports and the CLI never care which
backend they read. Connecting fails fast (``serverSelectionTimeoutMS``) with a
message that names the server by its masked URI and says how to fix it. The
collections, indexes and ``runs`` validator it creates are listed in
:data:`COLLECTIONS`, the same specification ``store/mongo-init.js`` installs when the
official ``mongo`` image initialises a fresh database.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

from pymongo import MongoClient, ReplaceOne
from pymongo.errors import (
    CollectionInvalid,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)

from bench.errors import StoreError
from bench.store.base import (
    INDEXED_RUN_PATHS,
    RUNS_JSON_SCHEMA,
    check_limit,
    chunked,
    is_mongo_uri,
    mask_uri,
    metric_key,
    prepare_metrics,
    prepare_run_update,
    prepare_study,
    scrub,
    unique_ids,
)
from bench.store.query import validate_filter, validate_sort

#: Collections, their indexes and the ``runs`` validator. ``store/mongo-init.js``
#: carries the same specification (a test keeps the two identical); index names are
#: explicit so both create indexes MongoDB considers the same.
COLLECTIONS: dict[str, dict[str, Any]] = {
    "runs": {
        "validator": {"$jsonSchema": RUNS_JSON_SCHEMA},
        "validationLevel": "moderate",
        "indexes": [{"name": f"{path}_1", "key": {path: 1}} for path in INDEXED_RUN_PATHS],
    },
    "metrics": {
        "indexes": [{"name": "run_id_1_epoch_1", "key": {"run_id": 1, "epoch": 1}, "unique": True}],
    },
    "studies": {"indexes": []},
}

_IN_CHUNK = 1000  # run ids per $in list
_WRITE_CHUNK = 5000  # metric documents per bulk_write call
_FIX_HINT = (
    "Start the MongoDB server, check BENCH_MONGO_URI or --mongo-uri, or unset "
    "BENCH_MONGO_URI to use the embedded store (.bench/results.sqlite)."
)


def database_from_uri(uri: str) -> str | None:
    """The database named in a MongoDB URI's path, if any."""
    rest = uri.partition("://")[2].split("?", 1)[0]
    hosts = rest[rest.rfind("@") + 1 :]
    return unquote(hosts.partition("/")[2]) or None


class MongoStore:
    """Result store in a MongoDB database."""

    kind = "mongodb"

    def __init__(
        self,
        uri: str | None = None,
        *,
        client: Any = None,
        database: str | None = None,
        timeout_ms: int = 3000,
    ):
        if client is None:
            uri = uri or os.environ.get("BENCH_MONGO_URI", "").strip() or None
            if uri is None:
                raise StoreError(
                    "MongoStore needs a mongodb:// URI or a client; none was given and "
                    "BENCH_MONGO_URI is not set. Pass --mongo-uri, set BENCH_MONGO_URI, or "
                    "use the embedded store."
                )
            if not is_mongo_uri(uri):
                raise StoreError(
                    f"{mask_uri(uri)!r} is not a MongoDB URI; it must start with mongodb:// "
                    "or mongodb+srv://."
                )
            client = _connect(uri, timeout_ms)
            self._owns_client = True
        else:
            self._owns_client = False
        self._uri = uri
        self.client = client
        self.database = (
            database
            or (database_from_uri(uri) if uri else None)
            or os.environ.get("BENCH_MONGO_DB", "").strip()
            or "bench"
        )
        self.location = mask_uri(uri) if uri else _client_location(client, self.database)
        self._closed = False
        self._bulk_write = True
        try:
            with self._errors("prepare its collections"):
                self.db = client[self.database]
                self._ensure_schema()
        except StoreError:
            self.close()
            raise

    # ------------------------------------------------------------------ plumbing

    def _ensure_schema(self) -> None:
        existing = set(self.db.list_collection_names())
        for name, spec in COLLECTIONS.items():
            if name not in existing:
                options = {k: spec[k] for k in ("validator", "validationLevel") if k in spec}
                try:
                    self.db.create_collection(name, **options)
                except CollectionInvalid:
                    pass  # created meanwhile by another process
                except NotImplementedError:
                    # In-memory clients (mongomock) have no validators; the stores check
                    # the same rules client-side before every write.
                    self.db.create_collection(name)
            for index in spec["indexes"]:
                kwargs: dict[str, Any] = {"name": index["name"]}
                if index.get("unique"):
                    kwargs["unique"] = True
                self.db[name].create_index(list(index["key"].items()), **kwargs)

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except PyMongoError as exc:
            detail = scrub(str(exc), self._uri)
            if isinstance(exc, OperationFailure) and exc.code == 121:
                detail = f"the document failed the collection's validator ({detail})"
            raise StoreError(
                f"MongoDB at {self.location} failed to {action}: {detail}. {_FIX_HINT}"
            ) from exc

    def _coll(self, name: str) -> Any:
        if self._closed:
            raise StoreError(f"The result store {self.location} is closed.")
        return self.db[name]

    # ------------------------------------------------------------------ runs

    def upsert_run(self, run_id: str, fields: dict, *, study: str | None = None) -> None:
        set_fields, add_study = prepare_run_update(run_id, fields, study)
        update: dict[str, Any] = {"$set": set_fields}
        if add_study is not None:
            update["$addToSet"] = {"study": add_study}
        with self._errors(f"save run {run_id!r}"):
            self._coll("runs").update_one({"_id": run_id}, update, upsert=True)

    def get_run(self, run_id: str) -> dict | None:
        with self._errors("read a run"):
            return self._coll("runs").find_one({"_id": run_id})

    def find_runs(
        self,
        filter: dict | None = None,
        *,
        sort: list[tuple[str, int]] | None = None,
        limit: int = 0,
    ) -> list[dict]:
        query = validate_filter(filter)
        order = validate_sort(sort)
        if order and all(key != "_id" for key, _ in order):
            order.append(("_id", 1))  # the embedded store breaks ties the same way
        limit = check_limit(limit)
        with self._errors("find runs"):
            cursor = self._coll("runs").find(query, sort=order or None, limit=limit)
            return list(cursor)

    def count_runs(self, filter: dict | None = None) -> int:
        query = validate_filter(filter)
        with self._errors("count runs"):
            return int(self._coll("runs").count_documents(query))

    # ------------------------------------------------------------------ metrics

    def upsert_metrics(self, docs: list[dict]) -> None:
        rows = prepare_metrics(docs)
        coll = self._coll("metrics")
        with self._errors(f"save {len(rows)} metric documents"):
            for chunk in chunked(rows, _WRITE_CHUNK):
                replacements = [
                    (key, {"_id": key, **doc})
                    for key, doc in ((metric_key(r, e), d) for r, e, d in chunk)
                ]
                if self._bulk_write:
                    try:
                        coll.bulk_write(
                            [ReplaceOne({"_id": k}, d, upsert=True) for k, d in replacements],
                            ordered=False,
                        )
                        continue
                    except TypeError:
                        # mongomock's bulk_write cannot build current pymongo's write
                        # models; replace one by one (same result, replays stay idempotent).
                        self._bulk_write = False
                for key, doc in replacements:
                    coll.replace_one({"_id": key}, doc, upsert=True)

    def get_metrics(self, run_id: str) -> list[dict]:
        with self._errors("read metrics"):
            return list(
                self._coll("metrics").find({"run_id": run_id}, {"_id": 0}, sort=[("epoch", 1)])
            )

    def find_metrics(self, run_ids: list[str]) -> list[dict]:
        result: list[dict] = []
        coll = self._coll("metrics")
        with self._errors("read metrics"):
            for chunk in chunked(unique_ids(run_ids), _IN_CHUNK):
                result.extend(
                    coll.find(
                        {"run_id": {"$in": chunk}},
                        {"_id": 0},
                        sort=[("run_id", 1), ("epoch", 1)],
                    )
                )
        return result

    # ------------------------------------------------------------------ studies

    def save_study(self, name: str, doc: dict) -> None:
        fields = prepare_study(name, doc)
        coll = self._coll("studies")
        with self._errors(f"save study {name!r}"):
            if fields:
                coll.update_one({"_id": name}, {"$set": fields}, upsert=True)
            elif coll.find_one({"_id": name}, {"_id": 1}) is None:
                try:
                    coll.insert_one({"_id": name})
                except DuplicateKeyError:
                    pass  # saved meanwhile by another process

    def get_study(self, name: str) -> dict | None:
        with self._errors("read a study"):
            return self._coll("studies").find_one({"_id": name})

    def list_studies(self) -> list[dict]:
        with self._errors("list studies"):
            return list(self._coll("studies").find({}, sort=[("_id", 1)]))

    # ------------------------------------------------------------------ housekeeping

    def info(self) -> dict:
        with self._errors("describe the store"):
            counts = {
                name: int(self._coll(name).count_documents({}))
                for name in ("runs", "metrics", "studies")
            }
            groups = self._coll("runs").aggregate(
                [
                    {"$match": {"status": {"$type": "string"}}},
                    {"$group": {"_id": "$status", "n": {"$sum": 1}}},
                    {"$sort": {"_id": 1}},
                ]
            )
            statuses = {group["_id"]: int(group["n"]) for group in groups}
        return {
            "kind": self.kind,
            "location": self.location,
            "database": self.database,
            **counts,
            "status_counts": statuses,
        }

    def close(self) -> None:
        if not self._closed and self._owns_client:
            self.client.close()
        self._closed = True

    def __enter__(self) -> MongoStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MongoStore({self.location!r}, database={self.database!r})"


def _connect(uri: str, timeout_ms: int) -> Any:
    masked = mask_uri(uri)
    query = uri.partition("?")[2].lower()
    options: dict[str, Any] = {}
    if "serverselectiontimeoutms=" not in query:
        options["serverSelectionTimeoutMS"] = timeout_ms
    if "connecttimeoutms=" not in query:
        options["connectTimeoutMS"] = timeout_ms
    client = None
    try:
        client = MongoClient(uri, **options)
        client.admin.command("ping")
        return client
    except OperationFailure as exc:
        message = (
            f"MongoDB at {masked} refused the connection: {scrub(str(exc), uri)}. Check "
            "the user name, password and authSource in BENCH_MONGO_URI or --mongo-uri, "
            "or unset BENCH_MONGO_URI to use the embedded store."
        )
    except (PyMongoError, ValueError, TypeError) as exc:
        detail = scrub(str(exc), uri).split(", Timeout:", 1)[0][:300]
        message = f"Could not reach the MongoDB server at {masked}: {detail}. {_FIX_HINT}"
    if client is not None:
        client.close()
    raise StoreError(message) from None  # the cause may quote the URI


def _client_location(client: Any, database: str) -> str:
    """Where a caller-provided client points, without triggering server selection."""
    try:
        if isinstance(client, MongoClient):
            addresses = sorted(client.topology_description.server_descriptions())
        else:
            addresses = [client.address] if getattr(client, "address", None) else []
        if addresses:
            host, port = addresses[0]
            return f"mongodb://{host}:{port}/{database}"
    except Exception:
        pass
    return f"mongodb (provided client)/{database}"

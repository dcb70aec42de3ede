"""The MongoDB result store, for results shared between machines and long campaigns.

It keeps the same three collections and document shapes as the embedded store and
accepts the same validated filter subset, so reports and the CLI never care which
backend they read. Connecting fails fast (``serverSelectionTimeoutMS``) with a
message that names the server by its masked URI and says how to fix it. The
collections, indexes and ``runs`` validator it creates are listed in
:data:`COLLECTIONS`, the same specification ``store/mongo-init.js`` installs when the
official ``mongo`` image initialises a fresh database; existing indexes are listed once
per collection and only missing ones are created.

A server that goes away in the middle of a grid does not stop it: a write that fails
with a connection error (``AutoReconnect``, ``ServerSelectionTimeoutError``, any
``ConnectionFailure``) is appended to a local :class:`~bench.store.journal.Journal`
and the grid goes on; for ``retry_interval`` seconds further writes go straight to the
journal (no wait on each), then the next write, the next read and ``bench store sync``
replay it in order before anything else.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

from pymongo import MongoClient, ReplaceOne, UpdateOne
from pymongo.errors import (
    CollectionInvalid,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)

from bench.errors import StoreError
from bench.store.base import (
    ID_CHUNK,
    INDEXED_RUN_PATHS,
    RUNS_JSON_SCHEMA,
    check_limit,
    chunked,
    claim_filter,
    is_mongo_uri,
    mask_uri,
    metric_key,
    prepare_claim,
    prepare_metrics,
    prepare_on_insert,
    prepare_run_update,
    prepare_runs_update,
    prepare_study,
    scrub,
    unique_ids,
)
from bench.store import flat
from bench.store.journal import Journal, journal_path
from bench.store.query import validate_filter, validate_sort
from bench.store.steps import bucket_key, prepare_steps, unpack_bucket

log = logging.getLogger(__name__)

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
    "steps": {
        "indexes": [
            {"name": "run_id_1_bucket_1", "key": {"run_id": 1, "bucket": 1}, "unique": True}
        ],
    },
    "studies": {"indexes": []},
}

_IN_CHUNK = 1000  # run ids per $in list
#: The run fields a runs DataFrame shows (:func:`bench.store.flat.run_row`): a projection.
_FRAME_FIELDS = {name: 1 for name in ("status", "study", "attempts", "started_at", "finished_at", "config", "derived", "summary", "error")}
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
        journal: str | os.PathLike[str] | None = None,
        retry_interval: float = 30.0,
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
        self.journal = Journal(journal or journal_path(_server_identity(uri, self.location), self.database))
        self.retry_interval = retry_interval
        self._lock = threading.RLock()
        self._offline_until = 0.0  # monotonic time before which writes go to the journal
        self._journal_pending = self.journal.has_entries()
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
            present = set(self.db[name].index_information())
            for index in spec["indexes"]:
                if index["name"] in present:
                    continue
                kwargs: dict[str, Any] = {"name": index["name"]}
                if index.get("unique"):
                    kwargs["unique"] = True
                self.db[name].create_index(list(index["key"].items()), **kwargs)

    def _error(self, action: str, exc: PyMongoError) -> StoreError:
        detail = scrub(str(exc), self._uri)
        if isinstance(exc, OperationFailure) and exc.code == 121:
            detail = f"the document failed the collection's validator ({detail})"
        return StoreError(f"MongoDB at {self.location} failed to {action}: {detail}. {_FIX_HINT}")

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except PyMongoError as exc:
            raise self._error(action, exc) from exc

    @contextmanager
    def _reading(self, action: str) -> Iterator[None]:
        """A read sees this process's journaled writes: the journal is replayed first."""
        with self._errors(action):
            if self._journal_pending:
                with self._lock:
                    self._replay()
            yield

    def _coll(self, name: str) -> Any:
        if self._closed:
            raise StoreError(f"The result store {self.location} is closed.")
        return self.db[name]

    def _write(self, op: str, args: dict[str, Any], action: str, online: Callable[[], Any] | None = None) -> Any:
        """Applies one write now, or journals it while the server is unreachable.

        ``online`` performs the write when it differs from its journaled replay (a claim
        checks its condition online); returns its result, or None when journaled.
        """
        with self._lock:
            self._coll("runs")  # refuses a closed store before anything is journaled
            if time.monotonic() < self._offline_until:
                self.journal.append(op, args)
                self._journal_pending = True
                return None
            try:
                if self._journal_pending:
                    self._replay()
                return online() if online is not None else self._apply(op, args)
            except ConnectionFailure as exc:
                self._go_offline(exc)
                self.journal.append(op, args)
                self._journal_pending = True
                return None
            except PyMongoError as exc:
                raise self._error(action, exc) from exc

    def _go_offline(self, exc: ConnectionFailure) -> None:
        if self._offline_until == 0.0:
            log.warning(
                "MongoDB at %s is unreachable (%s); training goes on and writes are kept in "
                "%s, replayed when the server is back or by `bench store sync`.",
                self.location,
                scrub(str(exc), self._uri).split(", Timeout:", 1)[0][:200],
                self.journal.path,
            )
        self._offline_until = time.monotonic() + self.retry_interval

    def _replay(self) -> int:
        applied = self.journal.replay(self._apply_journaled)
        self._journal_pending = False
        self._offline_until = 0.0
        return applied

    def _apply(self, op: str, args: dict[str, Any]) -> None:
        _APPLY[op](self, args)

    def _apply_journaled(self, op: str, args: dict[str, Any]) -> None:
        """Performs one journaled write; every one is an idempotent upsert."""
        if op not in _APPLY:
            self.journal.reject(op, args, "unknown write")
            return
        try:
            _APPLY[op](self, args)
        except ConnectionFailure:
            raise
        except PyMongoError as exc:
            # The server refuses this write (not an outage): keep it aside, go on.
            self.journal.reject(op, args, scrub(str(exc), self._uri))

    def sync(self) -> int:
        """Replays the journal now; returns how many writes were applied."""
        with self._lock:
            self._coll("runs")
            try:
                return self._replay()
            except ConnectionFailure as exc:
                raise StoreError(
                    f"MongoDB at {self.location} is still unreachable "
                    f"({scrub(str(exc), self._uri).split(', Timeout:', 1)[0][:200]}); "
                    f"{self.journal.pending()} writes stay in the journal {self.journal.path}. "
                    f"{_FIX_HINT}"
                ) from None

    # ------------------------------------------------------------------ runs

    def upsert_run(
        self, run_id: str, fields: dict, *, study: str | None = None, on_insert: dict | None = None
    ) -> None:
        set_fields, add_study = prepare_run_update(run_id, fields, study)
        args = {"run_id": run_id, "set": set_fields, "add_study": add_study}
        if on_insert:
            args["on_insert"] = prepare_on_insert(run_id, on_insert, set_fields)
        self._write("upsert_run", args, f"save run {run_id!r}")

    def _apply_upsert_run(self, args: dict[str, Any]) -> None:
        update: dict[str, Any] = {"$set": args["set"]}
        if args.get("add_study") is not None:
            update["$addToSet"] = {"study": args["add_study"]}
        if args.get("on_insert"):
            update["$setOnInsert"] = args["on_insert"]
        self._coll("runs").update_one({"_id": args["run_id"]}, update, upsert=True)

    def claim_run(
        self, run_id: str, fields: dict, *, driver: str, stale_before: str, skip_finished: bool = True
    ) -> bool:
        set_fields = prepare_claim(run_id, fields, driver, uuid.uuid4().hex)
        condition = validate_filter(claim_filter(driver, stale_before, skip_finished))

        def online() -> bool:
            try:
                self._coll("runs").update_one(
                    {"_id": run_id, **condition},
                    {"$set": set_fields, "$inc": {"attempts": 1}},
                    upsert=True,
                )
            except DuplicateKeyError:
                return False  # the run exists and another driver holds it (or it is finished)
            return True

        # Offline the condition cannot be checked: the grid planned this trial, so it runs.
        claimed = self._write("start_attempt", {"run_id": run_id, "set": set_fields}, f"start run {run_id!r}", online)
        return True if claimed is None else bool(claimed)

    def _apply_start_attempt(self, args: dict[str, Any]) -> None:
        # A replay counts the attempt once: its attempt id is set with the increment.
        try:
            self._coll("runs").update_one(
                {"_id": args["run_id"], "attempt_id": {"$ne": args["set"]["attempt_id"]}},
                {"$set": args["set"], "$inc": {"attempts": 1}},
                upsert=True,
            )
        except DuplicateKeyError:
            pass

    def update_runs(self, filter: dict, fields: dict) -> int:
        query = validate_filter(filter)
        set_fields = prepare_runs_update(fields)

        def online() -> int:
            return int(self._coll("runs").update_many(query, {"$set": set_fields}).matched_count)

        matched = self._write("update_runs", {"filter": query, "set": set_fields}, "update runs", online)
        return 0 if matched is None else matched

    def _apply_update_runs(self, args: dict[str, Any]) -> None:
        self._coll("runs").update_many(args["filter"], {"$set": args["set"]})

    def get_run(self, run_id: str) -> dict | None:
        with self._reading("read a run"):
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
        with self._reading("find runs"):
            cursor = self._coll("runs").find(query, sort=order or None, limit=limit)
            return list(cursor)

    def count_runs(self, filter: dict | None = None) -> int:
        query = validate_filter(filter)
        with self._reading("count runs"):
            return int(self._coll("runs").count_documents(query))

    def status_counts(self) -> dict[str, dict[str, int]]:
        with self._reading("count runs per study and status"):
            groups = self._coll("runs").aggregate(
                [
                    {"$unwind": {"path": "$study", "preserveNullAndEmptyArrays": True}},
                    {"$group": {"_id": {"study": "$study", "status": "$status"}, "n": {"$sum": 1}}},
                ]
            )
            counts: dict[str, dict[str, int]] = {}
            for group in groups:
                key = group["_id"]
                study = key.get("study") if isinstance(key.get("study"), str) else ""
                status = key.get("status") if isinstance(key.get("status"), str) else ""
                counts.setdefault(study, {})[status] = counts.get(study, {}).get(status, 0) + int(group["n"])
        return {study: dict(sorted(counts[study].items())) for study in sorted(counts)}

    # ------------------------------------------------------------------ frames

    def runs_frame(
        self, filter: dict | None = None, *, ids: list[str] | None = None, extra: Any = (), envs: bool = False
    ) -> Any:
        """The runs DataFrame of the runs ``find_runs(filter)`` returns (with ``ids``: of the
        runs among them, as :func:`~bench.store.base.runs_by_id` returns them), then of the
        ``extra`` documents (or a function of the ids found giving them); with ``envs``,
        ``(frame, [(run id, env), ...])`` from the same read. The server sends only the
        fields the frame shows (and ``env``)."""
        docs = self._projected(filter, ids, {**_FRAME_FIELDS, "env": 1} if envs else _FRAME_FIELDS, "read runs")
        added = extra({doc["_id"] for doc in docs}) if callable(extra) else extra
        frame = flat.runs_frame_from_docs([*docs, *added])
        return (frame, [(doc["_id"], doc.get("env")) for doc in docs]) if envs else frame

    def run_envs(self, ids: list[str]) -> list[tuple[str, Any]]:
        """``(run id, env)`` of the runs among ``ids``, in :func:`~bench.store.base.runs_by_id`'s order."""
        return [(doc["_id"], doc.get("env")) for doc in self._projected(None, ids, {"env": 1}, "read runs")]

    def metrics_frame(self, run_ids: list[str]) -> Any:
        """The per-epoch DataFrame of ``find_metrics(run_ids)``."""
        return flat.metrics_frame_from_docs(self.find_metrics(run_ids))

    def _projected(self, filter: dict | None, ids: list[str] | None, fields: dict[str, int], action: str) -> list[dict]:
        if ids is not None:
            if isinstance(ids, str):
                raise StoreError("ids must be a list of run ids, not a single string.")
            queries = [{"_id": {"$in": chunk}} for chunk in chunked(list(ids), ID_CHUNK)]
        else:
            queries = [validate_filter(filter)]
        with self._reading(action):
            return [doc for query in queries for doc in self._coll("runs").find(query, fields)]

    # ------------------------------------------------------------------ metrics

    def upsert_metrics(self, docs: list[dict]) -> None:
        rows = prepare_metrics(docs)
        if rows:
            self._write("upsert_metrics", {"rows": rows}, f"save {len(rows)} metric documents")

    def _apply_upsert_metrics(self, args: dict[str, Any]) -> None:
        coll = self._coll("metrics")
        for chunk in chunked(args["rows"], _WRITE_CHUNK):
            replacements = [(key, {"_id": key, **doc}) for key, doc in ((metric_key(r, e), d) for r, e, d in chunk)]
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
        with self._reading("read metrics"):
            return list(self._coll("metrics").find({"run_id": run_id}, {"_id": 0}, sort=[("epoch", 1)]))

    def find_metrics(self, run_ids: list[str]) -> list[dict]:
        with self._reading("read metrics"):
            return list(self._find_for_runs("metrics", run_ids, "epoch"))

    def _find_for_runs(self, collection: str, run_ids: list[str], then: str) -> Iterator[dict]:
        """The documents of ``collection`` whose run is one of ``run_ids``, by run then by
        ``then``, in ``$in`` lists of at most _IN_CHUNK ids (call inside ``_reading``)."""
        coll = self._coll(collection)
        for chunk in chunked(unique_ids(run_ids), _IN_CHUNK):
            yield from coll.find({"run_id": {"$in": chunk}}, {"_id": 0}, sort=[("run_id", 1), (then, 1)])

    # ------------------------------------------------------------------ steps

    def upsert_steps(self, run_id: str, steps: list[dict]) -> None:
        buckets = prepare_steps(run_id, steps)
        if buckets:
            args = {"run_id": run_id, "buckets": {str(b): entries for b, entries in buckets.items()}}
            self._write("upsert_steps", args, f"save steps of run {run_id!r}")

    def _apply_upsert_steps(self, args: dict[str, Any]) -> None:
        run_id = args["run_id"]
        updates = [
            (
                {"_id": bucket_key(run_id, int(bucket))},
                {
                    "$set": {
                        "run_id": run_id,
                        "bucket": int(bucket),
                        **{f"steps.{step}": fields for step, fields in entries.items()},
                    }
                },
            )
            for bucket, entries in args["buckets"].items()
        ]
        coll = self._coll("steps")
        if self._bulk_write:
            try:
                coll.bulk_write([UpdateOne(f, u, upsert=True) for f, u in updates], ordered=False)
                return
            except TypeError:
                self._bulk_write = False  # mongomock, as for metrics
        for where, update in updates:
            coll.update_one(where, update, upsert=True)

    def find_steps(self, run_ids: list[str]) -> list[dict]:
        with self._reading("read steps"):
            return [step for doc in self._find_for_runs("steps", run_ids, "bucket") for step in unpack_bucket(doc)]

    # ------------------------------------------------------------------ studies

    def save_study(self, name: str, doc: dict) -> None:
        fields = prepare_study(name, doc)
        self._write("save_study", {"name": name, "fields": fields}, f"save study {name!r}")

    def _apply_save_study(self, args: dict[str, Any]) -> None:
        name, fields = args["name"], args["fields"]
        coll = self._coll("studies")
        if fields:
            coll.update_one({"_id": name}, {"$set": fields}, upsert=True)
        elif coll.find_one({"_id": name}, {"_id": 1}) is None:
            try:
                coll.insert_one({"_id": name})
            except DuplicateKeyError:
                pass  # saved meanwhile by another process

    def get_study(self, name: str) -> dict | None:
        with self._reading("read a study"):
            return self._coll("studies").find_one({"_id": name})

    def list_studies(self) -> list[dict]:
        with self._reading("list studies"):
            return list(self._coll("studies").find({}, sort=[("_id", 1)]))

    # ------------------------------------------------------------------ housekeeping

    def info(self) -> dict:
        with self._reading("describe the store"):
            counts = {
                name: int(self._coll(name).count_documents({}))
                for name in ("runs", "metrics", "studies")
            }
            counts["step_buckets"] = int(self._coll("steps").count_documents({}))
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
            "journal": str(self.journal.path),
            "journal_pending": self.journal.pending(),
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


#: How each journaled write is applied (online and on replay).
_APPLY: dict[str, Callable[[MongoStore, dict[str, Any]], None]] = {
    "upsert_run": MongoStore._apply_upsert_run,
    "start_attempt": MongoStore._apply_start_attempt,
    "update_runs": MongoStore._apply_update_runs,
    "upsert_metrics": MongoStore._apply_upsert_metrics,
    "upsert_steps": MongoStore._apply_upsert_steps,
    "save_study": MongoStore._apply_save_study,
}


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


def _server_identity(uri: str | None, location: str) -> str:
    """The hosts a URI names (no user, password or options): what a journal is kept per."""
    if not uri:
        return location
    scheme, _, rest = uri.partition("://")
    rest = rest.split("?", 1)[0]
    hosts = rest[rest.rfind("@") + 1 :].partition("/")[0]
    return f"{scheme}://{hosts}"


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

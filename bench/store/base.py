"""What every result store shares: the protocol, the document rules and ``open_store``.

Two backends (an embedded SQLite file and MongoDB) must accept the same writes and
return documents of the same shape, so everything that decides *what* is written
lives here: :func:`sanitize` makes any value JSON- and BSON-safe, the run-field
checks mirror the ``$jsonSchema`` validator that ``store/mongo-init.js`` installs,
and the merge helpers give both stores identical ``$set``/``$addToSet`` results.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import socket
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import unquote

from bench.errors import QueryError, StoreError
from bench.store.size import IDENTITY_FIELDS, MAX_DOCUMENT_BYTES, fit

SCHEMA_VERSION = 2
"""Version of the document layout; the stores set it on every run they write.

1: runs, metrics, studies. 2: step buckets; runs carry ``driver`` and ``attempt_id``
(which grid runs the current attempt). Documents of version 1 read unchanged."""

RUN_STATUSES: tuple[str, ...] = (
    "pending",
    "running",
    "completed",
    "failed",
    "diverged",
    "interrupted",
)

#: Outcomes a grid never re-runs by itself (``bench store reset`` re-queues them).
FINISHED_STATUSES: tuple[str, ...] = ("completed", "diverged")

STALE_AFTER = 300.0
"""Seconds without a heartbeat after which a ``running`` trial counts as abandoned."""

_MAX_NAME = 512  # characters in a run id or study name

DEFAULT_EMBEDDED_PATH = Path(".bench") / "results.sqlite"

#: Run fields whose values the stores index (MongoDB indexes, SQLite expression indexes).
INDEXED_RUN_PATHS: tuple[str, ...] = (
    "study",
    "status",
    "config.norm",
    "config.batch_size",
    "config.optimizer",
    "config.arch",
    "config.dataset",
)

#: The light validator on ``runs``. MongoDB enforces it server-side (installed by
#: ``store/mongo-init.js`` or by :class:`~bench.store.mongo.MongoStore` when it
#: creates the collection); both stores also check it before every write, so a
#: document one backend accepts is never refused by the other.
RUNS_JSON_SCHEMA: dict[str, Any] = {
    "bsonType": "object",
    "required": ["_id", "schema_version"],
    "properties": {
        "_id": {"bsonType": "string"},
        "study": {"bsonType": "array", "items": {"bsonType": "string"}},
        "config": {"bsonType": "object"},
        "status": {"enum": list(RUN_STATUSES)},
        "attempts": {"bsonType": ["int", "long"]},
        "started_at": {"bsonType": ["string", "null"]},
        "finished_at": {"bsonType": ["string", "null"]},
        "heartbeat_at": {"bsonType": ["string", "null"]},
        "env": {"bsonType": "object"},
        "summary": {"bsonType": "object"},
        "error": {"bsonType": ["string", "null"]},
        "schema_version": {"bsonType": ["int", "long"]},
    },
}

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MAX_DEPTH = 90  # MongoDB refuses documents nested deeper than 100 levels.
_KEY_REPLACED = ("$", ".", "\x00")


@runtime_checkable
class ResultStore(Protocol):
    """Where runs, per-epoch metrics and studies are kept."""

    kind: str
    location: str

    def upsert_run(
        self, run_id: str, fields: dict, *, study: str | None = None, on_insert: dict | None = None
    ) -> None:
        """Sets ``fields`` on the run (creating it), adds ``study`` to its list; ``on_insert``
        fields are set only when this write creates the run (MongoDB's ``$setOnInsert``)."""

    def get_run(self, run_id: str) -> dict | None: ...

    def find_runs(
        self,
        filter: dict | None = None,
        *,
        sort: list[tuple[str, int]] | None = None,
        limit: int = 0,
    ) -> list[dict]: ...

    def count_runs(self, filter: dict | None = None) -> int: ...

    def upsert_metrics(self, docs: list[dict]) -> None: ...

    def get_metrics(self, run_id: str) -> list[dict]: ...

    def find_metrics(self, run_ids: list[str]) -> list[dict]: ...

    def save_study(self, name: str, doc: dict) -> None: ...

    def get_study(self, name: str) -> dict | None: ...

    def list_studies(self) -> list[dict]: ...

    def claim_run(
        self, run_id: str, fields: dict, *, driver: str, stale_before: str, skip_finished: bool = True
    ) -> bool:
        """Atomically start an attempt of ``run_id`` for ``driver``, unless another driver
        holds it (see :func:`claim_filter`): sets ``fields``, adds 1 to ``attempts``."""
        ...

    def update_runs(self, filter: dict, fields: dict) -> int:
        """``$set`` ``fields`` on every run matching ``filter`` (atomically per run, the
        filter re-checked at write time); returns how many runs matched."""
        ...

    def status_counts(self) -> dict[str, dict[str, int]]:
        """``{study: {status: runs}}``; runs in no study count under ``""``."""
        ...

    def upsert_steps(self, run_id: str, steps: list[dict]) -> None: ...

    def find_steps(self, run_ids: list[str]) -> list[dict]: ...

    def sync(self) -> int:
        """Replays writes kept aside while the server was unreachable; returns how many."""
        ...

    def info(self) -> dict: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- sanitize


def sanitize(doc: Any) -> Any:
    """Return a JSON- and BSON-safe copy of ``doc``; never raises.

    NaN and ±inf become ``None``; mapping keys lose ``$``, ``.`` and NUL (replaced by
    ``_``, with ``_2``, ``_3``… appended if two keys collide); numpy/torch scalars and
    arrays become Python numbers and lists; tuples become lists and sets sorted lists;
    dates become ISO strings, paths strings, and anything else ``str(obj)``.
    """
    try:
        return _sanitize(doc, 0, set())
    except Exception:  # a hostile __str__/__iter__ must not break a write
        return _fallback_str(doc)


def _sanitize(obj: Any, depth: int, active: set[int]) -> Any:
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        value = int(obj)
        if _INT64_MIN <= value <= _INT64_MAX:
            return value
        try:
            return float(value)
        except OverflowError:
            return str(value)
    if isinstance(obj, float):
        number = float(obj)
        return number if math.isfinite(number) else None
    if isinstance(obj, str):
        return _clean_str(obj)
    if depth >= _MAX_DEPTH:
        return "<nested too deep>"
    if isinstance(obj, Mapping):
        return _guarded(obj, active, lambda: _sanitize_mapping(obj, depth, active), "{...}")
    if isinstance(obj, (list, tuple)):
        return _guarded(
            obj, active, lambda: [_sanitize(v, depth + 1, active) for v in obj], "[...]"
        )
    if isinstance(obj, (set, frozenset)):
        return _guarded(obj, active, lambda: _sorted_values(obj, depth, active), "[...]")
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return _fallback_str(obj)
    for method in ("tolist", "item"):  # numpy arrays/scalars, torch tensors, pandas
        fn = getattr(obj, method, None)
        if callable(fn):
            try:
                converted = fn()
            except Exception:
                continue
            if converted is not obj:
                return _sanitize(converted, depth + 1, active)
    return _fallback_str(obj)


def _guarded(obj: Any, active: set[int], build: Any, cycle: str) -> Any:
    key = id(obj)
    if key in active:
        return cycle
    active.add(key)
    try:
        return build()
    finally:
        active.discard(key)


def _sanitize_mapping(obj: Mapping, depth: int, active: set[int]) -> dict:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        # Fast path for the common case (metric rows): plain keys, plain values.
        kind = type(value)
        if kind is bool or value is None or (kind is str and value.isascii()):
            pass
        elif kind is float:
            if value - value != 0.0:  # NaN or ±inf
                value = None
        else:
            value = _sanitize(value, depth + 1, active)
        if type(key) is str and key.isascii() and key.isidentifier() and key not in out:
            out[key] = value
            continue
        name = key if isinstance(key, str) else str(_sanitize(key, depth + 1, active))
        name = _clean_str(name)
        for ch in _KEY_REPLACED:
            name = name.replace(ch, "_")
        if name in out:
            n = 2
            while f"{name}_{n}" in out:
                n += 1
            name = f"{name}_{n}"
        out[name] = value
    return out


def _sorted_values(values: Iterable, depth: int, active: set[int]) -> list:
    items = [_sanitize(v, depth + 1, active) for v in values]
    try:
        return sorted(items)
    except TypeError:
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))


def _clean_str(text: str) -> str:
    text = str.__str__(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates cannot be stored as UTF-8
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _fallback_str(obj: Any) -> str:
    try:
        return _clean_str(str(obj))
    except Exception:
        return f"<unprintable {type(obj).__name__}>"


_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
)


def dumps(doc: Any) -> str:
    """Compact JSON text of an already-sanitized document."""
    return _ENCODER.encode(doc)


# --------------------------------------------------------------------------- run rules

_BSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "int": (int,),
    "long": (int,),
    "double": (float,),
    "object": (dict,),
    "array": (list,),
    "bool": (bool,),
}


def _schema_type_ok(value: Any, bson_type: str | list[str]) -> bool:
    names = [bson_type] if isinstance(bson_type, str) else bson_type
    for name in names:
        if name == "null" and value is None:
            return True
        types = _BSON_TYPES.get(name, ())
        if types and isinstance(value, types) and (name == "bool" or not isinstance(value, bool)):
            return True
    return False


def _schema_rule_text(rule: Mapping[str, Any]) -> str:
    if "enum" in rule:
        return "one of " + ", ".join(repr(v) for v in rule["enum"])
    kinds = rule["bsonType"]
    kinds = [kinds] if isinstance(kinds, str) else kinds
    text = " or ".join("integer" if k in ("int", "long") else k for k in dict.fromkeys(kinds))
    if "items" in rule:
        text += f" of {rule['items']['bsonType']}s"
    return text


def check_run_document(doc: Mapping[str, Any]) -> None:
    """Raise :class:`StoreError` unless ``doc`` satisfies :data:`RUNS_JSON_SCHEMA`."""
    for name in RUNS_JSON_SCHEMA["required"]:
        if name not in doc:
            raise StoreError(f"A run document must have the field {name!r}.")
    for name, rule in RUNS_JSON_SCHEMA["properties"].items():
        if name not in doc:
            continue
        value = doc[name]
        ok = (value in rule["enum"]) if "enum" in rule else _schema_type_ok(value, rule["bsonType"])
        if ok and "items" in rule:
            ok = all(_schema_type_ok(v, rule["items"]["bsonType"]) for v in value)
        if not ok:
            raise StoreError(
                f"Refused to store run {doc.get('_id')!r}: field {name!r} is {value!r}, "
                f"but it must be {_schema_rule_text(rule)}. Run documents follow the "
                "schema that store/mongo-init.js installs; other top-level fields are free."
            )


def check_name(kind: str, value: Any) -> str:
    """A run id or study name: a non-empty string of at most 512 characters."""
    if not isinstance(value, str) or not value:
        raise StoreError(f"A {kind} must be a non-empty string, got {value!r}.")
    if len(value) > _MAX_NAME:
        raise StoreError(
            f"A {kind} must be at most {_MAX_NAME} characters, got one of {len(value):,} "
            f"starting {value[:40]!r}."
        )
    return value


_CREDENTIALS = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@]+@")


def redact_credentials(doc: Any) -> Any:
    """``scheme://user:secret@host`` → ``scheme://user:***@host`` in every string of a
    sanitized document: a password in a traceback or a command line is never stored."""
    if isinstance(doc, str):
        return _CREDENTIALS.sub(r"\1***@", doc) if "://" in doc else doc
    if isinstance(doc, dict):
        return {key: redact_credentials(value) for key, value in doc.items()}
    if isinstance(doc, list):
        return [redact_credentials(value) for value in doc]
    return doc


def prepare_run_update(
    run_id: str, fields: Mapping[str, Any], study: str | None
) -> tuple[dict[str, Any], str | None]:
    """Validate one ``upsert_run`` call and return ``($set fields, study to add)``.

    A ``study`` entry in ``fields`` replaces the list; if ``study`` is also given it is
    merged into that list here (MongoDB cannot ``$set`` and ``$addToSet`` one field).
    """
    check_name("run id", run_id)
    if study is not None:
        check_name("study name", study)
    if not isinstance(fields, Mapping):
        raise StoreError(f"Run fields must be a mapping of field name to value, got {fields!r}.")
    clean = redact_credentials(sanitize(dict(fields)))
    if "_id" in clean and clean.pop("_id") != run_id:
        raise StoreError(
            f"Run {run_id!r}: the fields carry a different '_id'; a run's id cannot change."
        )
    clean["schema_version"] = SCHEMA_VERSION
    if study is not None and isinstance(clean.get("study"), list):
        if study not in clean["study"]:
            clean["study"].append(study)
        study = None
    # Measured as the document this write alone would make (id and added study included).
    whole = fit({"_id": run_id, **clean, **({"study": [study]} if study is not None else {})},
                MAX_DOCUMENT_BYTES, (*IDENTITY_FIELDS, "study"))
    clean = {k: v for k, v in whole.items() if k != "_id" and (k != "study" or "study" in clean)}
    check_run_document({"_id": run_id, **clean})
    return clean, study


def prepare_on_insert(run_id: str, on_insert: Mapping[str, Any] | None, set_fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the ``on_insert`` fields of one ``upsert_run`` call: those not also set by
    the call (a field the call sets takes that value either way, as on MongoDB)."""
    if on_insert is None:
        return {}
    if not isinstance(on_insert, Mapping):
        raise StoreError(f"on_insert must be a mapping of field name to value, got {on_insert!r}.")
    clean = redact_credentials(sanitize(dict(on_insert)))
    for name in ("_id", "study"):
        if name in clean:
            raise StoreError(f"Run {run_id!r}: on_insert cannot set {name!r}; give it to upsert_run itself.")
    clean = {k: v for k, v in clean.items() if k not in set_fields}
    check_run_document({"_id": run_id, **set_fields, **clean})  # the document the insert would make
    return clean


def prepare_runs_update(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the ``$set`` fields of an ``update_runs`` call (many runs at once)."""
    if not isinstance(fields, Mapping):
        raise StoreError(f"Run fields must be a mapping of field name to value, got {fields!r}.")
    clean = redact_credentials(sanitize(dict(fields)))
    for name in ("_id", "study"):
        if name in clean:
            raise StoreError(
                f"update_runs cannot set {name!r} on many runs at once; use upsert_run for one run."
            )
    clean["schema_version"] = SCHEMA_VERSION
    clean = fit(clean, MAX_DOCUMENT_BYTES, IDENTITY_FIELDS)
    check_run_document({"_id": "(each matching run)", **clean})
    return clean


def apply_run_update(
    doc: dict[str, Any] | None, run_id: str, set_fields: Mapping[str, Any], study: str | None,
    on_insert: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The document MongoDB's ``{$set, $addToSet, $setOnInsert}`` upsert would leave behind."""
    result: dict[str, Any] = dict(doc) if doc is not None else {"_id": run_id, **(on_insert or {})}
    result.update(set_fields)
    if study is not None:
        studies = result.get("study")
        if studies is None:
            result["study"] = [study]
        elif not isinstance(studies, list):
            raise StoreError(
                f"Run {run_id!r} has a non-list 'study' field ({studies!r}); cannot add "
                f"study {study!r} to it."
            )
        elif study not in studies:
            result["study"] = [*studies, study]
    return result


def stale_before(stale_after: float) -> str:
    """The heartbeat time (ISO-8601 UTC, as stored) at or before which a running trial is
    abandoned: ``stale_after`` seconds ago."""
    moment = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=stale_after)
    return moment.isoformat(timespec="seconds")


def stale_filter(stale_before: str) -> dict[str, Any]:
    """Runs left ``running`` by a driver that stopped beating: no heartbeat since
    ``stale_before`` (an ISO-8601 UTC time, compared as text), or none at all."""
    return {"status": "running", "$or": [{"heartbeat_at": {"$lte": stale_before}}, {"heartbeat_at": None}]}


def claim_filter(driver: str, stale_before: str, skip_finished: bool) -> dict[str, Any]:
    """The runs ``driver`` may start an attempt of: not ``running`` under another driver
    whose heartbeat is newer than ``stale_before`` and, with ``skip_finished``, not
    already completed or diverged."""
    free: dict[str, Any] = {
        "$or": [
            {"status": {"$ne": "running"}},
            {"driver": driver},
            {"heartbeat_at": {"$lte": stale_before}},
            {"heartbeat_at": None},
        ]
    }
    if skip_finished:
        return {"$and": [{"status": {"$nin": list(FINISHED_STATUSES)}}, free]}
    return free


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (field 22 of ``/proc/<pid>/stat``, clock ticks since
    boot), which tells a process from a later one given the same pid; None where there is
    no ``/proc`` or no such process."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` from the state on (field 3); None when unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def driver_gone(driver: Any, driver_start: Any = None) -> bool:
    """Whether the grid driver ``host:pid:token`` ran on this host and has ended: its pid
    is no process, a zombie, or a process started at another time than ``driver_start``
    (the pid was reused). A driver on another host, or one this host cannot check, counts
    as alive (its heartbeat decides)."""
    parts = driver.split(":") if isinstance(driver, str) else []
    if len(parts) < 2 or parts[0] != socket.gethostname() or not parts[1].isdigit() or os.name != "posix":
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    if Path("/proc/self/stat").exists():
        fields = _proc_stat(pid)
        if fields is None:
            return not Path(f"/proc/{pid}").exists()
        return fields[0] in ("Z", "X") or (isinstance(driver_start, str) and len(fields) > 19 and fields[19] != driver_start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


HISTORY_KEPT = 50  # attempts a run's ``history`` keeps, the latest


def history_entry(
    outcome: str, error: str | None, started_at: str | None, finished_at: str, **more: Any
) -> dict[str, Any]:
    """One attempt of a run as its ``history`` keeps it: outcome, the error's last line,
    host, start and end, and ``more`` (the Ray node it ran on, the epoch it resumed at)
    where known. The host is the one the attempt ran on when ``more`` names a node."""
    lines = [line for line in (error or "").strip().splitlines() if line.strip()]
    node = more.get("node") or {}
    return {
        "outcome": outcome,
        "error": lines[-1].strip() if lines else None,
        "host": node.get("hostname") or socket.gethostname(),
        "started_at": started_at,
        "finished_at": finished_at,
        **{k: v for k, v in more.items() if v is not None},
    }


def with_history(run: Mapping[str, Any] | None, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's ``history`` with ``entry`` appended (the last :data:`HISTORY_KEPT`)."""
    past = run.get("history") if run else None
    return [*(past if isinstance(past, list) else []), entry][-HISTORY_KEPT:]


def prepare_claim(run_id: str, fields: Mapping[str, Any], driver: str, attempt_id: str) -> dict[str, Any]:
    """The ``$set`` fields of a claim: the caller's fields, ``status: running``, the driver
    and a fresh attempt id (what makes a replayed claim count once)."""
    check_name("driver", driver)
    clean, _ = prepare_run_update(
        run_id, {**fields, "status": "running", "driver": driver, "attempt_id": attempt_id}, None
    )
    clean.pop("attempts", None)  # the store adds one, atomically
    return clean


def metric_key(run_id: str, epoch: int) -> str:
    """MongoDB ``_id`` of one metrics document."""
    return f"{run_id}:{epoch}"


def prepare_metrics(docs: Iterable[Mapping[str, Any]]) -> list[tuple[str, int, dict[str, Any]]]:
    """Sanitize metric documents into ``(run_id, epoch, doc)``; a later duplicate wins."""
    if isinstance(docs, Mapping):
        raise StoreError("upsert_metrics takes a list of metric documents, not one document.")
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for raw in docs:
        if not isinstance(raw, Mapping):
            raise StoreError(f"A metrics document must be a mapping, got {raw!r}.")
        doc = sanitize(raw)
        doc.pop("_id", None)
        run_id, epoch = doc.get("run_id"), doc.get("epoch")
        if not isinstance(run_id, str) or not run_id:
            raise StoreError(
                f"Every metrics document needs a non-empty string 'run_id'; got {run_id!r}."
            )
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise StoreError(
                f"Every metrics document needs an integer 'epoch'; got {epoch!r} for run "
                f"{run_id!r}."
            )
        rows[(run_id, epoch)] = fit(doc, MAX_DOCUMENT_BYTES, IDENTITY_FIELDS)
    return [(run_id, epoch, doc) for (run_id, epoch), doc in rows.items()]


def prepare_study(name: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and sanitize the fields ``save_study`` sets (without ``_id``)."""
    check_name("study name", name)
    if not isinstance(doc, Mapping):
        raise StoreError(f"A study document must be a mapping, got {doc!r}.")
    clean = redact_credentials(sanitize(dict(doc)))
    if "_id" in clean and clean.pop("_id") != name:
        raise StoreError(f"Study {name!r}: the document carries a different '_id'.")
    return fit(clean, MAX_DOCUMENT_BYTES, IDENTITY_FIELDS)


def unique_ids(run_ids: Iterable[str]) -> list[str]:
    """Sorted distinct run ids (the order ``find_metrics`` returns)."""
    if isinstance(run_ids, str):
        raise StoreError("find_metrics takes a list of run ids, not a single string.")
    return sorted({check_name("run id", r) for r in run_ids})


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise QueryError(f"limit must be a non-negative integer (0 means no limit), got {limit!r}.")
    return limit


T = TypeVar("T")


def chunked(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


ID_CHUNK = 500  # run ids per $in list of a query by id


def runs_by_id(store: ResultStore, ids: Iterable[str], filter: dict | None = None) -> list[dict]:
    """The runs among ``ids`` that match ``filter``: the one read of "these runs", in
    ``$in`` lists of :data:`ID_CHUNK` ids (a study may hold tens of thousands)."""
    out: list[dict] = []
    for chunk in chunked(list(ids), ID_CHUNK):
        by_id = {"_id": {"$in": chunk}}
        out += store.find_runs({"$and": [by_id, filter]} if filter else by_id)
    return out


# --------------------------------------------------------------------------- URIs

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_SECRET_OPTIONS = {
    "password",
    "tlscertificatekeyfilepassword",
    "sslpemkeypassword",
    "authmechanismproperties",
}


def mask_uri(uri: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://user:***@host``; other text unchanged."""
    try:
        scheme, sep, rest = uri.partition("://")
        if not sep:
            return uri
        query_at = rest.find("?")
        end = len(rest) if query_at < 0 else query_at
        at = rest.rfind("@", 0, end)
        if at >= 0:
            user, colon, password = rest[:at].partition(":")
            if colon and password:
                rest = f"{user}:***{rest[at:]}"
        head, qsep, query = rest.partition("?")
        if qsep:
            parts = []
            for item in query.split("&"):
                key, eq, _value = item.partition("=")
                parts.append(f"{key}=***" if eq and key.lower() in _SECRET_OPTIONS else item)
            rest = f"{head}?{'&'.join(parts)}"
        return f"{scheme}://{rest}"
    except Exception:
        return "<unreadable URI>"


def mask_command(command: str) -> str:
    """A command line with the password of every URI in it masked (:func:`mask_uri` per word)."""
    return re.sub(r"\S*://\S*", lambda m: mask_uri(m.group(0)), redact_credentials(command))


def uri_password(uri: str) -> str | None:
    """The password in a URI's user info, if any (used to scrub error messages)."""
    _scheme, sep, rest = uri.partition("://")
    if not sep:
        return None
    query_at = rest.find("?")
    at = rest.rfind("@", 0, len(rest) if query_at < 0 else query_at)
    if at < 0:
        return None
    _user, colon, password = rest[:at].partition(":")
    return password if colon and password else None


def scrub(text: str, uri: str | None) -> str:
    """Remove a URI's password (raw and percent-decoded) from an error text."""
    password = uri_password(uri) if uri else None
    if password:
        for secret in {password, unquote(password)}:
            if secret:
                text = text.replace(secret, "***")
    return text


def is_mongo_uri(uri: str) -> bool:
    return uri.startswith(("mongodb://", "mongodb+srv://"))


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def open_store(uri: str | os.PathLike[str] | None = None, *, read_only: bool = False) -> ResultStore:
    """Open the result store named by ``uri``.

    ``read_only``: for commands that only read (listing, export, reports): an embedded
    store is opened with SQLite's ``mode=ro`` (a store on a read-only file, directory or
    mount can be read) and must exist already (:class:`StoreError` otherwise): nothing is
    created for a reader.

    ``None`` means ``$BENCH_MONGO_URI``, else ``$BENCH_STORE``, else the embedded file
    ``.bench/results.sqlite`` under the current directory. ``mongodb://`` and
    ``mongodb+srv://`` URIs open MongoDB (database from the URI path, else
    ``$BENCH_MONGO_DB``, else ``bench``); ``sqlite:///path`` or a plain path opens the
    embedded SQLite store.
    """
    if uri is None:
        uri = _env("BENCH_MONGO_URI") or _env("BENCH_STORE") or str(DEFAULT_EMBEDDED_PATH)
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri.strip():
        raise StoreError(
            f"A result store location must be a non-empty string, got {uri!r}. Use a "
            "mongodb:// or mongodb+srv:// URI, sqlite:///path/to/results.sqlite, or a file path."
        )
    uri = uri.strip()
    if is_mongo_uri(uri):
        from bench.store.mongo import MongoStore

        return MongoStore(uri)
    if uri.startswith("sqlite://"):
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        if not path:
            raise StoreError(
                f"The SQLite URI {uri!r} names no file. Write sqlite:///relative/path.sqlite "
                "or sqlite:////absolute/path.sqlite, or give the path alone."
            )
        from bench.store.embedded import EmbeddedStore

        return EmbeddedStore(path, read_only=read_only)
    scheme, sep, _rest = uri.partition("://")
    if sep and _SCHEME.fullmatch(scheme):
        raise StoreError(
            f"Unsupported result store URI scheme {scheme + '://'!r} in {mask_uri(uri)!r}. "
            "Allowed: mongodb://, mongodb+srv://, sqlite:///path, or a plain file path for "
            "the embedded store."
        )
    from bench.store.embedded import EmbeddedStore

    return EmbeddedStore(uri, read_only=read_only)

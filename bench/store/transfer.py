"""Moving results: JSON Lines export and import, flat tables, and store-to-store copy.

A JSON Lines export holds everything needed to rebuild a store (or one study of it): a
header line, then one ``{"collection": ..., "doc": ...}`` line per study, run, metrics
document and step bucket. Importing it is a sequence of the stores' own upserts, so an
import (or a copy) run twice leaves the same store, and a run already completed or
diverged in the target is never replaced by an unfinished copy of it. ``.gz`` files are
compressed transparently.

CSV and Parquet exports are flat tables for analysis (``runs``: one row per run with
``config.*``, ``derived.*``, ``summary.*`` and ``env.*`` columns; ``metrics``: one row per
run and epoch; ``steps``: one row per run and step). They cannot be imported back.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import StoreError
from bench.provenance import utcnow
from bench.store.base import FINISHED_STATUSES, SCHEMA_VERSION, chunked, dumps
from bench.store.steps import STEPS_PER_BUCKET, steps_frame

if TYPE_CHECKING:
    import pandas as pd

    from bench.store.base import ResultStore

EXPORT_FORMAT = "bench-results"
EXPORT_VERSION = 1
COLLECTIONS = ("studies", "runs", "metrics", "steps")
TABLES = ("runs", "metrics", "steps")
FORMATS = ("jsonl", "csv", "parquet")

_RUN_CHUNK = 500  # runs whose metrics and steps are read at once
_WRITE_BATCH = 5000  # metric documents per upsert on import
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_RUN_COLUMNS = ("run_id", "status", "study", "attempts", "started_at", "finished_at", "heartbeat_at")
_RUN_PREFIXES = ("config.", "derived.", "summary.", "env.")

Item = tuple[str, dict[str, Any]]


def format_of(path: str | Path, fmt: str | None) -> str:
    """The export format: ``fmt`` if given, else read from the file name's suffix."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise StoreError(f"Unknown export format {fmt!r}. Valid formats: {', '.join(FORMATS)}.")
        return fmt
    suffixes = Path(path).suffixes
    suffix = suffixes[-2] if suffixes[-1:] == [".gz"] and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
    if suffix.lower() in _SUFFIXES:
        return _SUFFIXES[suffix.lower()]
    raise StoreError(
        f"Cannot tell the format of {str(path)!r} from its name; give --format "
        f"({', '.join(FORMATS)}) or name the file .jsonl, .jsonl.gz, .csv or .parquet."
    )


# --------------------------------------------------------------------------- documents


def _selected_runs(store: ResultStore, study: str | None) -> list[dict[str, Any]]:
    return store.find_runs({"study": study} if study else None)


def export_documents(store: ResultStore, study: str | None = None) -> Iterator[Item]:
    """Every document of ``store`` (or of one study and its runs), as ``(collection, doc)``."""
    if study is not None:
        found = store.get_study(study)
        if found is None and not store.count_runs({"study": study}):
            raise StoreError(
                f"No study {study!r} in the {store.kind} store {store.location}; "
                "`bench store status` lists the studies."
            )
        studies = [found] if found else []
    else:
        studies = store.list_studies()
    for doc in studies:
        yield "studies", doc
    runs = _selected_runs(store, study)
    for doc in runs:
        yield "runs", doc
    ids = [doc["_id"] for doc in runs]
    for chunk in chunked(ids, _RUN_CHUNK):  # streamed: an export never holds a large store in memory
        for doc in store.find_metrics(chunk):
            yield "metrics", doc
    for chunk in chunked(ids, _RUN_CHUNK):
        bucket: list[dict[str, Any]] = []
        key: tuple[str, int] | None = None
        for record in store.find_steps(chunk):
            this = (record["run_id"], record["step"] // STEPS_PER_BUCKET)
            if key is not None and this != key and bucket:
                yield "steps", {"run_id": key[0], "steps": bucket}
                bucket = []
            key = this
            bucket.append({k: v for k, v in record.items() if k != "run_id"})
        if key is not None and bucket:
            yield "steps", {"run_id": key[0], "steps": bucket}


def import_documents(store: ResultStore, items: Iterable[Item]) -> dict[str, int]:
    """Upserts exported documents into ``store``; returns counts per collection.

    ``runs_kept`` counts runs left as they were because the target already holds them
    completed or diverged and the incoming copy is not.
    """
    counts = dict.fromkeys([*COLLECTIONS, "runs_kept"], 0)
    runs: list[dict[str, Any]] = []
    metrics: list[dict[str, Any]] = []

    def flush_runs() -> None:
        counts["runs"] += len(runs)
        counts["runs_kept"] += _import_runs(store, runs)
        runs.clear()

    def flush_metrics() -> None:
        store.upsert_metrics(metrics)
        counts["metrics"] += len(metrics)
        metrics.clear()

    for collection, doc in items:
        if collection not in COLLECTIONS or not isinstance(doc, dict):
            raise StoreError(
                f"Unknown entry {collection!r} in the export; expected one of {', '.join(COLLECTIONS)} "
                "with a document."
            )
        if collection != "runs" and runs:
            flush_runs()
        if collection != "metrics" and metrics:
            flush_metrics()
        if collection == "studies":
            name = doc.get("_id")
            store.save_study(name, {k: v for k, v in doc.items() if k != "_id"})
            counts["studies"] += 1
        elif collection == "runs":
            runs.append(doc)
            if len(runs) >= _RUN_CHUNK:
                flush_runs()
        elif collection == "metrics":
            metrics.append(doc)
            if len(metrics) >= _WRITE_BATCH:
                flush_metrics()
        else:
            store.upsert_steps(doc.get("run_id"), list(doc.get("steps") or []))
            counts["steps"] += len(doc.get("steps") or [])
    if runs:
        flush_runs()
    if metrics:
        flush_metrics()
    return counts


def _import_runs(store: ResultStore, docs: list[dict[str, Any]]) -> int:
    ids = [doc.get("_id") for doc in docs]
    held = {
        doc["_id"]
        for doc in store.find_runs({"_id": {"$in": [i for i in ids if isinstance(i, str)]}, "status": {"$in": list(FINISHED_STATUSES)}})
    }
    kept = 0
    for doc in docs:
        run_id = doc.get("_id")
        if run_id in held and doc.get("status") not in FINISHED_STATUSES:
            kept += 1
            fields: dict[str, Any] = {}
        else:
            fields = {k: v for k, v in doc.items() if k not in ("_id", "study")}
        studies = doc.get("study") if isinstance(doc.get("study"), list) else []
        store.upsert_run(run_id, fields, study=studies[0] if studies else None)
        for name in studies[1:]:
            store.upsert_run(run_id, {}, study=name)
    return kept


def copy_store(source: ResultStore, target: ResultStore, study: str | None = None) -> dict[str, int]:
    """Copies every document of ``source`` (or one study) into ``target``."""
    return import_documents(target, export_documents(source, study))


# --------------------------------------------------------------------------- JSON Lines


def _open_text(path: Path, mode: str, compressed: bool) -> io.TextIOBase:
    if compressed:
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8")


def export_jsonl(store: ResultStore, path: str | Path, study: str | None = None) -> dict[str, int]:
    """Writes the export to ``path`` (complete or not at all: a temporary file is renamed
    at the end); returns the number of documents per collection (steps: step records)."""
    target = Path(path)
    counts = dict.fromkeys(COLLECTIONS, 0)
    header = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "schema_version": SCHEMA_VERSION,
        "source": f"{store.kind} {store.location}",
        "study": study,
        "exported_at": utcnow(),
    }
    partial = target.with_name(target.name + ".partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _open_text(partial, "w", target.suffix == ".gz") as out:
            out.write(dumps(header) + "\n")
            for collection, doc in export_documents(store, study):
                counts[collection] += len(doc["steps"]) if collection == "steps" else 1
                out.write(dumps({"collection": collection, "doc": doc}) + "\n")
        partial.replace(target)
    except OSError as exc:
        raise StoreError(f"Cannot write the export {target}: {exc}.") from exc
    finally:
        partial.unlink(missing_ok=True)
    return counts


def read_jsonl(path: str | Path) -> Iterator[Item]:
    """The ``(collection, doc)`` entries of a JSON Lines export, its header checked."""
    source = Path(path)
    try:
        handle = _open_text(source, "r", source.suffix == ".gz")
    except OSError as exc:
        raise StoreError(f"Cannot read the export {source}: {exc}.") from exc
    with handle:
        try:
            first = handle.readline()
        except (OSError, EOFError, UnicodeDecodeError):
            first = ""
        try:
            header = json.loads(first)
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
            raise StoreError(
                f"{source} is not a bench results export (its first line should be the "
                f"{EXPORT_FORMAT!r} header written by `bench store export`). CSV and Parquet "
                "exports are tables for analysis and cannot be imported."
            )
        if not isinstance(header.get("version"), int) or header["version"] > EXPORT_VERSION:
            raise StoreError(
                f"{source} is export format version {header.get('version')!r}; this bench reads "
                f"up to version {EXPORT_VERSION}. Upgrade bench."
            )
        for number, line in enumerate(handle, start=2):
            if not line.strip():
                continue
            entry = _parse(line, source, number)
            yield str(entry.get("collection")), entry.get("doc")  # type: ignore[misc]


def _parse(line: str, source: Path, number: int) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise StoreError(f"{source}, line {number}: not valid JSON ({exc}); the file is damaged.") from None
    if not isinstance(value, dict):
        raise StoreError(f"{source}, line {number}: expected a JSON object.")
    return value


def import_jsonl(store: ResultStore, path: str | Path) -> dict[str, int]:
    """Imports a JSON Lines export (see :func:`import_documents`)."""
    try:
        kind = format_of(path, None)
    except StoreError:
        kind = "jsonl"  # any name: the header line decides
    if kind != "jsonl":
        raise StoreError(
            f"{path} is a {kind} table: tables are for analysis and cannot be imported. Import a "
            "JSON Lines export (.jsonl or .jsonl.gz) written by `bench store export`."
        )
    return import_documents(store, read_jsonl(path))


# --------------------------------------------------------------------------- tables


def table_frame(store: ResultStore, table: str, study: str | None = None) -> pd.DataFrame:
    """One flat table of the store (or of one study): runs, metrics or steps."""
    import pandas as pd

    if table not in TABLES:
        raise StoreError(f"Unknown table {table!r}. Valid tables: {', '.join(TABLES)}.")
    runs = _selected_runs(store, study)
    ids = [doc["_id"] for doc in runs]
    if table == "runs":
        return _runs_table(runs)
    if table == "metrics":
        docs = store.find_metrics(ids)
        frame = pd.DataFrame(docs) if docs else pd.DataFrame(columns=["run_id", "epoch"])
        return _flat_cells(frame.reindex(columns=["run_id", "epoch", *sorted(set(frame.columns) - {"run_id", "epoch"})]))
    records = store.find_steps(ids)
    return _flat_cells(steps_frame(records))


def _runs_table(runs: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    if not runs:
        return pd.DataFrame(columns=list(_RUN_COLUMNS))
    rows = []
    for doc in runs:
        row = {k: v for k, v in doc.items() if k not in ("_id", "study")}
        row["run_id"] = doc.get("_id")
        row["study"] = ",".join(doc.get("study") or [])
        rows.append(row)
    frame = pd.json_normalize(rows, sep=".")
    leading = [c for c in _RUN_COLUMNS if c in frame.columns]
    grouped = [c for prefix in _RUN_PREFIXES for c in sorted(c for c in frame.columns if c.startswith(prefix))]
    rest = sorted(c for c in frame.columns if c not in leading and c not in grouped)
    return _flat_cells(frame[leading + grouped + rest])


def _kind(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "text"


def _flat_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Lists and documents become JSON text; a column mixing text, numbers or booleans
    becomes text (Parquet needs one type per column)."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype != object:
            continue
        values = frame[column].map(lambda v: dumps(v) if isinstance(v, (list, dict)) else v)
        kinds = {_kind(v) for v in values} - {None}
        if len(kinds) > 1:
            values = values.map(lambda v: v if _kind(v) in (None, "text") else dumps(v))
        frame[column] = values
    return frame


def export_table(store: ResultStore, path: str | Path, table: str, fmt: str, study: str | None = None) -> int:
    """Writes one table as CSV or Parquet; returns its number of rows."""
    frame = table_frame(store, table, study)
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            frame.to_csv(target, index=False)
        elif fmt == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise StoreError(
                    "Parquet export needs pyarrow, which is not installed: `pip install pyarrow` "
                    "(or reinstall bench with its dependencies), or export --format csv."
                ) from None
            frame.to_parquet(target, index=False)
        else:
            raise StoreError(f"Tables are exported as csv or parquet, not {fmt!r}; use jsonl for whole documents.")
    except OSError as exc:
        raise StoreError(f"Cannot write the export {target}: {exc}.") from exc
    return len(frame)

"""The embedded result store: one SQLite file in WAL mode, no server to run.

Why SQLite rather than an embedded MongoDB look-alike: measured on this workload,
montydb managed 27 upserts/s at 2,000 documents and has no bulk writes, no
``aggregate()`` and no unique-index enforcement; mongita lost writes with two
processes writing at once; PoloDB's binding computes ``$group`` wrongly and has no
compound indexes. The standard library's SQLite in WAL mode did 500k batched metric
upserts in 2.5 s, 48k single upserts/s, and filtered 10k runs on a JSON field in 5 ms.

Documents are stored as JSON text (``runs``, ``metrics``, ``steps``, ``studies`` tables; a
step record per row, where MongoDB groups them into bucket documents) and
queried with the MongoDB filter subset compiled by :mod:`bench.store.query`, so the
embedded and MongoDB stores answer the same filters with the same documents. Several
processes may share the file: every write is one ``BEGIN IMMEDIATE`` transaction
(read-modify-write under the write lock), readers never block writers, and a busy
database is waited on for up to ``busy_timeout`` seconds (30 s; ``$BENCH_STORE_BUSY_TIMEOUT``),
the switch of a new file to WAL included (:meth:`EmbeddedStore._enter_wal`).

A store that stays busy never stops a grid: a write is tried twice, then kept in a local
:class:`~bench.store.journal.Journal` (beside the file, or under ``$BENCH_JOURNAL_DIR``)
and training goes on; for ``retry_interval`` seconds further writes go straight to the
journal, then the next write, a read or ``bench store sync`` replays it in order, as the
MongoDB store does when its server is unreachable.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Union

from bench.errors import StoreError
from bench.store.base import (
    ID_CHUNK,
    INDEXED_RUN_PATHS,
    apply_run_update,
    check_limit,
    chunked,
    claim_filter,
    dumps,
    prepare_claim,
    prepare_metrics,
    prepare_on_insert,
    prepare_run_update,
    prepare_runs_update,
    prepare_study,
    unique_ids,
)
from bench.store import flat
from bench.store.journal import Journal, embedded_journal_path
from bench.store.query import compile_filter, compile_sort, filter_paths, json_path
from bench.store.steps import prepare_steps

log = logging.getLogger(__name__)

BUSY_TIMEOUT = 30.0  # seconds a write waits for another process's write lock
WRITE_TRIES = 2  # attempts of a write before it is journaled
_IN_CHUNK = 500  # run ids per IN (...) list; far below SQLite's parameter limit
_SCAN_IDS = 5_000  # from this many run ids on, the runs table may be scanned instead (_flat_runs_scanned)
#: Runs not in the store that a runs frame adds: documents, or a function of the ids found giving them.
Extra = Union[Sequence[dict], Callable[[set[str]], Sequence[dict]]]
_CACHE_KIB = 32_768  # page cache per connection
_MIN_SQLITE = (3, 38, 0)  # JSON functions built in; multiple recursive CTE terms


def _index_statements() -> list[str]:
    """Expression indexes for the indexed run fields.

    A compiled equality filter is an OR of "the value equals", "the value is a list"
    and "a prefix is a list"; with an index on each of those expressions SQLite can
    answer it with a multi-index OR instead of scanning every run.
    """
    expressions: dict[str, str] = {}
    for path in INDEXED_RUN_PATHS:
        if path == "study":  # a list: matched through json_each, no index applies
            continue
        segments = path.split(".")
        name = "_".join(segments)
        expressions[name] = f"json_extract(doc, '{json_path(path)}')"
        expressions[f"{name}_type"] = f"json_type(doc, '{json_path(path)}')"
        for i in range(1, len(segments)):
            prefix = ".".join(segments[:i])
            expressions[f"{'_'.join(segments[:i])}_type"] = f"json_type(doc, '{json_path(prefix)}')"
    return [
        f"CREATE INDEX IF NOT EXISTS runs_{name} ON runs ({expression})"
        for name, expression in expressions.items()
    ]


_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS metrics (run_id TEXT NOT NULL, epoch INTEGER NOT NULL, "
    "doc TEXT NOT NULL, PRIMARY KEY (run_id, epoch)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS steps (run_id TEXT NOT NULL, step INTEGER NOT NULL, "
    "doc TEXT NOT NULL, PRIMARY KEY (run_id, step)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS studies (id TEXT PRIMARY KEY, doc TEXT NOT NULL)",
    *_index_statements(),
    # Flat rows (bench/store/flat.py), derived from the documents in the same transaction:
    # `seq` is the run's rowid in `runs` (find_runs' order, so a scan needs no sort), `keys`
    # its KEY_FIELDS.
    "CREATE TABLE IF NOT EXISTS flat_shapes (id INTEGER PRIMARY KEY, spec TEXT NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS flat_texts (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS runs_flat (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, keys TEXT NOT NULL, "
    "shape INTEGER NOT NULL, nums BLOB NOT NULL, text TEXT, env INTEGER)",
    # `metrics_flat`: a run's metrics rows as one block (flat.Block) and its last epoch, a rowid table (blocks are large)
    "CREATE TABLE IF NOT EXISTS metrics_flat (run_id TEXT PRIMARY KEY, epochs BLOB NOT NULL, shapes BLOB NOT NULL, "
    "nums BLOB NOT NULL, texts TEXT, last_epoch INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS run_studies (study TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (study, seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)",
]

FILE_VERSION = 3
"""Layout of the SQLite file (``PRAGMA user_version``): 1 runs, metrics, studies; 2 steps;
3 flat rows (``runs_flat``, ``metrics_flat``, ``flat_shapes``, ``flat_texts``) and ``meta``. The documents
inside follow :data:`~bench.store.base.SCHEMA_VERSION`; the flat tables' own layout is
:data:`~bench.store.flat.FLAT_VERSION` (in ``meta``): derived data, rebuilt when it differs,
so a file stays readable by a bench of another flat version."""

#: Layouts this version opens: 0 is a new file, 1 lacks the steps table, 2 the flat rows.
#: Every schema statement is idempotent, so upgrading is running them all once, then
#: deriving the flat rows from the documents.
_UPGRADABLE = (0, 1, 2)


@contextmanager
def _decoding() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector while many documents are decoded.

    ``json.loads`` builds only acyclic containers, yet creating hundreds of thousands of
    them triggers collection after collection: pausing it reads 100,000 runs 40% faster.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class StoreBusy(StoreError):
    """Another process held the file's write lock for longer than the busy timeout."""


def _busy_timeout() -> float:
    """``$BENCH_STORE_BUSY_TIMEOUT`` (seconds), else :data:`BUSY_TIMEOUT`."""
    raw = os.environ.get("BENCH_STORE_BUSY_TIMEOUT", "").strip()
    try:
        return max(0.0, float(raw)) if raw else BUSY_TIMEOUT
    except ValueError:
        raise StoreError(
            f"BENCH_STORE_BUSY_TIMEOUT must be a number of seconds, got {raw!r}."
        ) from None


class EmbeddedStore:
    """Result store in a single SQLite file (see the module docstring for why)."""

    kind = "embedded"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float | None = None,
        journal: str | os.PathLike[str] | None = None,
        retry_interval: float = 30.0,
        read_only: bool = False,
    ):
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StoreError(
                f"The embedded result store needs SQLite {'.'.join(map(str, _MIN_SQLITE))} "
                f"or newer, but Python is linked against SQLite {sqlite3.sqlite_version}. "
                "Use a newer Python build, or set BENCH_MONGO_URI to use MongoDB instead."
            )
        raw = Path(path).expanduser()
        self.path = raw.absolute()
        self.location = str(self.path)
        self.read_only = read_only
        if read_only:
            self._check_exists()
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"Cannot create the directory for the result store {self.location}: {exc}. "
                    "Choose a writable location with BENCH_STORE or --store."
                ) from exc
        if self.path.is_dir():
            raise StoreError(
                f"The result store path {self.location} is a directory; give a file path "
                "such as .bench/results.sqlite."
            )
        self.busy_timeout = _busy_timeout() if busy_timeout is None else float(busy_timeout)
        self.journal = Journal(journal or embedded_journal_path(self.path))
        self.retry_interval = retry_interval
        self._offline_until = 0.0  # monotonic time before which writes go to the journal
        self._journal_pending = not read_only and self.journal.has_entries()
        self._lock = threading.RLock()
        self._inherited: list[sqlite3.Connection] = []
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._flat = False  # whether the file keeps flat rows (set when it is opened)
        self._shapes: dict[int, list[tuple[str, str]]] = {}  # flat_shapes, as read so far
        self._widths: dict[int, int] = {}  # their words per row, of shapes committed (ids never change)
        self._conn = self._connect()

    # ------------------------------------------------------------------ connection

    def _check_exists(self) -> None:
        """A read-only store must already be a store: nothing is created for a reader."""
        if not self.path.exists():
            raise StoreError(
                f"No store at {self.location}; run a grid first or pass --store (or set BENCH_STORE) "
                "to name an existing store."
            )
        if self.path.is_file() and self.path.stat().st_size == 0:
            raise StoreError(
                f"The file {self.location} is empty: it is not a bench result store. Run a grid first, "
                "or pass --store (or set BENCH_STORE) to name an existing store."
            )
        if not self.path.is_file() and not self.path.is_dir():
            raise StoreError(
                f"{self.location} is not a regular file, so it is not a bench result store. Pass --store "
                "(or set BENCH_STORE) to name an existing store file."
            )

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection that never writes (SQLite ``mode=ro``), so a store on a read-only file,
        directory or mount can be read; ``immutable=1`` where SQLite cannot create the WAL's
        shared-memory file beside it (nothing can write there either)."""
        base = f"{self.path.as_uri()}?mode=ro"
        for uri in (base, base + "&immutable=1"):
            conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError as exc:
                conn.close()
                if "unable to open" in str(exc) and "immutable" not in uri:
                    continue
                raise StoreError(f"Cannot read the result store {self.location}: {exc}.") from None
            except sqlite3.DatabaseError as exc:
                conn.close()
                raise self._error("open", exc) from None
            if version == 0 or version > FILE_VERSION:
                conn.close()
                what = "holds no bench tables" if version == 0 else f"has schema version {version}, newer than this bench"
                raise StoreError(f"The file {self.location} {what}: it is not a result store this bench can read. "
                                 "Pass --store (or set BENCH_STORE) to name an existing store.")
            # A file not yet upgraded (a reader never writes) is read from its documents alone.
            self._flat = version == FILE_VERSION and _flat_version(conn) == flat.FLAT_VERSION
            return conn
        raise StoreError(f"Cannot read the result store {self.location}.")  # pragma: no cover

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            return self._connect_read_only()
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(
                f"Cannot open the result store {self.location}: {exc}. Check that the "
                "path is writable, or choose another with BENCH_STORE or --store."
            ) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            mode = self._enter_wal(conn)
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"The result store {self.location} cannot use SQLite's WAL mode "
                    f"(journal mode is {mode!r}); put it on a local filesystem."
                )
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            self._ensure_schema(conn)
        except sqlite3.OperationalError as exc:
            conn.close()
            if disk_full(exc):
                raise self._error("create its tables", exc) from exc
            raise StoreError(
                f"Cannot use the result store {self.location}: {exc}. Check that the file "
                "and its directory are writable and on a local disk, or choose another "
                "location with BENCH_STORE or --store."
            ) from exc
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(
                f"The file {self.location} is not a usable bench result store: {exc}. {self._hint(exc)}"
            ) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _enter_wal(self, conn: sqlite3.Connection) -> str:
        """``PRAGMA journal_mode = WAL``, and the journal mode it leaves. While another
        process switches a new file to WAL (two grids starting on a new store), SQLite answers
        "database is locked" at once, without waiting on its busy handler: so wait here,
        up to the same busy timeout, and try again."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                return conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if not locked(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == FILE_VERSION and _flat_version(conn) == flat.FLAT_VERSION:
            self._flat = True
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > FILE_VERSION:
                raise StoreError(
                    f"The result store {self.location} has schema version {version}, newer "
                    f"than this bench supports ({FILE_VERSION}). Upgrade bench, or use "
                    "another store file."
                )
            if version not in _UPGRADABLE and version != FILE_VERSION:
                raise StoreError(
                    f"The result store {self.location} has unknown schema version {version}."
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            if version == 0 or _flat_version(conn) != flat.FLAT_VERSION:
                _rebuild_flat(conn, self.location, metrics_rows=version == FILE_VERSION and _flat_version(conn) == 3)
            conn.execute(f"PRAGMA user_version = {FILE_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._flat = True

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"The result store {self.location} is closed.")
        if os.getpid() != self._pid:
            # A forked child must not use its parent's connection; keep that object
            # alive (closing it here could release the parent's file locks).
            self._inherited.append(self._conn)
            self._pid = os.getpid()
            self._conn = self._connect()
        return self._conn

    @contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(action, exc) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._error(action, exc) from exc
                raise

    def _query(self, action: str, sql: str, params: Any = ()) -> list[tuple]:
        with self._lock:
            conn = self._connection()
            self._catch_up()
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error(action, exc) from exc

    def _query_together(self, action: str, queries: list[tuple[str, Any]]) -> list[list[tuple]]:
        """Several queries over one snapshot of the file (one read transaction)."""
        with self._lock:
            conn = self._connection()
            self._catch_up()
            try:
                conn.execute("BEGIN")
                try:
                    return [conn.execute(sql, params).fetchall() for sql, params in queries]
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._error(action, exc) from exc

    def _error(self, action: str, exc: sqlite3.Error) -> StoreError:
        if locked(exc):
            return StoreBusy(
                f"The result store {self.location} failed to {action}: {exc}. Another process held "
                f"the write lock for more than {self.busy_timeout:g} s; retry when it is done."
            )
        if disk_full(exc):
            return StoreError(
                f"The disk holding the result store {self.location} is full (it could not {action}). Free space "
                "on it, or choose another location with BENCH_STORE or --store, and run the same command again; "
                "finished trials are kept."
            )
        return StoreError(f"The result store {self.location} failed to {action}: {exc}. {self._hint(exc)}")

    def _hint(self, exc: sqlite3.Error) -> str:
        """What to do about an SQLite error, from its code: a corrupt file, a read-only one."""
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in str(exc):
            return (f"The file is not a valid bench result store (damaged, or another kind of file). Move it aside "
                    f"(mv {self.location} {self.location}.bad), then run again to start a new store, or restore it "
                    "from an export (bench store import).")
        if code == sqlite3.SQLITE_READONLY:
            return "The file or its directory is read-only: choose a writable location with BENCH_STORE or --store."
        return "Check that the file and its directory are writable."

    # ------------------------------------------------------------------ writes and journal

    def _run(self, op: str, args: dict[str, Any], action: str, kept_as: str | None = None) -> Any:
        """Applies one write (tried :data:`WRITE_TRIES` times while the file is busy), or
        keeps it in the journal (as ``kept_as``, default ``op``) when it stays busy; returns
        the write's result, or None when journaled."""
        with self._lock:
            self._connection()  # refuses a closed store before anything is journaled
            if time.monotonic() < self._offline_until:
                return self._keep(kept_as or op, args)
            for attempt in range(WRITE_TRIES):
                try:
                    if self._journal_pending:
                        self._replay()
                    return self._apply(op, args, action)
                except StoreBusy as exc:
                    busy = exc
            self._go_offline(busy)
            return self._keep(kept_as or op, args)

    def _apply(self, op: str, args: dict[str, Any], action: str = "replay a journaled write") -> Any:
        with self._write(action) as conn:
            return _APPLY[op](self, conn, args)

    def _keep(self, op: str, args: dict[str, Any]) -> None:
        self.journal.append(op, args)
        self._journal_pending = True
        return None

    def _go_offline(self, exc: StoreError) -> None:
        if self._offline_until == 0.0:
            log.warning(
                "%s Training goes on: writes are kept in %s and replayed by the next write once the "
                "file is free, or by `bench store sync`.", exc, self.journal.path,
            )
        self._offline_until = time.monotonic() + self.retry_interval

    def _replay(self) -> int:
        """Applies the journal in order (raises :class:`StoreBusy` if the file is still busy)."""
        applied = self.journal.replay(self._apply_journaled)
        self._journal_pending = False
        self._offline_until = 0.0
        return applied

    def _apply_journaled(self, op: str, args: dict[str, Any]) -> None:
        """One journaled write; one the store refuses (not a busy file) is set aside."""
        if op not in _APPLY:
            self.journal.reject(op, args, "unknown write")
            return
        try:
            self._apply(op, args)
        except StoreBusy:
            raise
        except StoreError as exc:
            self.journal.reject(op, args, str(exc))

    def _catch_up(self) -> None:
        """Before a read: this process's journaled writes, when the file is free again."""
        if self._journal_pending and time.monotonic() >= self._offline_until:
            try:
                self._replay()
            except StoreBusy as exc:
                self._go_offline(exc)

    # ------------------------------------------------------------------ runs

    def upsert_run(
        self, run_id: str, fields: dict, *, study: str | None = None, on_insert: dict | None = None
    ) -> None:
        set_fields, add_study = prepare_run_update(run_id, fields, study)
        args = {"run_id": run_id, "set": set_fields, "add_study": add_study}
        if on_insert:
            args["on_insert"] = prepare_on_insert(run_id, on_insert, set_fields)
        self._run("upsert_run", args, f"save run {run_id!r}")

    def _apply_upsert_run(self, conn: sqlite3.Connection, args: dict[str, Any]) -> None:
        run_id = args["run_id"]
        row = conn.execute("SELECT doc FROM runs WHERE id = ?", (run_id,)).fetchone()
        old = json.loads(row[0]) if row else None
        doc = apply_run_update(old, run_id, args["set"], args.get("add_study"), args.get("on_insert"))
        _put_run(conn, run_id, doc)

    def claim_run(
        self, run_id: str, fields: dict, *, driver: str, stale_before: str, skip_finished: bool = True
    ) -> bool:
        set_fields = prepare_claim(run_id, fields, driver, uuid.uuid4().hex)
        condition = claim_filter(driver, stale_before, skip_finished)
        compile_filter(condition)  # refuses a bad filter before anything is written or journaled
        args = {"run_id": run_id, "set": set_fields, "condition": condition}
        # Journaled, the condition cannot be checked: the grid planned this trial, so it runs.
        claimed = self._run("claim", args, f"start run {run_id!r}", kept_as="start_attempt")
        return True if claimed is None else bool(claimed)

    def _apply_claim(self, conn: sqlite3.Connection, args: dict[str, Any]) -> bool:
        run_id = args["run_id"]
        where, params = compile_filter(args["condition"])
        row = conn.execute("SELECT doc FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is not None:
            free = conn.execute(f"SELECT 1 FROM runs WHERE id = ? AND {where}", [run_id, *params]).fetchone()
            if free is None:
                return False
        self._apply_start_attempt(conn, {"run_id": run_id, "set": args["set"]})
        return True

    def _apply_start_attempt(self, conn: sqlite3.Connection, args: dict[str, Any]) -> None:
        """Starts an attempt; a replay counts it once (by its attempt id)."""
        run_id, set_fields = args["run_id"], args["set"]
        row = conn.execute("SELECT doc FROM runs WHERE id = ?", (run_id,)).fetchone()
        old = json.loads(row[0]) if row else None
        if old is not None and old.get("attempt_id") == set_fields.get("attempt_id"):
            return
        doc = apply_run_update(old, run_id, set_fields, None)
        attempts = doc.get("attempts")
        doc["attempts"] = (attempts if isinstance(attempts, int) else 0) + 1
        _put_run(conn, run_id, doc)

    def update_runs(self, filter: dict, fields: dict) -> int:
        set_fields = prepare_runs_update(fields)
        compile_filter(filter)  # refuses a bad filter before anything is written or journaled
        matched = self._run("update_runs", {"filter": filter, "set": set_fields}, "update runs")
        return 0 if matched is None else matched

    def _apply_update_runs(self, conn: sqlite3.Connection, args: dict[str, Any]) -> int:
        where, params = compile_filter(args["filter"])
        rows = conn.execute(f"SELECT rowid, id, doc FROM runs WHERE {where}", params).fetchall()
        docs = [(seq, run_id, apply_run_update(json.loads(doc), run_id, args["set"], None)) for seq, run_id, doc in rows]
        conn.executemany("UPDATE runs SET doc = ? WHERE id = ?", [(dumps(doc), run_id) for _, run_id, doc in docs])
        interned = _interned(conn)
        for seq, run_id, doc in docs:
            _put_run_flat(conn, seq, run_id, doc, interned)
        return len(rows)

    def status_counts(self) -> dict[str, dict[str, int]]:
        rows = self._query(
            "count runs per study and status",
            "SELECT CASE WHEN s.type = 'text' THEN s.value ELSE '' END AS study, "
            "CASE WHEN json_type(runs.doc, '$.status') = 'text' "
            "THEN json_extract(runs.doc, '$.status') ELSE '' END AS status, count(*) "
            "FROM runs LEFT JOIN json_each(CASE WHEN json_type(runs.doc, '$.study') = 'array' "
            "THEN runs.doc ELSE '{}' END, '$.study') AS s GROUP BY 1, 2 ORDER BY 1, 2",
        )
        counts: dict[str, dict[str, int]] = {}
        for study, status, n in rows:
            counts.setdefault(study, {})[status] = n
        return counts

    def get_run(self, run_id: str) -> dict | None:
        rows = self._query("read a run", "SELECT doc FROM runs WHERE id = ?", (run_id,))
        return json.loads(rows[0][0]) if rows else None

    def find_runs(
        self,
        filter: dict | None = None,
        *,
        sort: list[tuple[str, int]] | None = None,
        limit: int = 0,
    ) -> list[dict]:
        where, params = compile_filter(filter)
        order = compile_sort(sort)
        order.append("id ASC" if order else "rowid ASC")
        sql = f"SELECT doc FROM runs WHERE {where} ORDER BY {', '.join(order)}"
        limit = check_limit(limit)
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        rows = self._query("find runs", sql, params)
        with _decoding():
            return [json.loads(doc) for (doc,) in rows]

    def count_runs(self, filter: dict | None = None) -> int:
        where, params = compile_filter(filter)
        return self._query("count runs", f"SELECT count(*) FROM runs WHERE {where}", params)[0][0]

    # ------------------------------------------------------------------ frames

    def runs_frame(
        self, filter: dict | None = None, *, ids: list[str] | None = None, extra: Extra = (), envs: bool = False
    ) -> Any:
        """The runs DataFrame (:func:`bench.store.flat.run_row` per run) of the runs
        ``find_runs(filter)`` returns, in its order; with ``ids``, of the runs among them as
        :func:`~bench.store.base.runs_by_id` returns them; then the ``extra`` documents
        (runs not in the store; or a function of the ids found, giving them). With ``envs``:
        ``(frame, [(run id, env), ...] of the stored runs)``, from the same read. Read from the
        flat rows: no document is decoded."""
        if not self._flat:
            from bench.store.base import runs_by_id

            docs = runs_by_id(self, ids) if ids is not None else self.find_runs(filter)
            added = extra({doc["_id"] for doc in docs}) if callable(extra) else extra
            frame = flat.runs_frame_from_docs([*docs, *added])
            return (frame, [(doc["_id"], doc.get("env")) for doc in docs]) if envs else frame
        with _decoding():
            rows = self._flat_runs("read runs", "id, shape, nums, text, env", filter, ids)
            stored = [(row[0], row[4]) for row in rows]
            added = extra({run_id for run_id, _ in stored}) if callable(extra) else extra
            local: dict[str, int] = {}  # texts of the extra rows, by negative ids
            rows = [row[:4] for row in rows] + self._pack_extra(added, local)
            run_ids, shapes, blobs, texts = zip(*rows) if rows else ((), (), (), ())
            frame = flat.frame_from_packed(
                shapes, blobs, texts, list(run_ids), self._shape_specs(shapes), self._texts(local), flat.run_frame_columns()
            )
        return (frame, self._envs(stored)) if envs else frame

    def run_envs(self, ids: list[str]) -> list[tuple[str, Any]]:
        """``(run id, env)`` of the runs among ``ids``, in :func:`~bench.store.base.runs_by_id`'s
        order (``env`` None where a run has none)."""
        if not self._flat:
            from bench.store.base import runs_by_id

            return [(run["_id"], run.get("env")) for run in runs_by_id(self, ids)]
        return self._envs(self._flat_runs("read runs", "id, env", None, ids))

    def _envs(self, rows: list[tuple[str, int | None]]) -> list[tuple[str, Any]]:
        """(run id, env id) → (run id, env): each distinct environment decoded once (a study's
        runs share a few), and shared by its runs."""
        texts = self._texts({})(sorted({env for _, env in rows if env is not None}))
        decoded = {env: json.loads(text) for env, text in texts.items()}
        return [(run_id, None if env is None else decoded[env]) for run_id, env in rows]

    def metrics_frame(self, run_ids: list[str]) -> Any:
        """The per-epoch DataFrame of ``find_metrics(run_ids)`` (by run, then epoch), read
        from the flat rows."""
        if not self._flat:
            return flat.metrics_frame_from_docs(self.find_metrics(run_ids))
        with _decoding():
            return self._metrics_frame(run_ids)

    def _metrics_frame(self, run_ids: list[str]) -> Any:
        """A row per run from SQLite, its block (all its epochs), over one snapshot."""
        queries = [
            (f"SELECT run_id, epochs, shapes, nums, texts FROM metrics_flat WHERE run_id IN ({', '.join('?' * len(chunk))}) "
             "ORDER BY run_id", chunk)
            for chunk in chunked(unique_ids(run_ids), _IN_CHUNK)
        ]
        rows = [row for part in self._query_together("read metrics", queries) for row in part]
        run_ids, *blocks = zip(*rows) if rows else ((), (), (), (), ())
        return flat.metrics_frame_from_blocks(run_ids, flat.Block(*blocks), self._shape_specs, self._texts({}))

    def _flat_runs(self, action: str, columns: str, filter: dict | None, ids: list[str] | None) -> list[tuple]:
        if ids is not None:
            if isinstance(ids, str):
                raise StoreError("ids must be a list of run ids, not a single string.")
            ids = list(ids)
            if len(ids) >= _SCAN_IDS and all(type(i) is str for i in ids) and _utf8("".join(ids)):
                total = self._query(action, "SELECT max(seq) FROM runs_flat")[0][0] or 0
                if 4 * len(ids) >= total:
                    return self._flat_runs_scanned(action, columns, ids)
            return self._flat_runs_by_chunk(action, columns, ids)
        if filter and list(filter) == ["study"] and isinstance(filter["study"], str):  # a study's runs, by index
            compile_filter(filter)  # validates the name
            return self._query(action, f"SELECT {columns} FROM runs_flat WHERE seq IN "
                               "(SELECT seq FROM run_studies WHERE study = ?) ORDER BY seq", [filter["study"]])
        if all(path[0] in flat.KEY_FIELDS for path in filter_paths(filter)):
            where, params = compile_filter(filter, column="keys")  # a study's runs: no document parsed
        else:
            inner, params = compile_filter(filter)
            where = f"id IN (SELECT id FROM runs WHERE {inner})"
        return self._query(action, f"SELECT {columns} FROM runs_flat WHERE {where} ORDER BY seq", params)

    def _flat_runs_by_chunk(self, action: str, columns: str, ids: list[str]) -> list[tuple]:
        """The flat rows of ``ids`` as :func:`~bench.store.base.runs_by_id` reads them: a query
        per chunk of :data:`~bench.store.base.ID_CHUNK` ids, each in storage order."""
        rows: list[tuple] = []
        for chunk in chunked(ids, ID_CHUNK):
            if all(type(i) is str for i in chunk) and _utf8("".join(chunk)):  # compile_filter's SQL, checked at once
                where, params = f"id IN ({', '.join('?' * len(chunk))})", chunk
            else:
                where, params = compile_filter({"_id": {"$in": chunk}})
            rows += self._query(action, f"SELECT {columns} FROM runs_flat WHERE {where} ORDER BY seq", params)
        return rows

    def _flat_runs_scanned(self, action: str, columns: str, ids: list[str]) -> list[tuple]:
        """The flat rows of ``ids`` (``columns`` starting with ``id``) in
        :func:`~bench.store.base.runs_by_id`'s order (by chunk of
        :data:`~bench.store.base.ID_CHUNK` ids, then by storage order) from one pass over the
        table: when the ids are a large part of it (a study's report), a scan reads its pages
        once, where a query per chunk looks each id up in the index (a third of the time for
        100,000 runs read in another order than they were stored)."""
        chunk = {run_id: at // ID_CHUNK for at, run_id in enumerate(ids)}
        if len(chunk) < len(ids):  # an id listed twice: read as the chunks have it
            return self._flat_runs_by_chunk(action, columns, ids)
        rows = self._query(action, f"SELECT {columns} FROM runs_flat ORDER BY seq")
        picked = [(chunk[row[0]], row) for row in rows if row[0] in chunk]
        picked.sort(key=lambda item: item[0])  # stable: by storage order within a chunk
        return [row for _, row in picked]

    def _texts(self, local: dict[str, int]) -> Any:
        """Text ids → texts: from ``flat_texts``, and the negative ids of ``local``."""
        by_id = {i: text for text, i in local.items()}

        def texts_of(ids: list[int]) -> dict[int, str]:
            found = {i: by_id[i] for i in ids if i < 0}
            stored = [i for i in ids if i >= 0]
            for chunk in chunked(stored, _IN_CHUNK):
                found.update(self._query(
                    "read texts", f"SELECT id, text FROM flat_texts WHERE id IN ({', '.join('?' * len(chunk))})", chunk
                ))
            return found

        return texts_of

    def _pack_extra(self, docs: list[dict], local: dict[str, int]) -> list[tuple]:
        rows = []
        for doc in docs:
            spec, nums, text = flat.encode(
                flat.run_row(doc), lambda t: local.setdefault(t, -1 - len(local)), doc.get("_id"), flat.run_constants()
            )
            rows.append((doc.get("_id"), spec, nums, text))  # shape given by its spec, not an id
        return rows

    def _shape_specs(self, shapes: Any) -> dict[Any, list[tuple[str, str]]]:
        """Shape id (or, for rows not stored, spec text) → ``[(key, kind), ...]``."""
        wanted = set(shapes)
        missing = [s for s in wanted if isinstance(s, int) and s not in self._shapes]
        for chunk in chunked(missing, _IN_CHUNK):
            for shape_id, spec in self._query(
                "read row shapes", f"SELECT id, spec FROM flat_shapes WHERE id IN ({', '.join('?' * len(chunk))})", chunk
            ):
                self._shapes[shape_id] = [tuple(entry) for entry in json.loads(spec)]
        specs: dict[Any, list[tuple[str, str]]] = {}
        for s in wanted:
            specs[s] = self._shapes[s] if isinstance(s, int) else [tuple(entry) for entry in json.loads(s)]
        return specs

    # ------------------------------------------------------------------ metrics

    def upsert_metrics(self, docs: list[dict]) -> None:
        rows = prepare_metrics(docs)
        if not rows:
            return
        rows.sort(key=lambda row: (row[0], row[1]))  # key order: 4x faster B-tree inserts
        self._run("upsert_metrics", {"rows": rows}, f"save {len(rows)} metric documents")

    def _apply_upsert_metrics(self, conn: sqlite3.Connection, args: dict[str, Any]) -> None:
        conn.executemany(
            "INSERT INTO metrics (run_id, epoch, doc) VALUES (?, ?, ?) "
            "ON CONFLICT (run_id, epoch) DO UPDATE SET doc = excluded.doc",
            ((run_id, epoch, dumps(doc)) for run_id, epoch, doc in args["rows"]),
        )
        _put_metrics_flat(conn, ((run_id, epoch, doc) for run_id, epoch, doc in args["rows"]), widths=self._widths)

    def get_metrics(self, run_id: str) -> list[dict]:
        rows = self._query(
            "read metrics",
            "SELECT doc FROM metrics WHERE run_id = ? ORDER BY epoch",
            (run_id,),
        )
        return [json.loads(doc) for (doc,) in rows]

    def find_metrics(self, run_ids: list[str]) -> list[dict]:
        with _decoding():
            return [json.loads(doc) for (doc,) in self._rows_for_runs("read metrics", "doc", "metrics", "epoch", run_ids)]

    def _rows_for_runs(self, action: str, columns: str, table: str, then: str, run_ids: list[str]) -> Iterator[tuple]:
        """``columns`` of the rows of ``table`` whose run is one of ``run_ids``, by run then
        by ``then``, in IN (...) lists of at most _IN_CHUNK ids."""
        for chunk in chunked(unique_ids(run_ids), _IN_CHUNK):
            yield from self._query(
                action,
                f"SELECT {columns} FROM {table} WHERE run_id IN ({', '.join('?' * len(chunk))}) ORDER BY run_id, {then}",
                chunk,
            )

    # ------------------------------------------------------------------ steps

    def upsert_steps(self, run_id: str, steps: list[dict]) -> None:
        # One row per step: SQLite's B-tree on (run_id, step) is the bucket. Rewriting a
        # growing bucket row on every call would cost O(steps²) per bucket; rows cost O(1).
        rows = sorted(
            (run_id, int(step), dumps(fields))
            for entries in prepare_steps(run_id, steps).values()
            for step, fields in entries.items()
        )
        if not rows:
            return
        self._run("upsert_steps", {"rows": rows}, f"save {len(rows)} steps of run {run_id!r}")

    def _apply_upsert_steps(self, conn: sqlite3.Connection, args: dict[str, Any]) -> None:
        conn.executemany(
            "INSERT INTO steps (run_id, step, doc) VALUES (?, ?, ?) "
            "ON CONFLICT (run_id, step) DO UPDATE SET doc = excluded.doc",
            [tuple(row) for row in args["rows"]],
        )

    def find_steps(self, run_ids: list[str]) -> list[dict]:
        rows = self._rows_for_runs("read steps", "run_id, step, doc", "steps", "step", run_ids)
        with _decoding():
            return [{"run_id": run_id, "step": step, **json.loads(doc)} for run_id, step, doc in rows]

    # ------------------------------------------------------------------ studies

    def save_study(self, name: str, doc: dict) -> None:
        fields = prepare_study(name, doc)
        self._run("save_study", {"name": name, "fields": fields}, f"save study {name!r}")

    def _apply_save_study(self, conn: sqlite3.Connection, args: dict[str, Any]) -> None:
        name = args["name"]
        row = conn.execute("SELECT doc FROM studies WHERE id = ?", (name,)).fetchone()
        merged = json.loads(row[0]) if row else {"_id": name}
        merged.update(args["fields"])
        conn.execute(
            "INSERT INTO studies (id, doc) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
            (name, dumps(merged)),
        )

    def get_study(self, name: str) -> dict | None:
        rows = self._query("read a study", "SELECT doc FROM studies WHERE id = ?", (name,))
        return json.loads(rows[0][0]) if rows else None

    def list_studies(self) -> list[dict]:
        rows = self._query("list studies", "SELECT doc FROM studies ORDER BY id")
        return [json.loads(doc) for (doc,) in rows]

    # ------------------------------------------------------------------ housekeeping

    def sync(self) -> int:
        """Replays the writes journaled while the file was busy; returns how many."""
        with self._lock:
            self._connection()
            try:
                return self._replay()
            except StoreBusy as exc:
                raise StoreError(
                    f"{exc} {self.journal.pending()} writes stay in the journal {self.journal.path}; "
                    "run `bench store sync` again once the other process is done."
                ) from None

    def info(self) -> dict:
        counts = {
            table: self._query("count documents", f"SELECT count(*) FROM {table}")[0][0]
            for table in ("runs", "metrics", "steps", "studies")
        }
        statuses = self._query(
            "count run statuses",
            "SELECT json_extract(doc, '$.status') AS status, count(*) FROM runs "
            "WHERE json_type(doc, '$.status') = 'text' GROUP BY status ORDER BY status",
        )
        size = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                size += os.path.getsize(f"{self.path}{suffix}")
            except OSError:
                pass
        return {
            "kind": self.kind,
            "location": self.location,
            **counts,
            "size_bytes": size,
            "status_counts": {status: n for status, n in statuses},
            "journal": str(self.journal.path),
            "journal_pending": self.journal.pending(),
        }

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and os.getpid() == self._pid:
                self._conn.close()
            self._conn = None

    def __enter__(self) -> EmbeddedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EmbeddedStore({self.location!r})"


def locked(exc: BaseException) -> bool:
    """Whether an SQLite error says another connection holds the lock (locked, busy)."""
    return "locked" in str(exc) or "busy" in str(exc)


def disk_full(exc: BaseException) -> bool:
    """Whether an SQLite error says the disk (or the file's size limit) is full."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)


def _put_run(conn: sqlite3.Connection, run_id: str, doc: dict[str, Any]) -> None:
    (seq,) = conn.execute(
        "INSERT INTO runs (id, doc) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc RETURNING rowid",
        (run_id, dumps(doc)),
    ).fetchone()
    _put_run_flat(conn, seq, run_id, doc)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _flat_version(conn: sqlite3.Connection) -> int | None:
    """The flat-row version the file's flat tables were written by (None before version 3)."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'flat_version'").fetchone()
    except sqlite3.OperationalError:  # no meta table yet
        return None
    return row[0] if row else None


class _Interned:
    """Ids of shapes or texts in their table (``flat_shapes``, ``flat_texts``), adding new
    ones; remembered for one write transaction only (a rolled-back id is never reused)."""

    def __init__(self, conn: sqlite3.Connection, table: str, column: str):
        self.conn, self.ids = conn, {}
        self.select = f"SELECT id FROM {table} WHERE {column} = ?"
        self.insert = f"INSERT INTO {table} ({column}) VALUES (?)"

    def __call__(self, value: str) -> int:
        found = self.ids.get(value)
        if found is None:
            row = self.conn.execute(self.select, (value,)).fetchone()
            found = self.ids[value] = row[0] if row is not None else self.conn.execute(self.insert, (value,)).lastrowid
        return found


def _interned(conn: sqlite3.Connection) -> tuple[_Interned, _Interned]:
    return _Interned(conn, "flat_shapes", "spec"), _Interned(conn, "flat_texts", "text")


def _put_run_flat(
    conn: sqlite3.Connection, seq: int, run_id: str, doc: dict[str, Any], interned: tuple[_Interned, _Interned] | None = None
) -> None:
    """The flat row of a run just written (``seq``: its rowid in ``runs``)."""
    shape_id, text_id = interned or _interned(conn)
    spec, nums, text = flat.encode(flat.run_row(doc), text_id, run_id, flat.run_constants())
    keys = dumps({k: doc[k] for k in flat.KEY_FIELDS if k in doc})
    env = text_id(dumps(doc["env"])) if "env" in doc else None  # a study's runs share a few
    conn.execute(
        "INSERT INTO runs_flat (id, seq, keys, shape, nums, text, env) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, keys = excluded.keys, shape = excluded.shape, "
        "nums = excluded.nums, text = excluded.text, env = excluded.env",
        (run_id, seq, keys, shape_id(spec), nums, text, env),
    )
    # the studies a {"study": name} filter matches: the text, or each text in the list
    studies = doc.get("study")
    names = {studies} if isinstance(studies, str) else {v for v in studies if isinstance(v, str)} if isinstance(studies, list) else set()
    conn.execute("DELETE FROM run_studies WHERE seq = ?", (seq,))
    conn.executemany("INSERT INTO run_studies (study, seq) VALUES (?, ?)", [(name, seq) for name in names])


def _put_metrics_flat(
    conn: sqlite3.Connection, rows: Iterator[tuple[str, int, dict[str, Any]]], interned: tuple[_Interned, _Interned] | None = None,
    widths: dict[int, int] | None = None,
) -> None:
    """The metrics documents just written (by run, then epoch), into their runs' blocks;
    ``widths``: words per row of shapes read so far (of blocks stored before this write)."""
    shape_id, text_id = interned or _interned(conn)
    by_run: dict[str, list[flat.EpochRow]] = {}
    for run_id, epoch, doc in rows:
        spec, nums, text = flat.encode(flat.metric_row(doc), text_id, run_id)
        by_run.setdefault(run_id, []).append((epoch, shape_id(spec), nums, text))
    for run_id, added in by_run.items():
        if _append(conn, run_id, added):
            continue
        found = conn.execute("SELECT epochs, shapes, nums, texts FROM metrics_flat WHERE run_id = ?", (run_id,)).fetchone()
        block = flat.merge_block(flat.Block(*found) if found else None, added, lambda shapes: _widths(conn, shapes, widths))
        _put_block(conn, run_id, block)


def _append(conn: sqlite3.Connection, run_id: str, rows: list[flat.EpochRow]) -> bool:
    """Appends ``rows`` to their run's block inside SQLite (the block never travels to Python:
    a trial's next epoch costs one statement) when they follow its last epoch and have no
    text; False when they do not (or the run has no block yet). SQLite's ``||`` joins the
    bytes of two blobs exactly, as text: cast back to a blob."""
    epochs = [row[0] for row in rows]
    if any(row[3] is not None for row in rows) or any(a >= b for a, b in zip(epochs, epochs[1:])):
        return False
    added = flat.pack_block(rows)
    cursor = conn.execute(
        "UPDATE metrics_flat SET epochs = CAST(epochs || ? AS BLOB), shapes = CAST(shapes || ? AS BLOB), "
        "nums = CAST(nums || ? AS BLOB), last_epoch = ? WHERE run_id = ? AND last_epoch < ?",
        (added.epochs, added.shapes, added.nums, epochs[-1], run_id, epochs[0]),
    )
    return cursor.rowcount == 1


def _put_block(conn: sqlite3.Connection, run_id: str, block: flat.Block) -> None:
    last = int.from_bytes(block.epochs[-8:], "little", signed=True)
    conn.execute(
        "INSERT INTO metrics_flat (run_id, epochs, shapes, nums, texts, last_epoch) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) "
        "DO UPDATE SET epochs = excluded.epochs, shapes = excluded.shapes, nums = excluded.nums, texts = excluded.texts, "
        "last_epoch = excluded.last_epoch",
        (run_id, *block, last),
    )


def _widths(conn: sqlite3.Connection, shapes: set[int], known: dict[int, int] | None = None) -> dict[int, int]:
    """Shape id → the 8-byte words of its rows' nums, from ``known`` (then added to it) or
    the table of shapes. Only shapes of stored blocks are asked for: committed before this
    write, so a rolled-back id (which SQLite may give again) is never kept."""
    known = {} if known is None else known
    for chunk in chunked(sorted(shapes - known.keys()), _IN_CHUNK):
        for shape, spec in conn.execute(f"SELECT id, spec FROM flat_shapes WHERE id IN ({', '.join('?' * len(chunk))})", chunk):
            known[shape] = flat.width(json.loads(spec))
    return known


def _rebuild_flat(conn: sqlite3.Connection, location: str, metrics_rows: bool = False) -> None:
    """Derives every flat row from the documents (a new or upgraded file; call in a write
    transaction). Shapes are kept: their ids never change. ``metrics_rows``: the file holds
    the metrics rows of flat version 3 (one per document), which are gathered into blocks
    as they are instead of decoding every metrics document (100,000 runs × 50 epochs: a
    minute less)."""
    start = time.monotonic()
    if metrics_rows:
        conn.execute("ALTER TABLE metrics_flat RENAME TO metrics_flat_rows")
    for table in ("runs_flat", "metrics_flat", "run_studies"):  # their layout may have changed too
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    for statement in _SCHEMA:
        conn.execute(statement)
    interned = _interned(conn)
    runs = conn.execute("SELECT rowid, id, doc FROM runs")
    for seq, run_id, doc in runs:
        _put_run_flat(conn, seq, run_id, json.loads(doc), interned)
    if metrics_rows:
        _gather_blocks(conn)
    else:
        metrics = conn.execute("SELECT run_id, epoch, doc FROM metrics ORDER BY run_id, epoch")
        while batch := metrics.fetchmany(10_000):
            _put_metrics_flat(conn, ((run_id, epoch, json.loads(doc)) for run_id, epoch, doc in batch), interned)
    conn.execute("INSERT INTO meta (key, value) VALUES ('flat_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                 (flat.FLAT_VERSION,))
    took = time.monotonic() - start
    if took > 1.0:
        log.info("Upgraded the result store %s: flat rows derived from its documents in %.1f s.", location, took)


def _gather_blocks(conn: sqlite3.Connection) -> None:
    """The metrics rows of flat version 3 (``metrics_flat_rows``: run, epoch, shape, nums,
    text) gathered into a block per run, bytes as they are; the old table dropped."""
    rows = conn.execute("SELECT run_id, epoch, shape, nums, text FROM metrics_flat_rows ORDER BY run_id, epoch")
    run_id, block = None, []
    while batch := rows.fetchmany(10_000):
        for owner, *row in batch:
            if owner != run_id:
                if block:
                    _put_block(conn, run_id, flat.pack_block(block))
                run_id, block = owner, []
            block.append(tuple(row))
    if block:
        _put_block(conn, run_id, flat.pack_block(block))
    conn.execute("DROP TABLE metrics_flat_rows")


#: How each write is applied, online and on replay (``claim`` is journaled as ``start_attempt``).
_APPLY: dict[str, Any] = {
    "upsert_run": EmbeddedStore._apply_upsert_run,
    "claim": EmbeddedStore._apply_claim,
    "start_attempt": EmbeddedStore._apply_start_attempt,
    "update_runs": EmbeddedStore._apply_update_runs,
    "upsert_metrics": EmbeddedStore._apply_upsert_metrics,
    "upsert_steps": EmbeddedStore._apply_upsert_steps,
    "save_study": EmbeddedStore._apply_save_study,
}

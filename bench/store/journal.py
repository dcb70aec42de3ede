"""A local file of writes the store could not take, replayed when it is back.

When the MongoDB server becomes unreachable in the middle of a grid (or the embedded
store's file stays locked by another process), training goes on and each
write is appended to a JSON Lines journal (one ``{"op": ..., "args": ...}`` per line,
flushed and synced to disk), under ``.bench/journal/`` or ``$BENCH_JOURNAL_DIR``, one file
per server and database. The next successful write replays the journal first, in order,
and ``bench store sync`` replays it on demand. Every journaled write is an upsert (or,
for the start of an attempt, made idempotent by its attempt id), so a replay that is
interrupted and run again never duplicates anything.

Several processes may share a journal: appends and replays hold an exclusive lock on
``<journal>.lock``; a replay rewrites what it could not apply with an atomic rename. A
line that cannot be parsed (a process killed in the middle of an append) is moved to
``<journal>.rejected`` rather than dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.errors import StoreError
from bench.store.base import dumps

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: a journal is used by one process at a time
    fcntl = None  # type: ignore[assignment]

DEFAULT_JOURNAL_DIR = Path(".bench") / "journal"


def journal_dir() -> Path:
    """``$BENCH_JOURNAL_DIR``, else ``.bench/journal`` under the current directory."""
    configured = os.environ.get("BENCH_JOURNAL_DIR", "").strip()
    return Path(configured).expanduser() if configured else DEFAULT_JOURNAL_DIR


def journal_path(server: str, database: str) -> Path:
    """The journal of one server and database; ``server`` must hold no password."""
    identity = f"{server}|{database}"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", identity.partition("://")[2] or identity).strip("-")
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:10]
    return journal_dir() / f"{slug[:60]}-{digest}.jsonl"


def embedded_journal_path(store_path: str | os.PathLike[str]) -> Path:
    """The journal of an embedded store file: under ``$BENCH_JOURNAL_DIR`` when it is set,
    else beside the file (``results.sqlite.journal.jsonl``), where every process using the
    file finds it whatever its working directory."""
    path = Path(store_path).expanduser().absolute()
    if os.environ.get("BENCH_JOURNAL_DIR", "").strip():
        return journal_path(f"sqlite://{path}", "")
    return path.with_name(path.name + ".journal.jsonl")


class Journal:
    """Append-only JSON Lines file of pending writes (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).expanduser().absolute()
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.rejected_path = self.path.with_name(self.path.name + ".rejected")

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    def has_entries(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    def pending(self) -> int:
        """Number of journaled writes not replayed yet."""
        if not self.has_entries():
            return 0
        with self._locked():
            return sum(1 for line in self._read_lines() if line.strip())

    def append(self, op: str, args: dict[str, Any]) -> None:
        line = dumps({"op": op, "args": args}) + "\n"
        with self._locked():
            try:
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(line)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise StoreError(
                    f"The store cannot take a write and it could not be kept in the journal "
                    f"{self.path}: {exc}. Free disk space or set BENCH_JOURNAL_DIR to a writable "
                    "directory."
                ) from exc

    def replay(self, apply: Callable[[str, dict[str, Any]], None]) -> int:
        """Applies every journaled write in order; returns how many were applied.

        If ``apply`` raises, the writes not yet applied (that one included) stay in the
        journal and the exception propagates.
        """
        if not self.has_entries():
            return 0
        with self._locked():
            lines = [line for line in self._read_lines() if line.strip()]
            entries: list[tuple[str, dict[str, Any]]] = []
            rejected: list[str] = []
            for line in lines:
                try:
                    entry = json.loads(line)
                    entries.append((str(entry["op"]), dict(entry["args"])))
                except (ValueError, KeyError, TypeError):
                    rejected.append(line)
            if rejected:
                with open(self.rejected_path, "a", encoding="utf-8") as handle:
                    handle.writelines(line if line.endswith("\n") else line + "\n" for line in rejected)
            applied = 0
            try:
                for op, args in entries:
                    apply(op, args)
                    applied += 1
            finally:
                self._keep(entries[applied:])
            return applied

    def reject(self, op: str, args: dict[str, Any], reason: str) -> None:
        """Sets aside a write the server refuses (it is not retried), with the reason."""
        with open(self.rejected_path, "a", encoding="utf-8") as handle:
            handle.write(dumps({"op": op, "args": args, "reason": reason}) + "\n")

    # ------------------------------------------------------------------ plumbing

    def _read_lines(self) -> list[str]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                return handle.readlines()
        except FileNotFoundError:
            return []

    def _keep(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        if not entries:
            self.path.unlink(missing_ok=True)
            return
        temporary = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.writelines(dumps({"op": op, "args": args}) + "\n" for op, args in entries)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_path, "a+")
        except OSError as exc:
            raise StoreError(
                f"Cannot use the write journal {self.path}: {exc}. Set BENCH_JOURNAL_DIR to a "
                "writable directory."
            ) from exc
        try:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            yield
        finally:
            handle.close()  # closing releases the lock

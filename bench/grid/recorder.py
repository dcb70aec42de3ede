"""Writing a grid's trial events to the store as they happen, from the driver.

Each attempt of a trial starts with an atomic claim in the store (:meth:`Recorder.started`),
so two grids sharing a store never run the same trial at once. While trials run, the
driver keeps their ``heartbeat_at`` fresh (a background beat every ``HEARTBEAT_EVERY``
seconds, besides each epoch); a trial left ``running`` with an older heartbeat than
``stale_after`` seconds was abandoned (its driver was killed), and the next plan runs it
again, while a fresh one belongs to another live grid and is skipped. A trial left
``running`` by a driver on this host whose process has ended (:func:`driver_gone`) is
abandoned at once, whatever its heartbeat.

The run also says where its trial runs and stands: ``node`` (the machine of the current
attempt), ``checkpoint`` (its latest checkpoint, from which a later attempt resumes;
cleared when it finishes) and ``artifacts`` (kept final weights). An attempt whose Ray
worker or node was lost is kept in the history as ``lost`` while Tune retries the trial.

A store problem is never a training outcome: a write the store cannot take is journaled
by the store; one it refuses is logged and counted (``write_errors``), and the trial goes
on. Each attempt's outcome is kept in the run's ``history``; a failed or interrupted
attempt never replaces a completed or diverged result.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from bench.errors import BenchError
from bench.provenance import utcnow
from bench.store.base import (
    FINISHED_STATUSES, STALE_AFTER, driver_gone, history_entry, process_start, stale_before, with_history,
)

if TYPE_CHECKING:
    from bench.store import ResultStore
    from bench.trial import TrialResult

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 30.0  # seconds between background heartbeats of running trials


class Progress(Protocol):
    """Anything shown while a grid runs; told the counts after every event."""

    def update(self, counts: dict[str, int]) -> None: ...


class Recorder:
    """Writes each trial event to the store, from the driver, as it happens.

    ``started`` claims the trial in the store and returns False when another live grid
    holds it (or, with ``skip_finished``, finished it meanwhile): its events are then
    ignored. While trials run, a daemon thread refreshes their heartbeat every
    ``heartbeat_every`` seconds; it stops by itself when none is left.
    """

    def __init__(
        self,
        store: ResultStore,
        study: str,
        total: int,
        progress: Progress | None = None,
        *,
        stale_after: float = STALE_AFTER,
        heartbeat_every: float = HEARTBEAT_EVERY,
        skip_finished: bool = False,
    ):
        self.store, self.study, self.progress = store, study, progress
        self.stale_after, self.heartbeat_every, self.skip_finished = stale_after, heartbeat_every, skip_finished
        self.counts = {"total": total, "done": 0, "running": 0, "completed": 0, "failed": 0, "diverged": 0, "skipped": 0}
        self.active: set[str] = set()
        self.skipped: list[str] = []
        self.driver = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.driver_start = process_start(os.getpid())  # tells this process from a later one with its pid
        self.write_errors: list[str] = []  # writes the store refused (not journaled)
        self._attempts: dict[str, dict[str, Any]] = {}  # trial id → its attempt's start and the result it keeps
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._beater: threading.Thread | None = None

    def _tick(self) -> None:
        """Shows the counts."""
        if self.progress is not None:
            self.progress.update(dict(self.counts))

    def started(self, trial_id: str) -> bool:
        """Claims the trial for this driver; False when another grid holds (or finished) it.
        A trial held by a driver of this host whose process has ended is taken over."""
        prior = None if self.skip_finished else self.store.get_run(trial_id)
        now = utcnow()
        claimed = self._claim(trial_id, now)
        if not claimed and self._release_if_gone(trial_id):
            claimed = self._claim(trial_id, now)
        if not claimed:
            self.skipped.append(trial_id)
            self.counts["skipped"] += 1
            self._tick()
            return False
        kept = {k: prior.get(k) for k in ("status", "finished_at", "error")} if prior else {}
        self._attempts[trial_id] = {"started_at": now, "kept": kept if kept.get("status") in FINISHED_STATUSES else None}
        with self._lock:
            self.active.add(trial_id)
            self.counts["running"] = len(self.active)
            if self._beater is None or not self._beater.is_alive():
                self._wake.clear()
                self._beater = threading.Thread(target=self._beat, name="bench-heartbeat", daemon=True)
                self._beater.start()
        self._tick()
        return True

    def _claim(self, trial_id: str, now: str) -> bool:
        fields = {"started_at": now, "heartbeat_at": now, "finished_at": None, "error": None, "driver_start": self.driver_start}
        return self.store.claim_run(
            trial_id, fields, driver=self.driver, stale_before=stale_before(self.stale_after),
            skip_finished=self.skip_finished,
        )

    def _release_if_gone(self, trial_id: str) -> bool:
        """Marks the trial interrupted when it is ``running`` under a driver of this host
        whose process has ended; True when it did."""
        run = self.store.get_run(trial_id)
        if not run or run.get("status") != "running" or not driver_gone(run.get("driver"), run.get("driver_start")):
            return False
        condition = {"_id": trial_id, "status": "running", "driver": run["driver"]}
        return self.store.update_runs(condition, {"status": "interrupted", "finished_at": utcnow()}) > 0

    def _safely(self, action: str, write: Callable[[], Any]) -> bool:
        """Runs one store write; a store error is logged and counted, never raised: the
        trial goes on (writes the store cannot take now are journaled by the store)."""
        try:
            write()
            return True
        except BenchError as exc:
            self.write_errors.append(f"{action}: {exc}")
            log.warning("Could not %s: %s The trial goes on.", action, exc)
            return False

    def _beat(self) -> None:
        """Refreshes the heartbeat of every active trial until none is left."""
        while True:
            self._wake.wait(self.heartbeat_every)
            with self._lock:
                if not self.active:
                    self._beater = None
                    return
                self._wake.clear()
                trial_ids = sorted(self.active)
            now = utcnow()
            for trial_id in trial_ids:
                try:
                    self.store.upsert_run(trial_id, {"heartbeat_at": now})
                except BenchError:
                    pass  # a missed beat is harmless; the next one (or the epoch) retries

    def ran_on(self, trial_id: str, node: dict[str, Any]) -> None:
        """The attempt runs on ``node`` (a Ray node: id, IP, host name): kept in the run's
        ``node`` and in the attempt's history entry."""
        if trial_id not in self.active:
            return
        self._attempts.setdefault(trial_id, {})["node"] = node
        self._safely(f"record the node of {trial_id}", lambda: self.store.upsert_run(trial_id, {"node": node}))

    def checkpointed(self, trial_id: str, where: dict[str, Any]) -> None:
        """The trial saved a checkpoint (``where``: its path, epoch and step): the run
        points to it, so a later grid resumes from it."""
        if trial_id not in self.active:
            return
        self._safely(f"record the checkpoint of {trial_id}", lambda: self.store.upsert_run(trial_id, {"checkpoint": where}))

    def lost(self, trial_id: str, error: str) -> None:
        """The attempt's worker or node was lost and the trial is retried (from its last
        checkpoint): the attempt goes into the history, the run stays ``running``."""
        if trial_id not in self.active:
            return
        now = utcnow()
        fields = {"history": self._history(trial_id, "lost", error, now), "heartbeat_at": now}
        self._safely(f"record the lost attempt of {trial_id}", lambda: self.store.upsert_run(trial_id, fields))
        self._attempts[trial_id] = {**self._attempts.get(trial_id, {}), "started_at": now, "node": None, "resumed_from": None}

    def epoch(self, trial_id: str, metrics: dict[str, Any]) -> None:
        """Stores one epoch's metrics and refreshes the trial's heartbeat."""
        if trial_id not in self.active:
            return  # claimed by another grid
        self._safely(f"save epoch {metrics.get('epoch')} of {trial_id}", lambda: self._save_epoch(trial_id, metrics))

    def _save_epoch(self, trial_id: str, metrics: dict[str, Any]) -> None:
        self.store.upsert_metrics([{"run_id": trial_id, **metrics}])
        self.store.upsert_run(trial_id, {"heartbeat_at": utcnow()})

    def steps(self, trial_id: str, records: list[dict[str, Any]]) -> None:
        """Stores per-step records."""
        if trial_id not in self.active:
            return
        self._safely(f"save the steps of {trial_id}", lambda: self.store.upsert_steps(trial_id, records))

    def finished(self, trial_id: str, result: TrialResult) -> None:
        """Stores the trial's outcome: status, summary, error and environment, and the
        attempt in the run's history. A failed attempt of a run that had completed (or
        diverged) goes into its history only: the run keeps its result."""
        if trial_id not in self.active:
            return
        now = utcnow()
        kept = self._attempts.get(trial_id, {}).get("kept")
        self._attempts.setdefault(trial_id, {})["resumed_from"] = result.resumed_from
        if result.status == "failed" and kept:
            fields: dict[str, Any] = dict(kept)
        else:
            fields = {"status": result.status, "summary": result.summary, "error": result.error, "env": result.env, "finished_at": now}
        if result.status in FINISHED_STATUSES:  # its checkpoints are gone; kept weights stay
            fields.update(checkpoint=None, artifacts=result.artifacts or None)
        fields["history"] = self._history(trial_id, result.status, result.error, now)
        self._safely(f"save the outcome of {trial_id}", lambda: self.store.upsert_run(trial_id, fields))
        self._close(trial_id, result.status)

    def crashed(self, trial_id: str, error: str) -> None:
        """The worker died (out of memory, killed): the trial failed, the grid goes on."""
        now = utcnow()
        fields = dict(self._attempts.get(trial_id, {}).get("kept") or {"status": "failed", "error": error, "finished_at": now})
        fields["history"] = self._history(trial_id, "failed", error, now)
        self._safely(f"save the outcome of {trial_id}", lambda: self.store.upsert_run(trial_id, fields))
        self._close(trial_id, "failed")

    def _history(self, trial_id: str, outcome: str, error: str | None, now: str) -> list[dict[str, Any]]:
        """The run's history with this attempt added (read once, at the attempt's end)."""
        try:
            run = self.store.get_run(trial_id)
        except BenchError:
            run = None
        attempt = self._attempts.get(trial_id, {})
        entry = history_entry(
            outcome, error, attempt.get("started_at"), now, node=attempt.get("node"), resumed_from=attempt.get("resumed_from")
        )
        return with_history(run, entry)

    def _close(self, trial_id: str, status: str) -> None:
        """The trial is over: counted, and its heartbeat stops."""
        with self._lock:
            self.active.discard(trial_id)
            self.counts["running"] = len(self.active)
            if not self.active:
                self._wake.set()  # the heartbeat thread ends now
        self.counts["done"] += 1
        self.counts[status] = self.counts.get(status, 0) + 1
        self._tick()

    def interrupt_unfinished(self) -> int:
        """Marks trials still running (Ctrl-C, driver crash) as interrupted so the next
        run of the same command picks them up; stops the heartbeat."""
        with self._lock:
            trial_ids = sorted(self.active)
            self.active.clear()
            self.counts["running"] = 0
            self._wake.set()
        now = utcnow()
        for trial_id in trial_ids:
            fields = dict(self._attempts.get(trial_id, {}).get("kept") or {"status": "interrupted", "finished_at": now})
            fields["history"] = self._history(trial_id, "interrupted", None, now)
            self._safely(
                f"mark {trial_id} interrupted",
                lambda: self.store.update_runs({"_id": trial_id, "status": "running", "driver": self.driver}, fields),
            )
        return len(trial_ids)

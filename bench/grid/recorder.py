"""Running a study's grid: skip what is done, run the rest, record as results come.

The driver decides which trials to run (a trial whose id is already ``completed`` or
``diverged`` in the store is answered from it, whichever study ran it), hands the rest to
an executor, and writes each event to the store through a :class:`Recorder` as it
happens. Executors:

- ``ray`` (default): Ray Tune, one trial per config, side by side with the resources
  asked per trial; every Ray call lives in :mod:`bench.ray_tune`, the one adapter to
  Ray's often-changing API.
- ``local``: the trials one after another in this process (debugging, tests).

Re-running the same command after Ctrl-C or a crash runs only what is not finished. A
driver keeps the ``heartbeat_at`` of its running trials fresh (a background beat every
``HEARTBEAT_EVERY`` seconds, besides each epoch); a trial left ``running`` with an older
heartbeat than ``stale_after`` seconds was abandoned (the driver was killed) and is marked
``interrupted`` and run again, while a fresh one belongs to another live grid and is
skipped. Each attempt starts with an atomic claim in the store, so two grids sharing a
store never run the same trial at once.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bench.errors import BenchError
from bench.provenance import utcnow
from bench.spec import StudySpec, TrialConfig
from bench.store.base import FINISHED_STATUSES, STALE_AFTER, stale_before, stale_filter
from bench.trial import TrialResult, preflight, run_trial

if TYPE_CHECKING:
    from bench.store import ResultStore

HEARTBEAT_EVERY = 30.0  # seconds between background heartbeats of running trials


class Progress(Protocol):
    def update(self, counts: dict[str, int]) -> None: ...


@dataclass
class GridOptions:
    executor: str = "ray"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    address: str | None = None
    data_dir: str | None = None
    device: str | None = None


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
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._beater: threading.Thread | None = None

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress.update(dict(self.counts))

    def started(self, trial_id: str) -> bool:
        now = utcnow()
        claimed = self.store.claim_run(
            trial_id,
            {"started_at": now, "heartbeat_at": now, "finished_at": None, "error": None},
            driver=self.driver,
            stale_before=stale_before(self.stale_after),
            skip_finished=self.skip_finished,
        )
        if not claimed:
            self.skipped.append(trial_id)
            self.counts["skipped"] += 1
            self._tick()
            return False
        with self._lock:
            self.active.add(trial_id)
            self.counts["running"] = len(self.active)
            if self._beater is None or not self._beater.is_alive():
                self._wake.clear()
                self._beater = threading.Thread(target=self._beat, name="bench-heartbeat", daemon=True)
                self._beater.start()
        self._tick()
        return True

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

    def epoch(self, trial_id: str, metrics: dict[str, Any]) -> None:
        if trial_id not in self.active:
            return  # claimed by another grid
        self.store.upsert_metrics([{"run_id": trial_id, **metrics}])
        self.store.upsert_run(trial_id, {"heartbeat_at": utcnow()})

    def steps(self, trial_id: str, records: list[dict[str, Any]]) -> None:
        if trial_id not in self.active:
            return
        self.store.upsert_steps(trial_id, records)

    def finished(self, trial_id: str, result: TrialResult) -> None:
        if trial_id not in self.active:
            return
        self.store.upsert_run(
            trial_id,
            {"status": result.status, "summary": result.summary, "error": result.error, "env": result.env, "finished_at": utcnow()},
        )
        self._close(trial_id, result.status)

    def crashed(self, trial_id: str, error: str) -> None:
        """The worker died (out of memory, killed): the trial failed, the grid goes on."""
        self.store.upsert_run(trial_id, {"status": "failed", "error": error, "finished_at": utcnow()})
        self._close(trial_id, "failed")

    def _close(self, trial_id: str, status: str) -> None:
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
        if trial_ids:
            self.store.update_runs(
                {"_id": {"$in": trial_ids}, "status": "running", "driver": self.driver},
                {"status": "interrupted", "finished_at": utcnow()},
            )
        return len(trial_ids)


@dataclass
class GridPlan:
    spec: StudySpec
    trials: list[TrialConfig]
    todo: list[TrialConfig]
    cached: list[TrialConfig]
    live: list[TrialConfig] = field(default_factory=list)  # running in another live grid: skipped
    stale: list[TrialConfig] = field(default_factory=list)  # abandoned while running: re-run (in todo)
    stale_after: float = STALE_AFTER


def validate(trials: Sequence[TrialConfig]) -> None:
    """Every check that needs the zoo, once per distinct model/optimizer shape."""
    seen: set[str] = set()
    for config in trials:
        key = config.replace(seed=0).trial_id
        if key not in seen:
            seen.add(key)
            preflight(config)


def plan(spec: StudySpec, store: ResultStore, *, stale_after: float = STALE_AFTER) -> GridPlan:
    """Which trials to run: all but the finished ones and those another live grid runs.

    A trial ``running`` with no heartbeat for ``stale_after`` seconds is abandoned: it is
    run again (``register`` marks it ``interrupted`` first).
    """
    if stale_after < 0:
        raise BenchError(f"stale_after must be ≥ 0 seconds, got {stale_after}.")
    from bench.tune import study_trials  # a tuned study's second phase follows from the store

    trials = [config for _, config in study_trials(spec, store)]
    validate(trials)
    ids = [t.trial_id for t in trials]
    threshold = stale_before(stale_after)
    done: set[str] = set()
    running: set[str] = set()
    stale: set[str] = set()
    for chunk in range(0, len(ids), 500):
        block = {"$in": ids[chunk : chunk + 500]}
        done.update(r["_id"] for r in store.find_runs({"_id": block, "status": {"$in": list(FINISHED_STATUSES)}}))
        running.update(r["_id"] for r in store.find_runs({"_id": block, "status": "running"}))
        stale.update(r["_id"] for r in store.find_runs({"$and": [{"_id": block}, stale_filter(threshold)]}))
    live = running - stale
    return GridPlan(
        spec,
        trials,
        todo=[t for t in trials if t.trial_id not in done and t.trial_id not in live],
        cached=[t for t in trials if t.trial_id in done],
        live=[t for t in trials if t.trial_id in live],
        stale=[t for t in trials if t.trial_id in stale],
        stale_after=stale_after,
    )


def plan_tuning(first: GridPlan, store: ResultStore) -> GridPlan:
    """The tuned re-runs a finished sweep determines: the study planned again (its second
    phase now follows from the stored results), less the trials the first plan held."""
    again = plan(first.spec, store, stale_after=first.stale_after)
    planned = {t.trial_id for t in first.trials}
    again.todo = [t for t in again.todo if t.trial_id not in planned]
    return again


def register(plan_: GridPlan, store: ResultStore) -> None:
    """Records the study and its trials: every trial gains this study's name; abandoned
    ones are marked interrupted; new ones are queued as pending with their config.

    Status changes are conditional writes, re-checked by the store: a trial another grid
    started or finished since ``plan`` keeps its status.
    """
    spec = plan_.spec
    store.save_study(
        spec.key,
        {**spec.to_dict(), "spec_hash": spec.spec_hash, "trial_ids": [t.trial_id for t in plan_.trials], "updated_at": utcnow()},
    )
    for config in [*plan_.cached, *plan_.live]:
        store.upsert_run(config.trial_id, {}, study=spec.key)
    for config in plan_.todo:
        store.upsert_run(
            config.trial_id, {"config": config.to_dict(), "derived": {"effective_lr": config.effective_lr}}, study=spec.key
        )
    threshold = stale_before(plan_.stale_after)
    todo_ids = [t.trial_id for t in plan_.todo]
    for chunk in range(0, len(todo_ids), 500):
        block = {"$in": todo_ids[chunk : chunk + 500]}
        store.update_runs({"$and": [{"_id": block}, stale_filter(threshold)]}, {"status": "interrupted", "finished_at": utcnow()})
        store.update_runs({"_id": block, "status": {"$exists": False}}, {"status": "pending"})


Executor = Callable[[list[TrialConfig], Recorder, GridOptions], None]


def run_local(todo: list[TrialConfig], recorder: Recorder, options: GridOptions) -> None:
    for config in todo:
        if not recorder.started(config.trial_id):
            continue  # another grid runs it, or finished it meanwhile
        result = run_trial(
            config,
            lambda m, tid=config.trial_id: recorder.epoch(tid, m),
            data_dir=options.data_dir,
            device=options.device,
            report_steps=lambda s, tid=config.trial_id: recorder.steps(tid, s),
        )
        recorder.finished(config.trial_id, result)


def run_ray(todo: list[TrialConfig], recorder: Recorder, options: GridOptions) -> None:
    from bench.ray_tune import run_with_tune

    run_with_tune(todo, recorder, options)


EXECUTORS: dict[str, Executor] = {"ray": run_ray, "local": run_local}


def run_grid(plan_: GridPlan, store: ResultStore, options: GridOptions, progress: Progress | None = None) -> Recorder:
    if options.executor not in EXECUTORS:
        raise BenchError(f"Unknown executor {options.executor!r}. Valid executors: {', '.join(EXECUTORS)}.")
    register(plan_, store)
    recorder = Recorder(store, plan_.spec.key, len(plan_.todo), progress, stale_after=plan_.stale_after, skip_finished=True)
    if not plan_.todo:
        return recorder
    try:
        EXECUTORS[options.executor](plan_.todo, recorder, options)
    finally:
        recorder.interrupt_unfinished()
    return recorder

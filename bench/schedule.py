"""Running a study's grid: skip what is done, run the rest, record as results come.

The driver decides which trials to run (a trial whose id is already ``completed`` or
``diverged`` in the store is answered from it, whichever study ran it), hands the rest to
an executor, and writes each event to the store through a :class:`Recorder` as it
happens. Executors:

- ``ray`` (default): Ray Tune, one trial per config, side by side with the resources
  asked per trial; every Ray call lives in :mod:`bench.ray_tune`, the one adapter to
  Ray's often-changing API.
- ``local``: the trials one after another in this process (debugging, tests).

Re-running the same command after Ctrl-C or a crash runs only what is not finished.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bench.errors import BenchError
from bench.provenance import utcnow
from bench.spec import StudySpec, TrialConfig
from bench.train import TrialResult, preflight, run_trial

if TYPE_CHECKING:
    from bench.store import ResultStore

FINISHED = ("completed", "diverged")


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
    """Writes each trial event to the store, from the driver, as it happens."""

    def __init__(self, store: ResultStore, study: str, total: int, progress: Progress | None = None):
        self.store, self.study, self.progress = store, study, progress
        self.counts = {"total": total, "done": 0, "running": 0, "completed": 0, "failed": 0, "diverged": 0}
        self.active: set[str] = set()

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress.update(dict(self.counts))

    def started(self, trial_id: str) -> None:
        run = self.store.get_run(trial_id) or {}
        now = utcnow()
        self.store.upsert_run(
            trial_id,
            {"status": "running", "attempts": int(run.get("attempts") or 0) + 1, "started_at": now, "heartbeat_at": now,
             "finished_at": None, "error": None},
        )
        self.active.add(trial_id)
        self.counts["running"] = len(self.active)
        self._tick()

    def epoch(self, trial_id: str, metrics: dict[str, Any]) -> None:
        self.store.upsert_metrics([{"run_id": trial_id, **metrics}])
        self.store.upsert_run(trial_id, {"heartbeat_at": utcnow()})

    def finished(self, trial_id: str, result: TrialResult) -> None:
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
        self.active.discard(trial_id)
        self.counts["running"] = len(self.active)
        self.counts["done"] += 1
        self.counts[status] = self.counts.get(status, 0) + 1
        self._tick()

    def interrupt_unfinished(self) -> int:
        """Marks trials still running (Ctrl-C, driver crash) as interrupted so the next
        run of the same command picks them up."""
        for trial_id in self.active:
            self.store.upsert_run(trial_id, {"status": "interrupted", "finished_at": utcnow()})
        n = len(self.active)
        self.active.clear()
        return n


@dataclass
class GridPlan:
    spec: StudySpec
    trials: list[TrialConfig]
    todo: list[TrialConfig]
    cached: list[TrialConfig]


def validate(trials: Sequence[TrialConfig]) -> None:
    """Every check that needs the zoo, once per distinct model/optimizer shape."""
    seen: set[str] = set()
    for config in trials:
        key = config.replace(seed=0).trial_id
        if key not in seen:
            seen.add(key)
            preflight(config)


def plan(spec: StudySpec, store: ResultStore) -> GridPlan:
    trials = spec.expand()
    validate(trials)
    ids = [t.trial_id for t in trials]
    done: set[str] = set()
    for chunk in range(0, len(ids), 500):
        runs = store.find_runs({"_id": {"$in": ids[chunk : chunk + 500]}, "status": {"$in": list(FINISHED)}})
        done.update(r["_id"] for r in runs)
    todo = [t for t in trials if t.trial_id not in done]
    cached = [t for t in trials if t.trial_id in done]
    return GridPlan(spec, trials, todo, cached)


def register(plan_: GridPlan, store: ResultStore) -> None:
    """Records the study and its trials: finished ones gain this study's name; the others
    are (re)queued as pending with their config."""
    spec = plan_.spec
    store.save_study(
        spec.key,
        {**spec.to_dict(), "spec_hash": spec.spec_hash, "trial_ids": [t.trial_id for t in plan_.trials], "updated_at": utcnow()},
    )
    for config in plan_.cached:
        store.upsert_run(config.trial_id, {}, study=spec.key)
    for config in plan_.todo:
        store.upsert_run(
            config.trial_id,
            {"config": config.to_dict(), "derived": {"effective_lr": config.effective_lr}, "status": "pending"},
            study=spec.key,
        )


Executor = Callable[[list[TrialConfig], Recorder, GridOptions], None]


def run_local(todo: list[TrialConfig], recorder: Recorder, options: GridOptions) -> None:
    for config in todo:
        recorder.started(config.trial_id)
        result = run_trial(
            config, lambda m, tid=config.trial_id: recorder.epoch(tid, m), data_dir=options.data_dir, device=options.device
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
    recorder = Recorder(store, plan_.spec.key, len(plan_.todo), progress)
    if not plan_.todo:
        return recorder
    try:
        EXECUTORS[options.executor](plan_.todo, recorder, options)
    finally:
        recorder.interrupt_unfinished()
    return recorder

"""Which trials of a study to run, and recording the study and its trials before they run.

A trial whose id is already ``completed`` or ``diverged`` in the store is answered from
it, whichever study ran it; a trial ``running`` with a fresh heartbeat belongs to another
live grid and is skipped; one whose heartbeat is older than ``stale_after`` seconds was
abandoned and is run again (:func:`register` marks it ``interrupted`` first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.grid.tuning import study_trials
from bench.provenance import utcnow
from bench.spec import StudySpec, TrialConfig
from bench.store.base import FINISHED_STATUSES, ID_CHUNK, STALE_AFTER, chunked, runs_by_id, stale_before, stale_filter

if TYPE_CHECKING:
    from bench.store import ResultStore



@dataclass
class GridPlan:
    """A study's trials, split by what the store says of them."""

    spec: StudySpec
    trials: list[TrialConfig]
    todo: list[TrialConfig]
    cached: list[TrialConfig]
    live: list[TrialConfig] = field(default_factory=list)  # running in another live grid: skipped
    stale: list[TrialConfig] = field(default_factory=list)  # abandoned while running: re-run (in todo)
    stale_after: float = STALE_AFTER


def validate(trials: Sequence[TrialConfig]) -> None:
    """Every check that needs the zoo, once per distinct model/optimizer shape."""
    from bench.trial import preflight  # builds on the meta device: imports torch

    seen: set[str] = set()
    for config in trials:
        key = config.replace(seed=0).trial_id
        if key not in seen:
            seen.add(key)
            preflight(config)


def plan(spec: StudySpec, store: ResultStore, *, stale_after: float = STALE_AFTER) -> GridPlan:
    """Which trials to run: all but the finished ones and those another live grid runs.

    A tuned study's second phase follows from the store (:func:`~bench.grid.tuning.study_trials`).
    """
    if stale_after < 0:
        raise BenchError(f"stale_after must be ≥ 0 seconds, got {stale_after}.")
    trials = [config for _, config in study_trials(spec, store)]
    validate(trials)
    done, running, stale = _states([t.trial_id for t in trials], store, stale_before(stale_after))
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


def _states(ids: list[str], store: ResultStore, threshold: str) -> tuple[set[str], set[str], set[str]]:
    """The ids that are finished, running, and running with a heartbeat older than ``threshold``."""
    done = {r["_id"] for r in runs_by_id(store, ids, {"status": {"$in": list(FINISHED_STATUSES)}})}
    running = {r["_id"] for r in runs_by_id(store, ids, {"status": "running"})}
    stale = {r["_id"] for r in runs_by_id(store, ids, stale_filter(threshold))}
    return done, running, stale


def plan_tuning(first: GridPlan, store: ResultStore) -> GridPlan:
    """The tuned re-runs a finished sweep determines: the study planned again (its second
    phase now follows from the stored results), less the trials the first plan held."""
    again = plan(first.spec, store, stale_after=first.stale_after)
    planned = {t.trial_id for t in first.trials}
    again.todo = [t for t in again.todo if t.trial_id not in planned]
    return again


def trial_fields(config: TrialConfig) -> dict[str, Any]:
    """What a run records of its trial before it starts: the config and the derived lr."""
    return {"config": config.to_dict(), "derived": {"effective_lr": config.effective_lr}}


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
        store.upsert_run(config.trial_id, trial_fields(config), study=spec.key)
    threshold = stale_before(plan_.stale_after)
    todo_ids = [t.trial_id for t in plan_.todo]
    for chunk in chunked(todo_ids, ID_CHUNK):
        block = {"$in": chunk}
        store.update_runs({"$and": [{"_id": block}, stale_filter(threshold)]}, {"status": "interrupted", "finished_at": utcnow()})
        store.update_runs({"_id": block, "status": {"$exists": False}}, {"status": "pending"})

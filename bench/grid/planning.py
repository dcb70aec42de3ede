"""Which trials of a study to run, and recording the study and its trials before they run.

A trial whose id is already ``completed`` or ``diverged`` in the store is answered from
it, whichever study ran it — unless its run was made by other code or trained on other
data than this grid would use (see :func:`check_provenance`): such a trial is run again
(:func:`register` queues it), or kept with ``keep_old``. A trial ``running`` with a fresh
heartbeat belongs to another live grid and is skipped; one whose heartbeat is older than
``stale_after`` seconds was abandoned and is run again (:func:`register` marks it
``interrupted`` first), and so is one whose driver ran on this host and has ended
(killed, or stopped by an error): :func:`~bench.store.base.driver_gone` knows it at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.grid.tuning import study_trials
from bench.provenance import code_fingerprint, utcnow
from bench.spec import StudySpec, TrialConfig
from bench.store.base import (
    FINISHED_STATUSES, ID_CHUNK, STALE_AFTER, chunked, driver_gone, runs_by_id, sanitize, stale_before, stale_filter,
)

if TYPE_CHECKING:
    from bench.store import ResultStore


DataKey = tuple[str, int | None, int | None]  # dataset, train_subset, val_subset


@dataclass(frozen=True)
class Changed:
    """A finished trial whose stored run was made by other code, or trained on other data,
    than this grid would use. ``keys``: the fingerprints that differ — code keys as in the
    run's ``env.code`` (``"norm:gn"``, ``"trial"``) and ``"data:<dataset>"``;
    ``attempt_id``: the stored run's attempt (what :func:`register` re-queues)."""

    config: TrialConfig
    keys: tuple[str, ...]
    attempt_id: str | None = None

    @property
    def code(self) -> tuple[str, ...]:
        return tuple(k for k in self.keys if not k.startswith("data:"))

    @property
    def data(self) -> tuple[str, ...]:
        return tuple(k for k in self.keys if k.startswith("data:"))


@dataclass
class ProvenanceCheck:
    """Finished runs against the code and data a grid would use now (:func:`check_provenance`).

    ``changed``: runs whose recorded fingerprints differ; ``unknown``: runs that recorded no
    code fingerprint (made before runs recorded one), answered from the store;
    ``unchecked``: runs whose data could not be fingerprinted here, answered from the store,
    with the reason per dataset in ``unchecked_why``.
    """

    changed: list[Changed] = field(default_factory=list)
    unknown: list[TrialConfig] = field(default_factory=list)
    unchecked: list[TrialConfig] = field(default_factory=list)
    unchecked_why: dict[str, str] = field(default_factory=dict)


@dataclass
class GridPlan:
    """A study's trials, split by what the store says of them.

    ``provenance`` holds the finished runs made by other code or data (``changed``: run
    again, in ``todo``, unless ``keep_old``, then in ``cached``) and those whose code or
    data could not be compared.
    """

    spec: StudySpec
    trials: list[TrialConfig]
    todo: list[TrialConfig]
    cached: list[TrialConfig]
    live: list[TrialConfig] = field(default_factory=list)  # running in another live grid: skipped
    stale: list[TrialConfig] = field(default_factory=list)  # abandoned while running: re-run (in todo)
    gone: dict[str, str] = field(default_factory=dict)  # of those, left by a driver of this host that ended: id → driver
    stale_after: float = STALE_AFTER
    provenance: ProvenanceCheck = field(default_factory=ProvenanceCheck)
    keep_old: bool = False  # changed runs are answered from the store instead of run again
    data_dir: str | None = None  # where the data fingerprints were computed

    @property
    def changed(self) -> list[Changed]:
        return self.provenance.changed

    @property
    def rerun(self) -> list[Changed]:
        """The finished trials this plan runs again because their code or data changed."""
        return [] if self.keep_old else self.changed


#: Trial-level options that change no object :func:`~bench.trial.preflight` builds or checks.
PREFLIGHT_FREE = ("seed", "lr", "val_subset", "label_smoothing", "diverge_factor", "log_steps")


def preflight_key(config: TrialConfig) -> str:
    """Trials with the same key pass or fail :func:`~bench.trial.preflight` together."""
    return json.dumps([v for k, v in config.to_dict().items() if k not in PREFLIGHT_FREE])


def validate(trials: Sequence[TrialConfig]) -> None:
    """Every check that needs the zoo, once per distinct model/optimizer build."""
    from bench.trial import preflight  # builds on the meta device: imports torch

    seen: set[str] = set()
    for config in trials:
        key = preflight_key(config)
        if key not in seen:
            seen.add(key)
            preflight(config)


def plan(
    spec: StudySpec,
    store: ResultStore,
    *,
    stale_after: float = STALE_AFTER,
    keep_old: bool = False,
    data_dir: str | None = None,
) -> GridPlan:
    """Which trials to run: all but the finished ones and those another live grid runs.

    A finished trial whose run was made by other code or on other data (read from
    ``data_dir``; see :func:`check_provenance`) is run again, unless ``keep_old``. A tuned
    study's second phase follows from the store (:func:`~bench.grid.tuning.study_trials`).
    """
    if stale_after < 0:
        raise BenchError(f"stale_after must be ≥ 0 seconds, got {stale_after}.")
    trials = [config for _, config in study_trials(spec, store)]
    validate(trials)
    finished, running, stale, gone = _states([t.trial_id for t in trials], store, stale_before(stale_after))
    stale |= set(gone)
    distinct = {t.trial_id: t for t in trials if t.trial_id in finished}  # a trial two variants share: once
    check = check_provenance(list(distinct.values()), finished, data_dir)
    rerun = set() if keep_old else {c.config.trial_id for c in check.changed}
    done = set(finished) - rerun
    live = running - stale
    return GridPlan(
        spec,
        trials,
        todo=[t for t in trials if t.trial_id not in done and t.trial_id not in live],
        cached=[t for t in trials if t.trial_id in done],
        live=[t for t in trials if t.trial_id in live],
        stale=[t for t in trials if t.trial_id in stale],
        gone=gone,
        stale_after=stale_after,
        provenance=check,
        keep_old=keep_old,
        data_dir=data_dir,
    )


def _states(
    ids: list[str], store: ResultStore, threshold: str
) -> tuple[dict[str, dict], set[str], set[str], dict[str, str]]:
    """The finished runs by id; the ids running; those with a heartbeat older than
    ``threshold``; and, by id, the driver of those whose driver ran here and has ended."""
    done = {r["_id"]: r for r in runs_by_id(store, ids, {"status": {"$in": list(FINISHED_STATUSES)}})}
    running = runs_by_id(store, ids, {"status": "running"})
    stale = {r["_id"] for r in runs_by_id(store, ids, stale_filter(threshold))}
    gone = {
        r["_id"]: r["driver"] for r in running
        if r["_id"] not in stale and driver_gone(r.get("driver"), r.get("driver_start"))
    }
    return done, {r["_id"] for r in running}, stale, gone


def check_provenance(
    configs: Sequence[TrialConfig], runs: Mapping[str, Mapping[str, Any]], data_dir: str | None
) -> ProvenanceCheck:
    """Compares each finished run of ``configs`` with the code and data its trial would use now.

    Code: the run's ``env.code`` against :func:`~bench.provenance.code_fingerprint` of its
    config (the source files as they are now); a run without one is ``unknown``. Data: a
    run that recorded ``env.data`` against the fingerprint of its dataset and subsets as
    found in ``data_dir`` now, computed once per dataset and subsets, and only when some
    run recorded one (a dataset not in the data directory is not downloaded for this:
    its runs are ``unchecked``).
    """
    check = ProvenanceCheck()
    data_now = _data_fingerprints(
        {_data_key(c) for c in configs if isinstance(_env(runs, c).get("data"), str)}, data_dir, check.unchecked_why
    )
    for config in configs:
        env = _env(runs, config)
        recorded = env.get("code")
        keys: list[str] = []
        if isinstance(recorded, Mapping) and recorded:
            code_now = sanitize(code_fingerprint(config))  # keys as the store writes them
            keys += [k for k, v in code_now.items() if recorded.get(k) != v]
        else:
            check.unknown.append(config)
        if isinstance(env.get("data"), str):
            data = data_now.get(_data_key(config))
            if data is None:
                check.unchecked.append(config)
            elif data != env["data"]:
                keys.append(f"data:{config.dataset}")
        if keys:
            check.changed.append(Changed(config, tuple(keys), runs[config.trial_id].get("attempt_id")))
    return check


def _env(runs: Mapping[str, Mapping[str, Any]], config: TrialConfig) -> Mapping[str, Any]:
    env = runs[config.trial_id].get("env")
    return env if isinstance(env, Mapping) else {}


def _data_key(config: TrialConfig) -> DataKey:
    return (config.dataset, config.train_subset, config.val_subset)


def _data_fingerprints(keys: set[DataKey], data_dir: str | None, why: dict[str, str]) -> dict[DataKey, str]:
    """The data fingerprint of each (dataset, train_subset, val_subset) as found in
    ``data_dir`` now; a dataset that cannot be read here is left out, its reason in ``why``."""
    if not keys:
        return {}
    from bench.zoo.datasets import DataNotPresent, dataset_fingerprint  # numpy, torch

    out: dict[DataKey, str] = {}
    for key in sorted(keys, key=str):
        name, train_subset, val_subset = key
        try:
            out[key] = dataset_fingerprint(name, data_dir=data_dir, train_subset=train_subset, val_subset=val_subset,
                                           download=False)
        except DataNotPresent:
            why[name] = "its files are not in the data directory"
        except BenchError as exc:
            why[name] = str(exc)
    return out


def plan_tuning(first: GridPlan, store: ResultStore) -> GridPlan:
    """The tuned re-runs a finished sweep determines: the study planned again (its second
    phase now follows from the stored results), less the trials the first plan held."""
    again = plan(first.spec, store, stale_after=first.stale_after, keep_old=first.keep_old, data_dir=first.data_dir)
    planned = {t.trial_id for t in first.trials}
    again.todo = [t for t in again.todo if t.trial_id not in planned]
    return again


def trial_fields(config: TrialConfig) -> dict[str, Any]:
    """What a run records of its trial before it starts: the config and the derived lr."""
    return {"config": config.to_dict(), "derived": {"effective_lr": config.effective_lr}}


QUEUED = {"status": "pending"}  # what a run created before it starts holds besides its config


def register(plan_: GridPlan, store: ResultStore) -> None:
    """Records the study and its trials: every trial gains this study's name; abandoned
    ones are marked interrupted; new ones are queued as pending with their config; finished
    ones the plan runs again (made by other code or data) are queued as pending.

    Status changes are conditional writes, re-checked by the store: a trial another grid
    started or finished since ``plan`` keeps its status. A new run is created with its
    status in the same write as its config, so a registration stopped part-way (a full
    disk) never leaves a run without a status.
    """
    spec = plan_.spec
    store.save_study(
        spec.key,
        {**spec.to_dict(), "spec_hash": spec.spec_hash, "trial_ids": [t.trial_id for t in plan_.trials], "updated_at": utcnow()},
    )
    for config in [*plan_.cached, *plan_.live]:
        store.upsert_run(config.trial_id, {}, study=spec.key)
    for config in plan_.todo:
        store.upsert_run(config.trial_id, trial_fields(config), study=spec.key, on_insert=QUEUED)
    threshold = stale_before(plan_.stale_after)
    todo_ids = [t.trial_id for t in plan_.todo]
    for chunk in chunked(todo_ids, ID_CHUNK):
        block = {"$in": chunk}
        store.update_runs({"$and": [{"_id": block}, stale_filter(threshold)]}, {"status": "interrupted", "finished_at": utcnow()})
        store.update_runs({"_id": block, "status": {"$exists": False}}, {"status": "pending"})
    for trial_id, driver in plan_.gone.items():  # only while that driver still holds it
        store.update_runs({"_id": trial_id, "status": "running", "driver": driver}, {"status": "interrupted", "finished_at": utcnow()})
    for changed in plan_.rerun:  # only the attempt planned on: a newer result is kept
        store.update_runs(
            {"_id": changed.config.trial_id, "status": {"$in": list(FINISHED_STATUSES)}, "attempt_id": changed.attempt_id},
            {"status": "pending", "error": None, "finished_at": None},
        )

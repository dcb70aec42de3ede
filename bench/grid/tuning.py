"""Tuning inside a study: the DeepOBS protocol (Schneider et al. 2019, arXiv:1903.05499).

A study with a ``tune`` block sweeps one field (``over``, usually ``lr``) for each
configuration (a group: trials that differ only in ``over`` and the seed) with its first
seeds, picks for each group the value with the best mean ``metric``, and re-runs it with
the extra ``seeds``. The second phase depends on the first phase's results, so it is derived from
the store: :func:`study_trials` returns the first phase and, for each group whose first
phase has finished, its tuned re-runs. Diverged and failed trials score as the worst
possible value, so an unstable learning rate is never chosen.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bench.spec import StudySpec, TrialConfig
from bench.store.base import runs_by_id

if TYPE_CHECKING:
    from bench.store import ResultStore

DONE = ("completed", "diverged", "failed")


def study_trials(spec: StudySpec, store: ResultStore | None = None) -> list[tuple[str, TrialConfig]]:
    """(variant, config) of every trial of the study: the expansion, then the tuned
    re-runs the store's results already determine (none without a store or a tune block)."""
    first = spec.labelled_pairs()
    if not spec.tune or store is None:
        return first
    ids = [c.trial_id for _, c in first]
    runs = {run["_id"]: run for run in runs_by_id(store, ids)}
    seen = {c.trial_id for _, c in first}
    extra = [(label, c) for label, c in tuned(spec, first, runs) if c.trial_id not in seen]
    return first + extra


def tuned(
    spec: StudySpec, first: list[tuple[str, TrialConfig]], runs: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, TrialConfig]]:
    """The second phase for every group whose first phase has finished."""
    over, metric = spec.tune["over"], spec.tune["metric"]
    sign = 1.0 if spec.tune.get("higher_is_better", True) else -1.0
    groups: dict[str, list[tuple[str, TrialConfig]]] = {}
    for label, config in first:
        groups.setdefault(_group_key(label, config, over), []).append((label, config))
    out: list[tuple[str, TrialConfig]] = []
    for members in groups.values():
        if any((runs.get(c.trial_id) or {}).get("status") not in DONE for _, c in members):
            continue  # this group's sweep is not finished yet
        scores: dict[Any, list[float]] = {}
        for _, config in members:
            scores.setdefault(getattr(config, over), []).append(score(runs[config.trial_id], metric, sign))
        best = max(scores, key=lambda v: sum(scores[v]) / len(scores[v]))
        if not any(math.isfinite(x) for x in scores[best]):
            continue  # every value diverged or failed: nothing to confirm
        label, chosen = next((lb, c) for lb, c in members if getattr(c, over) == best)
        out += [(label, chosen.replace(seed=seed)) for seed in spec.tune["seeds"]]
    return out


def score(run: Mapping[str, Any], metric: str, sign: float) -> float:
    """A run's metric, signed so that higher is better; -inf unless it completed with a finite value."""
    value = (run.get("summary") or {}).get(metric) if run.get("status") == "completed" else None
    if value is None or not math.isfinite(float(value)):
        return -math.inf
    return sign * float(value)


def _group_key(label: str, config: TrialConfig, over: str) -> str:
    """Trials of one variant that differ only in the tuned field and the seed share a key."""
    rest = {k: v for k, v in config.to_dict().items() if k not in (over, "seed")}
    return json.dumps([label, rest], sort_keys=True, default=str)

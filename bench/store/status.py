"""Where a store's grids stand: runs per study and status, and re-queueing runs.

``bench store status`` and ``bench store reset`` are thin wrappers over these two
functions. A ``running`` trial whose heartbeat is older than ``stale_after`` seconds
was abandoned by its driver (killed, machine lost); it is counted as stale, and the next
``bench grid`` of its study marks it interrupted and runs it again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.errors import StoreError
from bench.store.base import RUN_STATUSES, STALE_AFTER, stale_before, stale_filter

if TYPE_CHECKING:
    from bench.store.base import ResultStore

#: Statuses ``requeue`` accepts: every outcome. ``running`` is not one of them (a live
#: grid owns it; an abandoned one is re-run by the next grid), nor ``pending``.
REQUEUEABLE: tuple[str, ...] = ("failed", "interrupted", "diverged", "completed")


@dataclass(frozen=True)
class StudyStatus:
    study: str  # "" for runs that belong to no study
    counts: dict[str, int]  # status → runs
    stale: int  # running trials with no heartbeat for stale_after seconds

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def check_study(store: ResultStore, study: str) -> str:
    """``study`` when the store knows it (a study document, or a run that lists it); else a
    :class:`StoreError` naming the studies it does know."""
    if store.get_study(study) is not None or store.find_runs({"study": study}, limit=1):  # stops at the first run
        return study
    known = sorted({doc.get("_id") for doc in store.list_studies()} | set(store.status_counts()) - {"", None})
    raise StoreError(
        f"Unknown study {study!r}: the {store.kind} store {store.location} has no study or run of that name. "
        f"Studies there: {', '.join(known) or 'none'} (`bench store status` shows them)."
    )


def check_status(status: str) -> str:
    """``status`` when it is a run status; else a :class:`StoreError` listing them."""
    if status not in RUN_STATUSES:
        raise StoreError(f"Unknown run status {status!r}. Valid statuses: {', '.join(RUN_STATUSES)}.")
    return status


def study_status(store: ResultStore, study: str | None = None, stale_after: float = STALE_AFTER) -> list[StudyStatus]:
    """Runs per study and status (one study, or all of them in name order)."""
    if not math.isfinite(stale_after) or stale_after < 0:
        raise StoreError(f"--stale-after must be a finite number of seconds ≥ 0, got {stale_after}.")
    counts = store.status_counts()
    if study is not None:
        if study not in counts:
            raise StoreError(
                f"No runs of study {study!r} in the {store.kind} store {store.location}. Studies: "
                f"{', '.join(s for s in counts if s) or 'none'}."
            )
        counts = {study: counts[study]}
    threshold = stale_before(stale_after)
    result = []
    for name, by_status in counts.items():
        stale = 0
        if name and by_status.get("running"):
            stale = store.count_runs({"$and": [{"study": name}, stale_filter(threshold)]})
        result.append(StudyStatus(name, dict(by_status), stale))
    return result


def requeue(store: ResultStore, study: str, status: str) -> int:
    """Marks the study's runs with ``status`` pending again, so the next grid runs them;
    returns how many. Their error and finish time are cleared; their metrics are replaced
    epoch by epoch when they run."""
    if status not in REQUEUEABLE:
        valid = f"Re-queue one of: {', '.join(REQUEUEABLE)}."
        if status == "running":
            reason = (
                "running trials cannot be re-queued: one with a fresh heartbeat belongs to a "
                "live grid, and one abandoned by a killed grid is re-run by the next `bench grid` "
                "of its study (see --stale-after)."
            )
        elif status == "pending":
            reason = "pending runs are already queued."
        else:
            reason = f"{status!r} is not a run status (one of {', '.join(RUN_STATUSES)})."
        raise StoreError(f"Cannot re-queue: {reason} {valid}")
    check_study(store, study)
    return store.update_runs(
        {"study": study, "status": status}, {"status": "pending", "error": None, "finished_at": None}
    )

"""Per-step metrics, kept in buckets: one document per run and block of steps.

A long run records thousands of optimizer steps (loss, accuracy, gradient norm, learning
rate…). One document per step would swamp the store with tiny documents; one document
per run would grow without bound. Steps are therefore grouped into buckets of
:data:`STEPS_PER_BUCKET` consecutive steps, keyed by ``(run_id, bucket)`` with
``bucket = step // STEPS_PER_BUCKET``::

    {"_id": "<run_id>:<bucket>", "run_id": "<run_id>", "bucket": 3,
     "steps": {"3000": {"loss": 0.41, "lr": 0.1, ...}, "3001": {...}, ...}}

Inside a bucket the steps are a mapping from the step number (as text) to that step's
fields. Writing a step sets exactly its entry (``$set`` of ``steps.<n>``), so a replayed
write replaces the step instead of duplicating it, and writers never read a bucket
first. Each step's fields are cut to :data:`~bench.store.size.MAX_STEP_BYTES`, so a full
bucket stays near 4 MiB, far below MongoDB's 16 MiB limit, however long the run. The
embedded store keeps one row per step under the primary key ``(run_id, step)`` (SQLite's
B-tree is its bucket: appending steps never rewrites the earlier ones); both return the
same step records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bench.errors import StoreError
from bench.store.base import check_name, sanitize
from bench.store.size import MAX_STEP_BYTES, fit

STEPS_PER_BUCKET = 1000
"""Consecutive steps per bucket document."""

#: Columns that lead a steps DataFrame; the other per-step fields follow in sorted order.
STEP_COLUMNS: tuple[str, ...] = ("run_id", "step")


def bucket_key(run_id: str, bucket: int) -> str:
    """MongoDB ``_id`` of one step bucket."""
    return f"{run_id}:{bucket}"


def prepare_steps(run_id: str, steps: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, dict]]:
    """Validate and sanitize one ``upsert_steps`` call into ``{bucket: {"<step>": fields}}``.

    Every step needs a non-negative integer ``step``; a ``run_id`` field, if present, must
    name the same run. A step given twice in one call keeps its last fields.
    """
    check_name("run id", run_id)
    if isinstance(steps, Mapping) or isinstance(steps, (str, bytes)):
        raise StoreError("upsert_steps takes a list of step records, not one record.")
    buckets: dict[int, dict[str, dict]] = {}
    for raw in steps:
        if not isinstance(raw, Mapping):
            raise StoreError(f"A step record must be a mapping, got {raw!r}.")
        fields = sanitize(raw)
        fields.pop("_id", None)
        owner = fields.pop("run_id", run_id)
        if owner != run_id:
            raise StoreError(
                f"A step record of run {owner!r} was given to upsert_steps for run {run_id!r}."
            )
        step = fields.pop("step", None)
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise StoreError(
                f"Every step record needs a non-negative integer 'step'; got {step!r} for run "
                f"{run_id!r}."
            )
        buckets.setdefault(step // STEPS_PER_BUCKET, {})[str(step)] = fit(fields, MAX_STEP_BYTES, ())
    return buckets


def unpack_bucket(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The step records of one bucket document, in step order."""
    run_id = doc["run_id"]
    entries = doc.get("steps") or {}
    return [{"run_id": run_id, "step": int(key), **entries[key]} for key in sorted(entries, key=int)]


def steps_frame(records: Iterable[Mapping[str, Any]]) -> Any:
    """Step records (as ``find_steps`` returns them) → a pandas DataFrame.

    Columns: ``run_id``, ``step``, then every per-step field (``loss``, ``acc``,
    ``grad_norm``, ``first_grad_norm``, ``lr``…) in sorted order; rows sorted by run and
    step; a field a step did not record is missing (NaN).
    """
    import pandas as pd

    rows = list(records)
    if not rows:
        return pd.DataFrame(columns=list(STEP_COLUMNS))
    frame = pd.DataFrame(rows)
    fields = sorted(c for c in frame.columns if c not in STEP_COLUMNS)
    frame = frame[[*STEP_COLUMNS, *fields]]
    return frame.sort_values(list(STEP_COLUMNS), kind="stable").reset_index(drop=True)

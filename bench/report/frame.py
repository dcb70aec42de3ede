"""Store documents → pandas DataFrames (one row per run; one row per run and epoch).

Config and summary fields become plain columns (``norm``, ``batch_size``,
``final_val_acc``), so a report or a notebook can group and pivot directly. The runs
frame also has ``outcome``: the run's ``status``, except ``collapsed`` for a run that
completed at chance accuracy (:func:`collapsed`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from bench.store.flat import RUN_COLUMNS, metrics_frame_from_docs, run_row, runs_frame_from_docs

__all__ = [
    "RUN_COLUMNS", "chance_accuracy", "chance_threshold", "collapsed", "load_results", "metrics_frame", "outcome",
    "run_rows", "runs_frame", "store_metrics_frame", "store_runs_frame", "with_outcome",
]

#: Classes and validation images of the built-in datasets, as ``bench/zoo/datasets.py``
#: builds them (that module imports torch, which a report must not; a test checks the two
#: agree). A dataset whose registry entry declares ``info={"num_classes": ..., "val_size":
#: ...}`` (a plugin's) is read from its declaration instead.
DATASETS = {
    "digits": (10, 360),
    "synthetic": (10, 128),
    "mnist": (10, 10_000),
    "fashion-mnist": (10, 10_000),
    "cifar10": (10, 10_000),
    "cifar100": (100, 10_000),
}
#: Standard errors of a chance-level classifier's accuracy above chance that still count as chance.
CHANCE_Z = 3.0
#: The final validation accuracy a collapsed run is judged on.
CHANCE_METRIC = "final_val_acc"


def _dataset(dataset: Any) -> tuple[int | None, int | None]:
    """(classes, validation images) of a dataset name; (None, None) when unknown."""
    if not isinstance(dataset, str):
        return None, None
    from bench.zoo.registry import DATASETS as REGISTRY  # the static declarations; imports no torch

    info = REGISTRY.entry(dataset).info if dataset in REGISTRY else {}
    classes, val = DATASETS.get(dataset, (None, None))
    return info.get("num_classes", classes), info.get("val_size", val)


def chance_accuracy(dataset: Any) -> float | None:
    """The accuracy of guessing, or of predicting one class on a class-balanced validation
    set: 1 / the dataset's number of classes; None for a dataset whose classes are not known."""
    classes = _dataset(dataset)[0]
    return 1.0 / classes if classes else None


def chance_threshold(dataset: Any, val_subset: Any = None) -> float | None:
    """The highest accuracy that still counts as chance: 1/K + z·√((1/K)(1 − 1/K)/N), with
    K classes, N validation images (``val_subset`` when it keeps fewer) and z = 3.

    Why a binomial margin: a classifier that learned nothing scores 1/K in expectation, and
    on N images its accuracy is a binomial proportion with that standard error; beyond 3 of
    them (a chance-level run exceeds it with probability about 0.1%) the run learned
    something. A run that predicts one class scores exactly that class's share, 1/K on the
    class-stratified validation splits. The margin shrinks with N: 10.9% on 10,000 images of
    10 classes, 14.7% on the 360 of digits. None when the dataset's classes are not known."""
    classes, val = _dataset(dataset)
    if not classes or not val:
        return None
    n = val
    if isinstance(val_subset, (int, float)) and not isinstance(val_subset, bool) and val_subset > 0:
        n = min(val, int(val_subset))
    p = 1.0 / classes
    return p + CHANCE_Z * math.sqrt(p * (1 - p) / n)


def collapsed(accuracy: Any, dataset: Any, val_subset: Any = None) -> bool:
    """Whether a final validation ``accuracy`` (a fraction) is at chance for ``dataset``
    (:func:`chance_threshold`); False when either is unknown."""
    try:
        value = float(accuracy)
    except (TypeError, ValueError):
        return False
    threshold = chance_threshold(dataset, val_subset)
    return threshold is not None and math.isfinite(value) and value <= threshold


def outcome(row: Mapping[str, Any]) -> Any:
    """A run's outcome: its status, except ``collapsed`` for a completed run at chance."""
    status = row.get("status")
    if status == "completed" and collapsed(row.get(CHANCE_METRIC), row.get("dataset"), row.get("val_subset")):
        return "collapsed"
    return status


def with_outcome(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the column ``outcome`` (:func:`outcome` of each row, the threshold
    computed once per dataset and subset), unless it has one."""
    if "outcome" in frame or "status" not in frame:
        return frame
    import pandas as pd

    n = len(frame)
    datasets = frame["dataset"] if "dataset" in frame else pd.Series([None] * n, index=frame.index, dtype=object)
    subsets = frame["val_subset"] if "val_subset" in frame else pd.Series([None] * n, index=frame.index, dtype=object)
    keys = [(d, None if s is None or s != s else s) for d, s in zip(datasets, subsets)]  # NaN: no subset
    limits = {key: chance_threshold(*key) for key in dict.fromkeys(keys)}
    accuracy = pd.to_numeric(frame[CHANCE_METRIC], errors="coerce") if CHANCE_METRIC in frame else pd.Series(math.nan, index=frame.index)
    limit = pd.Series([limits[key] if limits[key] is not None else math.nan for key in keys], index=frame.index, dtype=float)
    gone = (frame["status"] == "completed") & (accuracy <= limit)
    return frame.assign(outcome=frame["status"].astype(object).where(~gone, "collapsed"))


def runs_frame(runs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per run document (:func:`run_rows`), with ``outcome``; the run and config
    columns when there is none."""
    return with_outcome(runs_frame_from_docs(runs))


def run_rows(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat dict per run (the rows of :func:`runs_frame`; pandas is not needed, so a
    listing prints without importing it)."""
    return [run_row(run) for run in runs]


def metrics_frame(docs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per metrics document, by run then epoch."""
    return metrics_frame_from_docs(docs)


def store_runs_frame(
    store: Any, filter: Mapping[str, Any] | None = None, *, ids: list[str] | None = None, extra: list[dict] = ()
) -> pd.DataFrame:
    """``runs_frame`` of the runs ``store.find_runs(filter)`` returns (or, with ``ids``, of
    those among them, as :func:`~bench.store.base.runs_by_id` does), then of the ``extra``
    documents: read by the store's own fast path where it has one."""
    if hasattr(store, "runs_frame"):
        return with_outcome(store.runs_frame(dict(filter) if filter else None, ids=ids, extra=list(extra)))
    from bench.store.base import runs_by_id

    docs = runs_by_id(store, ids) if ids is not None else store.find_runs(dict(filter) if filter else None)
    return runs_frame([*docs, *extra])


def store_metrics_frame(store: Any, run_ids: list[str]) -> pd.DataFrame:
    """``metrics_frame(store.find_metrics(run_ids))``, by the store's fast path where it has one."""
    if hasattr(store, "metrics_frame"):
        return store.metrics_frame(run_ids)
    return metrics_frame(store.find_metrics(run_ids))


def load_results(
    study: str | None = None,
    where: Mapping[str, Any] | None = None,
    *,
    store: Any = None,
    metrics: bool = False,
    steps: bool = False,
) -> pd.DataFrame:
    """Runs as a DataFrame, optionally restricted to a study and a MongoDB-style filter.

    ``store`` is a ResultStore, a URI/path, or None (``BENCH_MONGO_URI`` / ``BENCH_STORE``
    / the default embedded file). With ``metrics=True`` returns the per-epoch metrics of
    those runs joined with their config instead; with ``steps=True`` the per-step records
    of those that logged them (``log_steps``), joined the same way.
    """
    from bench.store import open_store

    owned = store is None or isinstance(store, str)
    handle = open_store(store) if owned else store
    try:
        query: dict[str, Any] = dict(where or {})
        if study:
            query = {"$and": [query, {"study": study}]} if query else {"study": study}
        if metrics and steps:
            raise ValueError("load_results takes metrics=True or steps=True, not both: they are rows of different things.")
        frame = store_runs_frame(handle, query)
        if not (metrics or steps):
            return frame
        ids = frame["run_id"].tolist()
        if metrics:
            rows = store_metrics_frame(handle, ids)
        else:
            from bench.store.steps import steps_frame

            rows = steps_frame(handle.find_steps(ids))
        if rows.empty:
            return rows
        keep = [c for c in frame.columns if c not in rows.columns or c == "run_id"]
        return rows.merge(frame[keep], on="run_id", how="left")
    finally:
        if owned:
            handle.close()

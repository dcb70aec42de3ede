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

from bench.store.flat import RUN_COLUMNS, blocks_frame, metrics_frame_from_docs, run_row, runs_frame_from_docs

__all__ = [
    "AT_CHANCE_WHEN_DIVERGED", "RUN_COLUMNS", "chance_accuracy", "chance_threshold", "collapsed", "load_results",
    "metrics_frame", "outcome", "run_rows", "runs_frame", "store_metrics_frame", "store_runs_frame", "with_outcome",
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
#: The accuracies of the network a run ends with. A claim reads a diverged run's at chance
#: (:func:`chance_accuracy`): its training was lost, and a guess is what the network it
#: left is worth. Leaving it out instead would judge a technique on its survivors only.
AT_CHANCE_WHEN_DIVERGED = frozenset({"final_val_acc", "final_train_acc", "final_ema_val_acc", "deployed_val_acc"})


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
    import numpy as np
    import pandas as pd

    n = len(frame)
    datasets = frame["dataset"] if "dataset" in frame else pd.Series([None] * n, index=frame.index, dtype=object)
    subsets = frame["val_subset"] if "val_subset" in frame else pd.Series([None] * n, index=frame.index, dtype=object)
    groups, first, _ = row_groups([datasets, subsets])
    pairs = zip(datasets.take(first).tolist(), subsets.take(first).tolist())
    limits = [chance_threshold(d, None if s is None or s != s else s) for d, s in pairs]  # NaN: no subset
    limit = np.array([math.nan if v is None else v for v in limits], dtype=float)[groups]
    accuracy = pd.to_numeric(frame[CHANCE_METRIC], errors="coerce") if CHANCE_METRIC in frame else pd.Series(math.nan, index=frame.index)
    gone = (frame["status"] == "completed") & (accuracy <= pd.Series(limit, index=frame.index, dtype=float))
    return frame.assign(outcome=frame["status"].astype(object).where(~gone, "collapsed"))


def value_codes(column: pd.Series) -> tuple[Any, int]:
    """Integer codes of a column's values (-1 where missing, under numeric and text dtypes)
    and how many codes there are: rows with one code hold equal values of one type, so
    anything computed from one row's value holds for all of them. In an object column 1,
    1.0 and True get different codes, and containers are told apart by their text ((1, 2)
    and (1.0, 2) are equal, their texts are not)."""
    import numpy as np
    import pandas as pd

    if column.dtype.kind in "biuf" or isinstance(column.dtype, pd.StringDtype):
        codes, uniques = pd.factorize(column, use_na_sentinel=True)
        return codes.astype(np.int64, copy=False), len(uniques)
    values = column.to_numpy(dtype=object)
    kinds, types = pd.factorize(np.frompyfunc(type, 1, 1)(values))
    if all(kind in _SCALARS for kind in types):  # equal values of one type: one code (None and NaN by their types)
        codes = pd.factorize(values, use_na_sentinel=True)[0]
    else:  # containers (equal and spelled differently) or unhashable values: by their text
        codes = pd.factorize(np.frompyfunc(repr, 1, 1)(values))[0]
    codes, distinct = pd.factorize((codes.astype(np.int64) + 1) * len(types) + kinds)
    return codes.astype(np.int64, copy=False), len(distinct)


_SCALARS = (str, int, float, bool, type(None))


def _uniform(column: pd.Series) -> bool:
    """Whether a column holds one value in every row (a number or a text, or None in an
    object column; never a missing one): a comparison, cheaper than coding it."""
    import pandas as pd

    if len(column) == 0:
        return True
    if column.dtype.kind in "biuf":
        values = column.to_numpy()
        return bool((values == values[0]).all())  # NaN equals nothing: coded
    if isinstance(column.dtype, pd.StringDtype):
        first = column.iloc[0]
        return isinstance(first, str) and bool((column == first).all())
    values = column.to_numpy()
    return values.dtype == object and values[0] is None and bool((values == None).all())  # noqa: E711 (elementwise)


def row_groups(columns: list[pd.Series]) -> tuple[Any, Any, list[bool]]:
    """Rows grouped by their values in ``columns`` (:func:`value_codes`): each row's group
    (0, 1, … in the order of the groups' first rows), each group's first row, and which
    columns vary (the others hold one value throughout). What is computed from a group's
    first row holds for the group: per group, not per row, at 100,000 runs."""
    import numpy as np
    import pandas as pd

    n = len(columns[0]) if columns else 0
    combined = np.zeros(n, dtype=np.int64)
    varies = [not _uniform(column) for column in columns]  # most config fields of a study split no group
    for column, varying in zip(columns, varies):
        if varying:
            codes, distinct = value_codes(column)
            combined = pd.factorize(combined * (distinct + 1) + codes + 1)[0]
    first = np.flatnonzero(np.r_[True, combined[1:] > np.maximum.accumulate(combined)[:-1]]) if n else np.empty(0, np.int64)
    return combined, first, varies


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
        return join_runs(rows, frame)
    finally:
        if owned:
            handle.close()


def join_runs(rows: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (per epoch or per step, with ``run_id``) with the columns of their run in
    ``runs`` they do not have: ``rows.merge(runs[...], on="run_id", how="left")``, the same
    frame, built by position. A merge takes every run column with the index through
    pandas' generic path, 0.8 s of the 10,000-run per-epoch frame; rows come grouped by run,
    so here the run values of all columns of a dtype are one ``numpy.repeat`` (a ``take``
    otherwise), straight into the frame's block of that dtype."""
    import numpy as np
    import pandas as pd

    keep = [c for c in runs.columns if c not in rows.columns]
    codes, ids = pd.factorize(rows["run_id"])
    at = pd.Index(runs["run_id"]).get_indexer(ids) if runs["run_id"].is_unique else None
    if at is None or (at < 0).any() or (codes < 0).any():  # a run twice, or rows of no run: what merge does
        return rows.merge(runs[[c for c in runs.columns if c not in rows.columns or c == "run_id"]], on="run_id", how="left")
    grouped = bool((np.diff(codes) >= 0).all())
    counts = np.bincount(codes, minlength=len(ids)) if grouped else None
    where = np.repeat(at, counts) if grouped else at[codes]
    others = {name: rows[name].array for name in rows.columns}
    by_dtype: dict[Any, list[str]] = {}
    for name in keep:
        values = runs[name].array
        if isinstance(values, pd.arrays.NumpyExtensionArray):
            by_dtype.setdefault(values.dtype.numpy_dtype, []).append(name)
        else:
            others[name] = values.take(where)
    arrays, places = {}, {}
    for dtype, names in by_dtype.items():  # the run values of all columns of a dtype, repeated at once
        values = np.stack([runs[name].to_numpy() for name in names])
        arrays[dtype] = np.repeat(values[:, at], counts, axis=1) if grouped else values[:, where]
        places.update((name, (dtype, i)) for i, name in enumerate(names))
    return blocks_frame([*rows.columns, *keep], arrays, places, others)

"""Store documents → pandas DataFrames (one row per run; one row per run and epoch).

Config and summary fields become plain columns (``norm``, ``batch_size``,
``final_val_acc``), so a report or a notebook can group and pivot directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from bench.store.flat import RUN_COLUMNS, metrics_frame_from_docs, run_row, runs_frame_from_docs

__all__ = ["RUN_COLUMNS", "load_results", "metrics_frame", "run_rows", "runs_frame", "store_metrics_frame", "store_runs_frame"]


def runs_frame(runs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per run document (:func:`run_rows`); the run and config columns when there is none."""
    return runs_frame_from_docs(runs)


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
        return store.runs_frame(dict(filter) if filter else None, ids=ids, extra=list(extra))
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

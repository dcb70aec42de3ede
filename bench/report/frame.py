"""Store documents → pandas DataFrames (one row per run; one row per run and epoch).

Config and summary fields become plain columns (``norm``, ``batch_size``,
``final_val_acc``), so a report or a notebook can group and pivot directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from bench.spec import CONFIG_FIELDS

if TYPE_CHECKING:
    import pandas as pd

RUN_COLUMNS = ("run_id", "status", "study", "attempts", "started_at", "finished_at")


def runs_frame(runs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    rows = run_rows(runs)
    columns = list(RUN_COLUMNS) + [c for c in CONFIG_FIELDS]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=columns)
    return frame


def run_rows(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat dict per run (the rows of :func:`runs_frame`; pandas is not needed, so a
    listing prints without importing it)."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "run_id": run.get("_id"),
            "status": run.get("status"),
            "study": ",".join(run.get("study") or []),
            "attempts": run.get("attempts"),
            "started_at": run.get("started_at"),
            "finished_at": run.get("finished_at"),
        }
        row.update({k: _cell(v) for k, v in (run.get("config") or {}).items()})
        row.update({k: v for k, v in (run.get("derived") or {}).items()})
        row.update({k: v for k, v in (run.get("summary") or {}).items() if k not in row})
        error = run.get("error")
        row["error"] = error.strip().splitlines()[-1] if isinstance(error, str) and error.strip() else None
        rows.append(row)
    return rows


def _cell(value: Any) -> Any:
    """Lists (e.g. lr_milestones) become tuples so the column stays hashable for groupby."""
    return tuple(value) if isinstance(value, list) else value


def metrics_frame(docs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame([{k: v for k, v in d.items() if k != "_id"} for d in docs])
    if frame.empty:
        return pd.DataFrame(columns=["run_id", "epoch"])
    return frame.sort_values(["run_id", "epoch"]).reset_index(drop=True)


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
        runs = handle.find_runs(query)
        frame = runs_frame(runs)
        if metrics and steps:
            raise ValueError("load_results takes metrics=True or steps=True, not both: they are rows of different things.")
        if not (metrics or steps):
            return frame
        ids = [r["_id"] for r in runs]
        if metrics:
            rows = metrics_frame(handle.find_metrics(ids))
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

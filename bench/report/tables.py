"""Aggregation and markdown tables. Pure functions: DataFrame in, DataFrame or text out.

Every cell is a distribution over seeds: mean ± sample std (ddof = 1) and n. Failed and
diverged trials are outcomes, not missing data: each cell counts them and shows them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

OUTCOMES = ("completed", "diverged", "failed")


def aggregate(frame: pd.DataFrame, rows: str, columns: str, metric: str) -> pd.DataFrame:
    """One row per (rows, columns) value pair: mean, std, n (completed trials with the
    metric), total trials, and the count of each outcome."""
    if frame.empty:
        return pd.DataFrame(columns=[rows, columns, "mean", "std", "n", "total", *OUTCOMES, "pending"])
    records = []
    for (r, c), group in frame.groupby([rows, columns], sort=True, dropna=False):
        done = group[group["status"] == "completed"]
        values = pd.to_numeric(done[metric], errors="coerce").dropna() if metric in done else pd.Series(dtype=float)
        records.append(
            {
                rows: r,
                columns: c,
                "mean": values.mean() if len(values) else math.nan,
                "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                "n": int(len(values)),
                "total": int(len(group)),
                **{o: int((group["status"] == o).sum()) for o in OUTCOMES},
                "pending": int((~group["status"].isin(OUTCOMES)).sum()),
            }
        )
    return pd.DataFrame.from_records(records)


def _fmt(value: float, scale: float, digits: int) -> str:
    return f"{value * scale:.{digits}f}"


def format_cell(cell: pd.Series, *, scale: float = 100.0, digits: int = 1, best: bool = False) -> str:
    """``**86.3 ± 0.4** (n=3)``; ``diverged 3/3``; ``85.1 (n=2; 1/3 diverged)``."""
    counts = {k: int(cell[k]) for k in ("n", "total", "pending", *OUTCOMES)}  # a row Series may hold floats
    notes = [f"{counts[o]}/{counts['total']} {o}" for o in ("diverged", "failed") if counts[o]]
    if counts["pending"]:
        notes.append(f"{counts['pending']}/{counts['total']} not run")
    if counts["n"] == 0:
        return "; ".join(notes) or "—"
    text = _fmt(cell["mean"], scale, digits)
    if counts["n"] > 1:
        text += f" ± {_fmt(cell['std'], scale, digits)}"
    if best:
        text = f"**{text}**"
    return f"{text} (n={counts['n']}{'; ' + '; '.join(notes) if notes else ''})"


def best_rows(agg: pd.DataFrame, rows: str, columns: str, higher_is_better: bool = True) -> dict[object, object]:
    """The row value with the best mean in each column (ignoring cells with no result)."""
    best: dict[object, object] = {}
    for c, group in agg.dropna(subset=["mean"]).groupby(columns, sort=False):
        idx = group["mean"].idxmax() if higher_is_better else group["mean"].idxmin()
        best[c] = group.loc[idx, rows]
    return best


def pivot_markdown(
    agg: pd.DataFrame,
    rows: str,
    columns: str,
    *,
    row_order: Sequence[object] | None = None,
    column_order: Sequence[object] | None = None,
    higher_is_better: bool = True,
    scale: float = 100.0,
    digits: int = 1,
) -> str:
    """A markdown pivot table (rows × columns) of formatted cells, best of each column in bold."""
    if agg.empty:
        return "_No runs yet._"
    row_values = _ordered(agg[rows].unique(), row_order)
    col_values = _ordered(agg[columns].unique(), column_order)
    best = best_rows(agg, rows, columns, higher_is_better)
    index = {(r, c): cell for _, cell in agg.iterrows() for r, c in [(cell[rows], cell[columns])]}
    header = f"| {rows} \\ {columns} | " + " | ".join(str(c) for c in col_values) + " |"
    lines = [header, "|" + "---|" * (len(col_values) + 1)]
    for r in row_values:
        cells = []
        for c in col_values:
            cell = index.get((r, c))
            cells.append("—" if cell is None else format_cell(cell, scale=scale, digits=digits, best=best.get(c) == r))
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ordered(present: Sequence[object], order: Sequence[object] | None) -> list[object]:
    """The given order, then values present but not in it (a variant that pins an axis to
    another value, e.g. a reference row at batch 32), sorted."""
    first = list(order or [])
    return first + sorted((v for v in present if v not in first), key=_sort_key)


def _sort_key(value: object) -> tuple[int, object]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))

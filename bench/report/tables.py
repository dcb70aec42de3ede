"""Aggregation, comparison with a baseline, and pivot tables. Pure: DataFrame in,
DataFrame or text out.

Every cell is a distribution over seeds: mean ± sample std (ddof = 1), n, and optionally a
confidence interval. Failed, diverged and never-run trials are outcomes, not missing data:
each cell counts them ("1 of 3 diverged") and leaves them out of the mean. A collapsed run
(completed at chance accuracy, :func:`bench.report.frame.collapsed`) is a real result: it
stays in the mean and its cell counts it ("1 of 3 collapsed").

A "best" is marked only where it is separated from the runner-up (:func:`best_among`):
a test over seeds at the report's α, never at one seed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from bench.metrics import Metric
from bench.report.format import MARKDOWN, Style, format_cell, format_delta
from bench.report.frame import with_outcome
from bench.report.stats import Separation, describe, holm, interval, paired_difference, separation

OUTCOMES = ("completed", "diverged", "failed")
CELL_COLUMNS = ("mean", "std", "n", "total", *OUTCOMES, "collapsed", "pending", "ci_low", "ci_high", "values", "pooled_seeds")


def aggregate(
    frame: pd.DataFrame, keys: str | Sequence[str], metric: str, *, ci: str = "none", level: float = 0.95
) -> pd.DataFrame:
    """One row per combination of ``keys``: mean, std, n (completed trials with the
    metric), the interval ``ci`` asks for, total trials, the count of each outcome, and
    ``values``: seed → value of the completed trials (the mean, when a cell holds several
    trials of one seed; ``pooled_seeds`` counts those seeds) for pairing. ``collapsed``
    counts the completed trials at chance accuracy (the ``outcome`` column), which stay in
    the mean."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    if frame.empty:
        return pd.DataFrame(columns=[*keys, *CELL_COLUMNS])
    frame = with_outcome(frame)
    # Each cell from numpy arrays of the whole frame, not from a sub-frame per group (11 ms a
    # cell at 10,000 runs: seconds for a report of a few hundred cells).
    grouped = frame.groupby(keys, sort=True, dropna=False)
    number = grouped.ngroup().to_numpy()
    labels = grouped.size().index
    labels = list(labels) if isinstance(labels, pd.MultiIndex) else [(label,) for label in labels]
    members = np.split(np.argsort(number, kind="stable"), np.cumsum(np.bincount(number, minlength=len(labels)))[:-1])
    status = frame["status"].to_numpy(dtype=object)
    completed = status == "completed"
    collapsed = completed & (frame["outcome"].to_numpy(dtype=object) == "collapsed")
    outcomes = {o: status == o for o in OUTCOMES}
    numbers = pd.to_numeric(frame[metric], errors="coerce").to_numpy(dtype=float, na_value=np.nan) if metric in frame else None
    seeds = frame["seed"] if "seed" in frame else None
    records = []
    for group_keys, rows in zip(labels, members):
        done = rows[completed[rows] & ~np.isnan(numbers[rows])] if numbers is not None else rows[:0]
        values = numbers[done] if numbers is not None else np.empty(0)
        summary = describe(values)
        low, high = interval(values, ci, level)
        per_seed, pooled = _per_seed(seeds, done, values)
        counts = {o: int(flags[rows].sum()) for o, flags in outcomes.items()}
        records.append(
            {
                **dict(zip(keys, group_keys)),
                "mean": summary.mean,
                "std": summary.std,
                "n": summary.n,
                "total": len(rows),
                **counts,
                "collapsed": int(collapsed[rows].sum()),
                "pending": len(rows) - sum(counts.values()),
                "ci_low": low,
                "ci_high": high,
                "values": per_seed,
                "pooled_seeds": pooled,
            }
        )
    return pd.DataFrame.from_records(records)


def _per_seed(seeds: pd.Series | None, rows: Any, values: Any) -> tuple[dict[int, float], int]:
    """seed → the mean value of the completed ``rows`` of that seed (ascending), and how
    many seeds have several rows: ``groupby("seed").mean()``, which a seed that occurs once
    (the usual case) needs no groupby for."""
    if seeds is None:
        return {}, 0
    if seeds.dtype.kind in "iu":
        ids = seeds.to_numpy()[rows]
        if len(np.unique(ids)) == len(ids):
            order = np.argsort(ids, kind="stable")
            return {int(s): float(v) for s, v in zip(ids[order].tolist(), values[order].tolist())}, 0
    by_seed = pd.Series(values, index=seeds.index[rows]).groupby(seeds.take(rows))
    return {int(s): float(v) for s, v in by_seed.mean().items()}, int((by_seed.size() > 1).sum())


def baseline_applies(baseline: Mapping[str, Any] | None, keys: Sequence[str]) -> bool:
    """A baseline can be compared with in a table whose cells are told apart by ``keys``
    when it names only those keys."""
    return bool(baseline) and set(baseline) <= set(keys)


def compare(
    agg: pd.DataFrame,
    keys: Sequence[str],
    baseline: Mapping[str, Any],
    *,
    ci: str = "none",
    level: float = 0.95,
    alpha: float = 0.05,
    correction: str = "none",
) -> pd.DataFrame:
    """Adds each cell's paired comparison with its baseline cell: the cell whose keys are
    the cell's own with the baseline's values put in (``{norm: bn}``: the bn cell of the
    same column; a baseline naming every key is one fixed cell). Columns: ``is_baseline``,
    ``has_baseline``, ``delta`` (mean per-seed difference), ``delta_std``, ``pairs``, ``t``,
    ``p``, ``p_adjusted`` (Holm over the table's tests, or p), ``delta_low``/``delta_high``
    (interval of the difference), ``significant`` (p_adjusted < alpha), ``delta_note``."""
    keys = list(keys)
    out = agg.copy().reset_index(drop=True)
    index = {tuple(row[k] for k in keys): i for i, row in out.iterrows()}
    results: list[dict[str, Any]] = []
    for _, row in out.iterrows():
        own = tuple(row[k] for k in keys)
        target = tuple(baseline.get(k, row[k]) for k in keys)
        base = index.get(target)
        record: dict[str, Any] = {"is_baseline": own == target, "has_baseline": base is not None}
        if own == target or base is None:
            note = "" if own == target else "no baseline cell: " + ", ".join(f"{k}={v}" for k, v in zip(keys, target))
            record.update(delta=math.nan, delta_std=math.nan, pairs=0, t=math.nan, p=math.nan, delta_low=math.nan,
                          delta_high=math.nan, delta_note=note)
        else:
            base_row = out.loc[base]
            diff = paired_difference(row["values"], base_row["values"], ci=ci, level=level)
            note = diff.note
            if diff.pairs == 0 and int(base_row["n"]) == 0:
                note = "the baseline has no completed trial"
            record.update(delta=diff.mean, delta_std=diff.std, pairs=diff.pairs, t=diff.t, p=diff.p,
                          delta_low=diff.low, delta_high=diff.high, delta_note=note)
        results.append(record)
    extra = pd.DataFrame.from_records(results, index=out.index)
    adjusted = holm(extra["p"].tolist()) if correction == "holm" else extra["p"].tolist()
    extra["p_adjusted"] = adjusted
    extra["significant"] = [bool(p < alpha) if not math.isnan(p) else False for p in adjusted]
    return pd.concat([out, extra], axis=1)


def any_tested(agg: pd.DataFrame) -> bool:
    """Whether any cell of a compared table has a test (two or more pairs)."""
    return "p" in agg and bool(agg["p"].notna().any())


def best_rows(agg: pd.DataFrame, rows: str, columns: str, higher_is_better: bool = True) -> dict[object, object]:
    """The row value with the best mean in each column (ignoring cells with no result),
    separated from the others or not: :func:`column_bests` says which are."""
    best: dict[object, object] = {}
    for c, group in agg.dropna(subset=["mean"]).groupby(columns, sort=False):
        idx = group["mean"].idxmax() if higher_is_better else group["mean"].idxmin()
        best[c] = group.loc[idx, rows]
    return best


@dataclass(frozen=True)
class Best:
    """The cell with the best mean among some cells (``leader``) and the next (``runner_up``,
    None when it is alone), with the test of the two (:func:`bench.report.stats.separation`).
    ``separated``: the adjusted p-value is below α; only then is the leader marked best."""

    leader: Mapping[str, Any]
    runner_up: Mapping[str, Any] | None
    test: Separation | None
    p_adjusted: float = math.nan
    separated: bool = False

    @property
    def verdict(self) -> str:
        """``best`` (separated), ``tied`` (tested, not separated), ``untested`` (or not yet
        decided by :func:`decide_bests`), ``alone``."""
        if self.runner_up is None:
            return "alone"
        if self.separated:
            return "best"
        return "untested" if math.isnan(self.p_adjusted) else "tied"

    @property
    def gap(self) -> float:
        return abs(self.leader["mean"] - self.runner_up["mean"]) if self.runner_up is not None else math.nan


def best_among(cells: pd.DataFrame, higher_is_better: bool = True) -> Best | None:
    """The leader and runner-up by mean among ``cells`` with a result (ties in the mean: the
    first in table order leads), and their test; None when no cell has a result. Decide
    with :func:`decide_bests`."""
    done = cells[cells["n"] > 0].sort_values("mean", ascending=not higher_is_better, kind="stable")
    if done.empty:
        return None
    leader = done.iloc[0].to_dict()
    if len(done) == 1:
        return Best(leader, None, None)
    runner_up = done.iloc[1].to_dict()
    return Best(leader, runner_up, separation(leader["values"], runner_up["values"]))


def decide_bests(bests: Sequence[Best], *, alpha: float = 0.05, correction: str = "none") -> list[Best]:
    """Each best with its adjusted p-value (Holm over the tested ones when ``correction`` is
    holm) and whether it is separated (adjusted p < ``alpha``)."""
    raw = [b.test.p if b.test is not None else math.nan for b in bests]
    adjusted = holm(raw) if correction == "holm" else raw
    return [replace(b, p_adjusted=p, separated=bool(p < alpha) if not math.isnan(p) else False) for b, p in zip(bests, adjusted)]


def column_bests(
    agg: pd.DataFrame, rows: str, columns: str, higher_is_better: bool = True, *, alpha: float = 0.05, correction: str = "none",
    column_order: Sequence[object] | None = None,
) -> dict[object, Best]:
    """Per column (in table order): its :class:`Best`, decided at ``alpha``."""
    found = {}
    for c in ordered(agg[columns].unique(), column_order):
        best = best_among(agg[agg[columns] == c], higher_is_better)
        if best is not None:
            found[c] = best
    return dict(zip(found, decide_bests(list(found.values()), alpha=alpha, correction=correction)))


def separated_cells(bests: Mapping[object, Best], rows: str, columns: str) -> set[tuple[object, object]]:
    """(row, column) of the leaders that are separated: the cells marked best."""
    return {(b.leader[rows], c) for c, b in bests.items() if b.separated}


def pivot_frame(
    agg: pd.DataFrame,
    rows: str,
    columns: str,
    metric: Metric,
    *,
    style: Style = MARKDOWN,
    row_order: Sequence[object] | None = None,
    column_order: Sequence[object] | None = None,
    ci: bool = False,
    marked: Collection[tuple[object, object]] | None = None,
    alpha: float = 0.05,
    correction: str = "none",
) -> pd.DataFrame:
    """The pivot as formatted text, one row per ``rows`` value: each cell's mean ± std (n),
    its interval when ``ci``, its comparison with the baseline when ``agg`` has one (see
    :func:`compare`); in bold the ``marked`` (row, column) cells, by default the best of
    each column where it is separated from the runner-up at ``alpha`` (:func:`column_bests`)."""
    row_values = ordered(agg[rows].unique(), row_order)
    col_values = ordered(agg[columns].unique(), column_order)
    if marked is None:
        marked = separated_cells(column_bests(agg, rows, columns, metric.higher_is_better, alpha=alpha, correction=correction),
                                 rows, columns)
    index = {(cell[rows], cell[columns]): cell for _, cell in agg.iterrows()}
    explain = any_tested(agg)
    records = []
    for r in row_values:
        record = {f"{rows} \\ {columns}": style.text(str(r))}
        for c in col_values:
            cell = index.get((r, c))
            if cell is None:
                record[str(c)] = "—"
                continue
            text = format_cell(cell, metric, style, best=(r, c) in marked, ci=ci)
            delta = format_delta(cell, metric, style, ci=ci, explain=explain)
            record[str(c)] = text + (style.newline + delta if delta else "")
        records.append(record)
    return pd.DataFrame.from_records(records, columns=[f"{rows} \\ {columns}", *(str(c) for c in col_values)])


def pivot_markdown(agg: pd.DataFrame, rows: str, columns: str, metric: Metric, **kwargs: Any) -> str:
    if agg.empty:
        return "_No runs yet._"
    return markdown_table(pivot_frame(agg, rows, columns, metric, style=MARKDOWN, **kwargs))


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame of already formatted text as a markdown table (headers as given)."""
    header = "| " + " | ".join(MARKDOWN.text(str(c)) for c in frame.columns) + " |"
    lines = [header, "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def numbers_frame(agg: pd.DataFrame, keys: Sequence[str], metric: Metric) -> pd.DataFrame:
    """The numbers behind a table, one row per cell, in the units shown (accuracy in %):
    what the CSV export holds."""
    scaled = ["mean", "std", "ci_low", "ci_high", "delta", "delta_std", "delta_low", "delta_high"]
    columns = [*keys, "mean", "std", "n", "total", "completed", "collapsed", "diverged", "failed", "pending", "ci_low", "ci_high"]
    if "delta" in agg:
        columns += ["is_baseline", "delta", "delta_std", "delta_low", "delta_high", "pairs", "t", "p", "p_adjusted", "significant"]
    out = (agg if "collapsed" in agg else agg.assign(collapsed=0))[columns].copy()
    for c in scaled:
        if c in out:
            out[c] = pd.to_numeric(out[c], errors="coerce") * metric.scale
    out.insert(len(keys), "metric", metric.label)
    return out.rename(columns={"pending": "not_run"})


def ordered(present: Sequence[object], order: Sequence[object] | None) -> list[object]:
    """The given order (values not present left out), then values present but not in it
    (a variant that pins an axis to another value, e.g. a reference row at batch 32),
    sorted."""
    present = list(present)
    first = [v for v in (order or []) if v in present]
    return first + sorted((v for v in present if v not in first), key=sort_key)


def sort_key(value: object) -> tuple[int, Any]:
    return (0, value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else (1, str(value))


def axis_order(study: Mapping[str, Any], key: str) -> list[Any] | None:
    """The order the spec gives a column's values: its axis or zip list, or the variants. A
    zip list may repeat a value (it pairs with different values of the other lists): the
    first place it appears counts."""
    if key == "variant":
        return list(study.get("variants") or []) or None
    values = (study.get("axes") or {}).get(key) or (study.get("zip") or {}).get(key) or []
    return list(dict.fromkeys(_hashable(v) for v in values)) or None


def _hashable(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def sort_cells(frame: pd.DataFrame, keys: Sequence[str], study: Mapping[str, Any]) -> pd.DataFrame:
    """Rows in the spec's order of each key (the first key varies slowest)."""
    if frame.empty:
        return frame
    ranks = {}
    for key in keys:
        order = ordered(frame[key].unique(), axis_order(study, key))
        ranks[f"_rank_{key}"] = frame[key].map({v: i for i, v in enumerate(order)})
    return frame.assign(**ranks).sort_values(list(ranks), kind="stable").drop(columns=list(ranks)).reset_index(drop=True)

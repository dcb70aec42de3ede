"""``pivot``: a run metric as a rows × columns table. Each cell: mean ± std over seeds and n,
the interval the report asks for, outcomes ("1 of 3 diverged", "1 of 3 collapsed"), and
the paired difference from the baseline cell; in bold the best of each column where it is
separated from the runner-up (a test over seeds at the report's α), or, when the columns are
what a tuned study sweeps, the value its tuning round chose for each row; published
reference numbers beside it, labelled as not measured here, in the table's order."""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from bench.metrics import Metric, run_metric
from bench.report.export import ExportTable
from bench.report.format import LATEX, MARKDOWN
from bench.report.kinds import Option, SectionInput, SectionOutput, section_kind
from bench.report.sections._common import (
    best_line, best_rule, cell_note, comparison_note, metric_of, no_comparison_note, tuned_choices,
)
from bench.report.tables import (
    aggregate, axis_order, baseline_applies, column_bests, compare, markdown_table, numbers_frame, ordered, pivot_frame,
    separated_cells, sort_cells, sort_key,
)

OPTIONS = {
    "rows": Option("the column whose values are the rows, or several columns (one row per combination of their values)",
                   "keys", "norm"),
    "columns": Option("the column whose values are the columns", "key", "batch_size"),
    "metric": Option("the run metric shown (default: the report's metric)", "metric"),
    "references": Option("published numbers shown beside the table: [{source, values, metric, columns, note}]", "references"),
}


def _title(options: Mapping[str, Any]) -> str:
    return f"{run_metric(options['metric']).title()}: {' × '.join(_row_keys(options))} × {options['columns']}"


def _row_keys(options: Mapping[str, Any]) -> list[str]:
    rows = options["rows"]
    return [rows] if isinstance(rows, str) else list(rows)


@section_kind("pivot", "a run metric as a rows × columns table, with the paired difference from the baseline", options=OPTIONS, title=_title)
def pivot(section: SectionInput) -> SectionOutput:
    o = section.options
    row_keys, columns = _row_keys(o), o["columns"]
    metric = metric_of(o)
    keys = [*row_keys, columns]
    agg = aggregate(section.runs, keys, metric.name, ci=o["ci"], level=1 - o["alpha"])
    if agg.empty:
        return SectionOutput("_No runs yet._\n")
    agg = sort_cells(agg, keys, section.study)
    comparing = baseline_applies(o["baseline"], keys)
    if comparing:
        agg = compare(agg, keys, o["baseline"], ci=o["ci"], level=1 - o["alpha"], alpha=o["alpha"], correction=o["correction"])
    if len(row_keys) == 1:
        rows = row_keys[0]
        row_order = axis_order(section.study, rows)
    else:
        # one row per combination, labelled "v1, v2", in the spec's order of each key (sort_cells)
        rows = ", ".join(row_keys)
        agg = agg.assign(**{rows: _labels(agg, row_keys)})
        row_order = list(dict.fromkeys(agg[rows]))
    column_order = axis_order(section.study, columns)
    tuned = _tuned(section, row_keys, rows, columns, metric)
    if tuned is not None:
        marked, legend = tuned
        highlights: list[str] = []
    else:
        bests = column_bests(agg, rows, columns, metric.higher_is_better, alpha=o["alpha"], correction=o["correction"],
                             column_order=column_order)
        marked = separated_cells(bests, rows, columns)
        tests = sum(1 for b in bests.values() if b.test is not None and b.test.tested)
        legend = best_rule(o["alpha"], o["correction"], tests, f"the best {rows} in its column (its {_direction(metric)} mean)")
        highlights = [f"- {columns} = {c}: {best_line(b, rows, metric, o['correction'])}" for c, b in bests.items()]
    layout = dict(row_order=row_order, column_order=column_order, ci=o["ci"] != "none", marked=marked)
    out = [
        markdown_table(pivot_frame(agg, rows, columns, metric, style=MARKDOWN, **layout)),
        "",
        f"{cell_note(o['ci'], o['alpha'], section.runs)} {legend}",
        "",
    ]
    note = comparison_note(agg, o["baseline"], keys, metric, o) if comparing else no_comparison_note(o["baseline"], keys)
    if note:
        out += [note, ""]
    shown_rows = ordered(agg[rows].unique(), row_order)
    shown_columns = ordered(agg[columns].unique(), column_order)
    out += reference_lines(o.get("references") or [], rows, columns, metric, shown_rows, shown_columns)
    if highlights:
        out += ["**Per column:**", "", *highlights, ""]
    table = ExportTable(
        numbers=numbers_frame(agg, keys, metric),
        latex=pivot_frame(agg, rows, columns, metric, style=LATEX, **layout),
        caption=f"{section.title}. Mean ± standard deviation over seeds (n = completed trials).",
    )
    return SectionOutput("\n".join(out), tables={section.files: table})


def _labels(frame: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    return [", ".join(str(v) for v in values) for values in frame[list(keys)].itertuples(index=False)]


def _direction(metric: Metric) -> str:
    return "highest" if metric.higher_is_better else "lowest"


def _tuned(
    section: SectionInput, row_keys: list[str], rows: str, columns: str, metric: Metric
) -> tuple[set[tuple[Any, Any]], str] | None:
    """When the columns are what a tuned study sweeps (``tune.over``): the cells of the
    value its tuning round chose for each row, and the legend that says so; else None. A
    cell is marked when every trial in it is of its configuration's chosen value (a row
    that pools several configurations, chosen differently, is not)."""
    tune = section.study.get("tune") or {}
    if tune.get("over") != columns:
        return None
    runs = section.runs
    choices, keys, from_reruns = tuned_choices(section.study, runs)
    labels = runs[row_keys[0]].tolist() if len(row_keys) == 1 else _labels(runs, row_keys)
    chosen, other = set(), set()
    for label, row in zip(labels, runs.to_dict("records")):
        config = tuple(row[k] for k in keys)
        if config in choices:
            (chosen if row[columns] == choices[config] else other).add((label, row[columns]))
    marked = chosen - other
    again = list(tune.get("seeds") or [])
    sweep = sorted({s for s in runs["seed"].dropna()} - set(again)) if "seed" in runs else []
    try:
        by = run_metric(tune.get("metric")).label
    except Exception:  # a metric outside the table of run metrics: its name
        by = str(tune.get("metric"))
    seeds = ", ".join(str(int(s)) for s in sweep)
    legend = (
        f"**Bold**: the {columns} the tuning round chose for each {rows} (the spec's `tune`: the best mean {by} over "
        f"seed{'s' if len(sweep) != 1 else ''} {seeds or '—'}, then re-run with seeds {', '.join(str(s) for s in again)})"
        + ("" if from_reruns else ", as the tuning rule gives on these trials")
        + f". No best is marked per column: the {columns} values of different {rows}s are not alternatives to each "
        f"other; the re-runs at the chosen {columns} compare them."
    )
    unmarked = [str(r) for r in dict.fromkeys(labels) if not any(cell[0] == r for cell in marked)]
    if unmarked:
        legend += f" Not marked (no choice yet, or a row pooling differently chosen configurations): {', '.join(f'`{r}`' for r in unmarked)}."
    return marked, legend


_LOWER = re.compile(r"\b(error|loss|perplexity|seconds|time|latency|memory)\b", re.IGNORECASE)
_HIGHER = re.compile(r"\b(acc|accuracy|top-1 acc|top-5 acc|score|throughput|auc|f1)\b", re.IGNORECASE)


def reference_direction(ref: Mapping[str, Any]) -> bool | None:
    """Whether higher is better for a reference: its ``higher_is_better`` if given, else what
    its metric (or, without one, its source) says: "lower/higher is better", or a word like
    error or accuracy; None when it does not say."""
    if isinstance(ref.get("higher_is_better"), bool):
        return ref["higher_is_better"]
    text = str(ref.get("metric") or ref.get("source") or "")
    if "lower is better" in text.lower():
        return False
    if "higher is better" in text.lower():
        return True
    if _LOWER.search(text):
        return False
    if _HIGHER.search(text):
        return True
    return None


def reference_lines(
    references: list[Mapping[str, Any]], rows: str, columns: str, metric: Metric | None = None,
    row_order: Sequence[Any] | None = None, column_order: Sequence[Any] | None = None,
) -> list[str]:
    """Published numbers a spec carries, set beside the measured table and labelled as
    such: ``{source, values: {row: {column: value}} or {row: value}, metric, note}``. Rows
    and columns in the measured table's order (a column it lacks in numeric order among
    them, a row it lacks after them); the reference's metric and direction stated beside
    the measured one, as the two may differ (an error rate beside an accuracy)."""
    out: list[str] = []
    for ref in references:
        values = ref.get("values") or {}
        source = str(ref.get("source") or "").strip() or "source not given"
        out += [f"**Published, not measured here** — {source}:", ""]
        if metric is not None:
            out += [_metric_line(ref, metric), ""]
        names = _order(list(values), row_order)
        cols: list[Any] = []
        for v in values.values():
            for c in v if isinstance(v, Mapping) else []:
                if c not in cols:
                    cols.append(c)
        if cols:
            cols = _order(cols, column_order)
            head = pd.DataFrame(
                [[str(r), *(_value(values[r], c) for c in cols)] for r in names],
                columns=[f"{rows} \\ {ref.get('columns', columns)}", *(str(c) for c in cols)],
            )
        else:
            head = pd.DataFrame([[str(r), str(values[r])] for r in names], columns=[rows, str(ref.get("metric") or "value")])
        out.append(markdown_table(head))
        if ref.get("note"):
            out += ["", str(ref["note"]).strip()]
        out.append("")
    return out


def _value(row: Any, column: Any) -> str:
    return str(row.get(column, "—")) if isinstance(row, Mapping) else "—"


def _metric_line(ref: Mapping[str, Any], metric: Metric) -> str:
    """``Metric: top-1 error (%), lower is better — the measured table shows final validation
    accuracy (%), higher is better.``"""
    higher = reference_direction(ref)
    direction = "direction not stated" if higher is None else "higher is better" if higher else "lower is better"
    name = str(ref["metric"]).strip() if ref.get("metric") else "as the source names it"
    measured = f"{metric.label}, {'higher' if metric.higher_is_better else 'lower'} is better"
    opposite = higher is not None and higher != metric.higher_is_better
    return f"Metric: {name}, {direction} — the measured table shows {measured}" + (
        " (the opposite direction)." if opposite else "."
    )


def _numeric(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _order(present: list[Any], order: Sequence[Any] | None) -> list[Any]:
    """``present`` in ``order`` (the measured table's): when both are numbers and that order
    is monotonic, every value in it sorted the same way, so a column the table lacks falls
    between its neighbours; else the values in ``order`` first, then the others as given
    (rows) or numerically (columns of numbers)."""
    order = list(order or [])
    if present and order and all(_numeric(v) for v in [*present, *order]):
        ascending = order == sorted(order)
        if ascending or order == sorted(order, reverse=True):
            return sorted(present, reverse=not ascending)
    first = [v for v in order if v in present]
    rest = [v for v in present if v not in first]
    if all(_numeric(v) for v in rest):
        rest = sorted(rest, key=sort_key)
    return first + rest

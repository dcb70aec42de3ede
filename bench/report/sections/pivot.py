"""``pivot``: a run metric as a rows × columns table. Each cell: mean ± std over seeds and n,
the interval the report asks for, outcomes that gave no number ("1 of 3 diverged"), and
the paired difference from the baseline cell; the best of each column in bold; published
reference numbers beside it, labelled as not measured here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from bench.metrics import Metric, run_metric
from bench.report.export import ExportTable
from bench.report.format import LATEX, MARKDOWN, number
from bench.report.kinds import Option, SectionInput, SectionOutput, section_kind
from bench.report.sections._common import cell_note, comparison_note, metric_of, no_comparison_note
from bench.report.tables import (
    aggregate, axis_order, baseline_applies, best_rows, compare, markdown_table, numbers_frame, pivot_frame, sort_cells,
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
        agg = agg.assign(**{rows: [", ".join(str(v) for v in values) for values in agg[row_keys].itertuples(index=False)]})
        row_order = list(dict.fromkeys(agg[rows]))
    layout = dict(row_order=row_order, column_order=axis_order(section.study, columns), ci=o["ci"] != "none")
    direction = "highest" if metric.higher_is_better else "lowest"
    out = [
        markdown_table(pivot_frame(agg, rows, columns, metric, style=MARKDOWN, **layout)),
        "",
        f"{cell_note(o['ci'], o['alpha'])} **Bold**: best {rows} in its column ({direction} mean).",
        "",
    ]
    note = comparison_note(agg, o["baseline"], keys, metric, o) if comparing else no_comparison_note(o["baseline"], keys)
    if note:
        out += [note, ""]
    out += reference_lines(o.get("references") or [], rows, columns)
    highlights = _highlights(agg, rows, columns, metric, layout["column_order"])
    if highlights:
        out += ["**Per column:**", "", *highlights, ""]
    table = ExportTable(
        numbers=numbers_frame(agg, keys, metric),
        latex=pivot_frame(agg, rows, columns, metric, style=LATEX, **layout),
        caption=f"{section.title}. Mean ± standard deviation over seeds (n = completed trials).",
    )
    return SectionOutput("\n".join(out), tables={section.files: table})


def reference_lines(references: list[Mapping[str, Any]], rows: str, columns: str) -> list[str]:
    """Published numbers a spec carries, set beside the measured table and labelled as
    such: ``{source, values: {row: {column: value}} or {row: value}, note}``."""
    out: list[str] = []
    for ref in references:
        values = ref.get("values") or {}
        out += [f"**Published, not measured here** — {ref.get('source', 'reference')}:", ""]
        cols: list[Any] = []
        for v in values.values():
            for c in v if isinstance(v, Mapping) else []:
                if c not in cols:
                    cols.append(c)
        if cols:
            head = pd.DataFrame(
                [[str(r), *(str(v.get(c, "—")) for c in cols)] for r, v in values.items()],
                columns=[f"{rows} \\ {ref.get('columns', columns)}", *(str(c) for c in cols)],
            )
        else:
            head = pd.DataFrame([[str(r), str(v)] for r, v in values.items()], columns=[rows, ref.get("metric", "value")])
        out.append(markdown_table(head))
        if ref.get("note"):
            out += ["", str(ref["note"]).strip()]
        out.append("")
    return out


def _highlights(agg: pd.DataFrame, rows: str, columns: str, metric: Metric, order: Any) -> list[str]:
    best = best_rows(agg, rows, columns, metric.higher_is_better)
    lines = []
    scale, digits = metric.scale, metric.digits
    for c in [v for v in (order or []) if v in best] + sorted((v for v in best if v not in (order or [])), key=str):
        part = agg[(agg[columns] == c) & (agg["n"] > 0)].sort_values("mean", ascending=not metric.higher_is_better)
        first = part.iloc[0]
        text = f"- {columns} = {c}: best `{first[rows]}` {number(first['mean'] * scale, digits)}"
        if len(part) > 1:
            second = part.iloc[1]
            gap = abs(first["mean"] - second["mean"]) * scale
            text += f", then `{second[rows]}` {number(second['mean'] * scale, digits)} (gap {number(gap, digits)})"
        lines.append(text)
    return lines

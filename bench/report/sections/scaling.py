"""``scaling``: a run metric against an axis, one line per group (accuracy vs batch size,
one line per normalization), mean over seeds with ± std bars or the confidence interval;
a log x-axis where the values span ≥ 8×."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.metrics import run_metric
from bench.report.export import ExportTable
from bench.report.format import LATEX, counts_notes
from bench.report.kinds import Option, SectionInput, SectionOutput, section_kind
from bench.report.plots import log_base, scaling_plot
from bench.report.sections._common import interval_phrase, metric_of
from bench.report.tables import aggregate, axis_order, numbers_frame, ordered, pivot_frame, sort_cells

OPTIONS = {
    "x": Option("the column on the x-axis", "key", required=True),
    "group": Option("the column whose values are the lines", "key", required=True),
    "metric": Option("the run metric on the y-axis (default: the report's metric)", "metric"),
    "log": Option("x-axis scale: auto (log when the values span ≥ 8×), none, 2 or 10", "choice", "auto", choices=("auto", "none", 2, 10)),
}


def _title(options: Mapping[str, Any]) -> str:
    return f"{run_metric(options['metric']).title()} vs {options['x']}"


@section_kind("scaling", "a run metric against an axis, one line per group", options=OPTIONS, title=_title)
def scaling(section: SectionInput) -> SectionOutput:
    o = section.options
    x, group = o["x"], o["group"]
    metric = metric_of(o)
    agg = sort_cells(aggregate(section.runs, [group, x], metric.name, ci=o["ci"], level=1 - o["alpha"]), [group, x], section.study)
    if agg.empty or agg["n"].sum() == 0:
        return SectionOutput("_No completed trial to plot._\n")
    bars = "ci" if o["ci"] != "none" else "std"
    order = axis_order(section.study, group)
    figure = scaling_plot(
        agg, x, group, ylabel=metric.label, title=section.title, log=o["log"], scale=metric.scale, group_order=order, bars=bars
    )
    path = f"{section.files}.png"
    values = ordered(agg[x].unique(), axis_order(section.study, x))
    base = log_base(values, o["log"])
    scale_text = f"x on a log{'₂' if base == 2 else '₁₀'} scale" if base else "x on a linear scale"
    bar_text = interval_phrase(o["ci"], o["alpha"], where="") if bars == "ci" else "± one sample standard deviation"
    lines = [
        f"![{metric.label} vs {x}]({path})",
        "",
        f"One line per {group}: the mean over seeds of the completed trials at each {x}; bars: {bar_text}; {scale_text}"
        f" ({x} from {values[0]} to {values[-1]}).",
    ]
    missing = []
    for g in ordered(agg[group].unique(), order):
        part = agg[agg[group] == g]
        if part["n"].sum() == 0:
            notes = "; ".join(n for _, cell in part.iterrows() for n in counts_notes(cell))
            missing.append(f"`{g}` ({notes or 'no result'})")
    if missing:
        lines += ["", f"Not drawn, no completed trial: {', '.join(missing)}."]
    table = ExportTable(
        numbers=numbers_frame(agg, [group, x], metric),
        latex=pivot_frame(agg, group, x, metric, style=LATEX, row_order=order, column_order=axis_order(section.study, x), ci=bars == "ci"),
        caption=f"{section.title}: the values plotted.",
    )
    return SectionOutput("\n".join(lines) + "\n", figures={path: figure}, tables={section.files: table})

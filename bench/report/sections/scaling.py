"""``scaling``: a run metric against an axis, one line per group (accuracy vs batch size,
one line per normalization), mean over seeds with ± std bars or the confidence interval
where a point has two or more seeds; a log x-axis where the values span ≥ 8×. More than
eight groups: one panel per group (small multiples), the others faint behind. In a tuned
study swept along x, the value the tuning round chose for each group is ringed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.metrics import run_metric
from bench.report.export import ExportTable
from bench.report.format import LATEX, counts_notes
from bench.report.kinds import Option, SectionInput, SectionOutput, section_kind
from bench.report.plots import MAX_LINES, log_base, scaling_plot
from bench.report.sections._common import interval_phrase, metric_of, tuned_choices
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
    marked = _tuned(section, x, group)
    figure = scaling_plot(
        agg, x, group, ylabel=metric.label, title=section.title, log=o["log"], scale=metric.scale, group_order=order, bars=bars,
        marked=marked,
    )
    path = f"{section.files}.png"
    values = ordered(agg[x].unique(), axis_order(section.study, x))
    base = log_base(values, o["log"])
    scale_text = f"x on a log{'₂' if base == 2 else '₁₀'} scale" if base else "x on a linear scale"
    bar_text = interval_phrase(o["ci"], o["alpha"], where="") if bars == "ci" else "± one sample standard deviation"
    drawn = int((agg.groupby(group)["n"].sum() > 0).sum())
    layout = (
        f"One panel per {group} (more than {MAX_LINES} lines would not stay apart), the other {group} values faint grey "
        "behind it" if drawn > MAX_LINES else f"One line per {group}"
    )
    seeds = "" if int(agg["n"].max()) > 1 else " (every point is one seed: no bars)"
    ring = f" Ringed: the {x} the tuning round chose for each {group}." if marked else ""
    lines = [
        f"![{metric.label} vs {x}]({path})",
        "",
        f"{layout}: the mean over seeds of the completed trials at each {x}; bars: {bar_text}, where a point has two or "
        f"more seeds{seeds}; {scale_text} ({x} from {values[0]} to {values[-1]}).{ring}",
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
        latex=pivot_frame(agg, group, x, metric, style=LATEX, row_order=order, column_order=axis_order(section.study, x), ci=bars == "ci",
                          alpha=o["alpha"], correction=o["correction"], marked=set(marked.items()) if marked else None),
        caption=f"{section.title}: the values plotted.",
    )
    return SectionOutput("\n".join(lines) + "\n", figures={path: figure}, tables={section.files: table})


def _tuned(section: SectionInput, x: str, group: str) -> dict[Any, Any]:
    """group value → the x its tuning round chose, when x is what a tuned study sweeps and
    the groups are its configurations."""
    if (section.study.get("tune") or {}).get("over") != x:
        return {}
    choices, keys, _ = tuned_choices(section.study, section.runs)
    return {label[0]: value for label, value in choices.items()} if keys == [group] else {}

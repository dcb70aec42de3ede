"""``ranking``: the best configurations by a run metric, or, with ``best_of``, the best
value of one axis for each group (each optimizer at its best learning rate) with its
mean ± std over seeds. Configurations without a completed trial are listed, not ranked.
The first is marked best (bold) only where it is separated from the second by a test over
seeds at the report's α, as in a pivot; otherwise the table says it is tied or untested."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from bench.errors import ConfigError
from bench.metrics import Metric, run_metric
from bench.report.export import ExportTable
from bench.report.format import LATEX, MARKDOWN, Style, counts_notes, format_cell, format_delta, number
from bench.report.kinds import Option, SectionInput, SectionOutput, section_kind
from bench.report.sections._common import (
    best_line, best_rule, cell_note, comparison_note, metric_of, no_comparison_note, test_text, varied_keys,
)
from bench.report.tables import (
    Best, aggregate, any_tested, baseline_applies, best_among, compare, decide_bests, markdown_table, numbers_frame, sort_cells,
)

OPTIONS = {
    "metric": Option("the run metric ranked by (default: the report's metric)", "metric"),
    "top": Option("how many configurations to show", "integer", 10),
    "by": Option("the columns that make a configuration (default: what the study varies)", "keys"),
    "best_of": Option("rank the values of this column within each group and show the best (e.g. lr)", "key"),
    "per": Option("with best_of: the columns of a group (default: `by` without best_of)", "keys"),
}


def _title(options: Mapping[str, Any]) -> str:
    metric = run_metric(options["metric"]).label
    if options.get("best_of"):
        return f"Best {options['best_of']} per {', '.join(options.get('per') or ['configuration'])} by {metric}"
    return f"Best configurations by {metric}"


def _check(where: str, options: Mapping[str, Any]) -> None:
    if options.get("per") and not options.get("best_of"):
        raise ConfigError(f"{where}: `per` groups the values of `best_of`; give `best_of` too (e.g. best_of: lr, per: [optimizer]).")
    if options.get("best_of") and options["best_of"] in (options.get("per") or []):
        raise ConfigError(f"{where}: `best_of: {options['best_of']}` cannot also be one of the `per` columns.")


@section_kind("ranking", "the best configurations, or the best value of an axis per group", options=OPTIONS, title=_title, check=_check)
def ranking(section: SectionInput) -> SectionOutput:
    o = section.options
    metric = metric_of(o)
    by = list(o.get("by") or varied_keys(section.study))
    if not by:
        raise ConfigError("A ranking needs columns that tell configurations apart (`by`), and this study varies nothing.")
    if o.get("best_of"):
        return _best_of(section, metric, by)
    agg = sort_cells(aggregate(section.runs, by, metric.name, ci=o["ci"], level=1 - o["alpha"]), by, section.study)
    if agg.empty:
        return SectionOutput("_No runs yet._\n")
    comparing = baseline_applies(o["baseline"], by)
    if comparing:
        agg = compare(agg, by, o["baseline"], ci=o["ci"], level=1 - o["alpha"], alpha=o["alpha"], correction=o["correction"])
    ranked = agg[agg["n"] > 0].sort_values("mean", ascending=not metric.higher_is_better, kind="stable")
    shown = ranked.head(o["top"])
    top = best_among(ranked, metric.higher_is_better)
    top = decide_bests([top], alpha=o["alpha"])[0] if top is not None else None
    bold = [top is not None and top.separated and i == 0 for i in range(len(shown))]
    lines = [
        markdown_table(_display(shown, by, metric, MARKDOWN, o, comparing, bold=bold)),
        "",
        f"{len(ranked)} configurations with a result, ranked by mean {metric.label} "
        f"({'highest' if metric.higher_is_better else 'lowest'} first); the top {len(shown)} shown. "
        + cell_note(o["ci"], o["alpha"], section.runs) + " "
        + best_rule(o["alpha"], "none", 1, "the first configuration"),
        "",
    ]
    if top is not None:
        line = _config_line(top, by, metric)
        lines += [line[0].upper() + line[1:] + ".", ""]
    note = comparison_note(agg, o["baseline"], by, metric, o) if comparing else no_comparison_note(o["baseline"], by)
    if note:
        lines += [note, ""]
    lines += _unranked(agg, by)
    table = ExportTable(
        numbers=numbers_frame(ranked, by, metric).assign(rank=range(1, len(ranked) + 1)),
        latex=_display(shown, by, metric, LATEX, o, comparing, bold=bold),
        caption=section.title,
    )
    return SectionOutput("\n".join(lines), tables={section.files: table})


def _config_line(best: Best, keys: list[str], metric: Metric) -> str:
    """:func:`best_line` of configurations, each named by its keys."""
    label = "_configuration"
    named = Best(
        {**best.leader, label: ", ".join(f"{k}={best.leader[k]}" for k in keys)},
        None if best.runner_up is None else {**best.runner_up, label: ", ".join(f"{k}={best.runner_up[k]}" for k in keys)},
        best.test, best.p_adjusted, best.separated,
    )
    return best_line(named, label, metric, what="best configuration")


def _display(cells: pd.DataFrame, keys: list[str], metric: Metric, style: Style, o: Mapping[str, Any], comparing: bool,
             extra: Mapping[str, list[str]] | None = None, after: Mapping[str, list[str]] | None = None,
             bold: list[bool] | None = None) -> pd.DataFrame:
    """One row per cell: rank, its keys, ``extra`` columns, the metric (bold where ``bold``
    says), ``after`` columns, the comparison with the baseline."""
    records = []
    explain = any_tested(cells)
    for rank, (_, cell) in enumerate(cells.iterrows(), 1):
        record = {"#": str(rank), **{k: style.text(str(cell[k])) for k in keys}}
        for name, values in (extra or {}).items():
            record[name] = values[rank - 1]
        marked = bool(bold[rank - 1]) if bold else False
        record[metric.label] = format_cell(cell, metric, style, best=marked, ci=o["ci"] != "none")
        for name, values in (after or {}).items():
            record[name] = values[rank - 1]
        if comparing:
            record["vs baseline"] = format_delta(cell, metric, style, ci=o["ci"] != "none", explain=explain)
        records.append(record)
    columns = ["#", *keys, *(extra or {}), metric.label, *(after or {})] + (["vs baseline"] if comparing else [])
    return pd.DataFrame.from_records(records, columns=columns)


def _styled(columns: Mapping[str, list[str]], style: Style) -> dict[str, list[str]]:
    return {name: [style.text(v) for v in values] for name, values in columns.items()}


def _unranked(agg: pd.DataFrame, keys: list[str]) -> list[str]:
    missing = agg[agg["n"] == 0]
    if missing.empty:
        return []
    parts = [
        f"`{', '.join(f'{k}={cell[k]}' for k in keys)}` ({'; '.join(counts_notes(cell)) or 'no result'})"
        for _, cell in missing.iterrows()
    ]
    return [f"Not ranked, no completed trial: {', '.join(parts)}.", ""]


def _best_of(section: SectionInput, metric: Metric, by: list[str]) -> SectionOutput:
    o = section.options
    axis = o["best_of"]
    per = list(o.get("per") or [k for k in by if k != axis])
    agg = aggregate(section.runs, [*per, axis], metric.name, ci=o["ci"], level=1 - o["alpha"])
    if agg.empty:
        return SectionOutput("_No runs yet._\n")
    rows, found, chosen_count = [], [], []
    groups = sort_cells(agg[per].drop_duplicates(), per, section.study) if per else pd.DataFrame([{}])
    for _, group in groups.iterrows():
        part = agg
        for k in per:
            part = part[part[k] == group[k]]
        best = best_among(sort_cells(part, [axis], section.study), metric.higher_is_better)
        if best is None:
            rows.append(part.iloc[0].to_dict() | {axis: "—", "n": 0, "mean": float("nan"), "std": float("nan"),
                                                   **{c: int(part[c].sum()) for c in ("total", "completed", "collapsed", "diverged", "failed", "pending")},
                                                   "values": {}, "pooled_seeds": 0})
        else:
            rows.append(dict(best.leader))
        found.append(best)
        chosen_count.append(len(part))
    tested = [b for b in found if b is not None]
    decided = iter(decide_bests(tested, alpha=o["alpha"], correction=o["correction"]))
    found = [next(decided) if b is not None else None for b in found]
    best = pd.DataFrame.from_records(rows)
    comparing = baseline_applies(o["baseline"], per)
    if comparing:
        best = compare(best, per, o["baseline"], ci=o["ci"], level=1 - o["alpha"], alpha=o["alpha"], correction=o["correction"])
    several = max(chosen_count) > 1
    direction = "highest" if metric.higher_is_better else "lowest"
    header = f"{axis} ({direction} mean)" if several else f"chosen {axis}"
    chosen = {header: [str(v) for v in best[axis]]}
    second = {"runner-up": [_runner_up(b, axis, metric, o["correction"]) for b in found]} if several else {}
    bold = [b is not None and b.separated for b in found]
    display = _display(best, per, metric, MARKDOWN, o, comparing, _styled(chosen, MARKDOWN), _styled(second, MARKDOWN), bold).drop(columns="#")
    if several:
        tests = sum(1 for b in found if b is not None and b.test is not None and b.test.tested)
        choice = (
            f"For each {', '.join(per) or 'study'}, the {axis} with the {direction} mean {metric.label} among "
            f"{min(chosen_count)}{'' if min(chosen_count) == max(chosen_count) else f' to {max(chosen_count)}'} values, "
            f"then that configuration's result; runner-up: the next {axis} by mean, and whether the two are separated. "
        )
        rule = " " + best_rule(o["alpha"], o["correction"], tests, f"the {axis} of its {', '.join(per) or 'study'} with the {direction} mean")
        bias = (
            f" The {axis} is chosen on the same runs it is reported on, so its mean is optimistic (selection bias); "
            "a fair estimate needs the choice made on other seeds (a spec's `tune` block) and reported on the re-runs."
        )
    else:
        choice = f"Each {', '.join(per) or 'study'} has one {axis} among these trials (chosen beforehand); its result. "
        rule = bias = ""
    lines = [markdown_table(display), "", choice + cell_note(o["ci"], o["alpha"], section.runs) + rule + bias, ""]
    note = comparison_note(best, o["baseline"], per, metric, o) if comparing else no_comparison_note(o["baseline"], per)
    if note:
        lines += [note, ""]
    numbers = numbers_frame(best, [*per, axis], metric)
    table = ExportTable(
        numbers=numbers,
        latex=_display(best, per, metric, LATEX, o, comparing, _styled(chosen, LATEX), _styled(second, LATEX), bold).drop(columns="#"),
        caption=section.title,
    )
    everything = ExportTable(numbers=numbers_frame(sort_cells(agg, [*per, axis], section.study), [*per, axis], metric), latex=None)
    return SectionOutput("\n".join(lines), tables={section.files: table, f"{section.files}-all": everything})


def _runner_up(best: Best | None, axis: str, metric: Metric, correction: str) -> str:
    """``2: 82.0; separated (paired t-test over 3 seeds, p=0.01)``, ``…; tied (…)``,
    ``…; untested (one seed, untested)``; ``—`` without one."""
    if best is None or best.runner_up is None:
        return "—"
    second = f"{best.runner_up[axis]}: {number(best.runner_up['mean'] * metric.scale, metric.digits)}"
    verdict = {"best": "separated", "tied": "tied"}.get(best.verdict, "")
    detail = test_text(best, correction)
    return f"{second}; {verdict} ({detail})" if verdict else f"{second} ({detail})"

"""``time-to-accuracy``: for a target value of a per-epoch metric, the optimizer steps and
the cumulative training seconds each configuration needed to first reach it (AlgoPerf's
time-to-result), the mean over the seeds that reached it and how many of its trials did;
"not reached" otherwise."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from bench.errors import ConfigError
from bench.metrics import Metric, epoch_metric
from bench.report.export import ExportTable
from bench.report.format import LATEX, MARKDOWN, Style, number
from bench.report.kinds import Option, SectionInput, SectionOutput, section_kind
from bench.report.sections._common import metric_of, varied_keys
from bench.report.stats import describe
from bench.report.tables import OUTCOMES, axis_order, markdown_table, ordered, sort_cells

OPTIONS = {
    "target": Option("the value to reach, in the metric's stored units (accuracy 0.85 = 85%)", "number", required=True),
    "metric": Option("the per-epoch metric", "epoch-metric", "val_acc"),
    "by": Option("the columns that make a configuration (default: what the study varies)", "keys"),
    "columns": Option("lay the table out as a pivot with the values of this column (one of `by`) as its columns", "key"),
}


def _target_text(metric: Metric, target: float) -> str:
    op = "≥" if metric.higher_is_better else "≤"
    shown = f"{target * metric.scale:g}{'%' if metric.scale == 100 else ''}"
    return f"{metric.label.replace(' (%)', '')} {op} {shown}"


def _title(options: Mapping[str, Any]) -> str:
    return f"Time to {_target_text(epoch_metric(options['metric']), options['target'])}"


def _check(where: str, options: Mapping[str, Any]) -> None:
    if options.get("columns") and options.get("by") and options["columns"] not in options["by"]:
        raise ConfigError(f"{where}: `columns: {options['columns']}` must be one of the `by` columns ({', '.join(options['by'])}).")
    metric = epoch_metric(options["metric"])
    if metric.scale == 100 and not 0 < options["target"] <= 1:
        raise ConfigError(
            f"{where}: `target` {options['target']:g} for {metric.name}: accuracies are stored as fractions, "
            f"so write 0.85 for 85%."
        )


def first_reached(epochs: pd.DataFrame, metric: str, target: float, higher_is_better: bool = True) -> pd.DataFrame:
    """One row per run that reached ``target``: the first epoch whose ``metric`` reached it,
    the optimizer steps done by then, and the training seconds summed up to that epoch."""
    columns = ["run_id", "epoch", "step", "seconds"]
    if epochs.empty or metric not in epochs:
        return pd.DataFrame(columns=columns)
    data = epochs.sort_values(["run_id", "epoch"])
    data = data.assign(
        seconds=data.groupby("run_id")["train_seconds"].cumsum() if "train_seconds" in data else math.nan,
        value=pd.to_numeric(data[metric], errors="coerce"),
    )
    hit = data["value"] >= target if higher_is_better else data["value"] <= target
    return data[hit].groupby("run_id", sort=False).head(1)[columns].reset_index(drop=True)


@section_kind("time-to-accuracy", "optimizer steps and training seconds to first reach a target, per configuration",
              options=OPTIONS, per_epoch=True, title=_title, check=_check)
def time_to_accuracy(section: SectionInput) -> SectionOutput:
    o = section.options
    metric = metric_of(o, per_epoch=True)
    by = list(o.get("by") or varied_keys(section.study))
    if not by:
        raise ConfigError("A time-to-accuracy table needs columns that tell configurations apart (`by`), and this study varies nothing.")
    runs = section.runs
    if runs.empty:
        return SectionOutput("_No runs yet._\n")
    reached = first_reached(section.epochs, metric.name, o["target"], metric.higher_is_better)
    data = runs.merge(reached, on="run_id", how="left")
    records = []
    for values, group in data.groupby(by, sort=False, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        hit = group[group["epoch"].notna()]
        steps, seconds, epochs = describe(hit["step"].astype(float)), describe(hit["seconds"].astype(float)), describe(hit["epoch"].astype(float))
        records.append({
            **dict(zip(by, values)),
            "total": len(group),
            "reached": len(hit),
            **{o_: int((group["status"] == o_).sum()) for o_ in OUTCOMES},
            "pending": int((~group["status"].isin(OUTCOMES)).sum()),
            "epochs_mean": epochs.mean,
            "steps_mean": steps.mean, "steps_std": steps.std,
            "seconds_mean": seconds.mean, "seconds_std": seconds.std,
        })
    cells = sort_cells(pd.DataFrame.from_records(records), by, section.study)
    target = _target_text(metric, o["target"])
    columns = o.get("columns")
    if columns and (columns not in by or len(by) < 2):
        raise ConfigError(f"The time-to-accuracy `columns: {columns}` must be one of at least two `by` columns; by: {', '.join(by)}.")
    layout = (lambda style: _pivot(cells, by, columns, section.study, style)) if columns else (lambda style: _display(cells, by, style))
    lines = [
        markdown_table(layout(MARKDOWN)),
        "",
        f"For each configuration, over its trials that reached {target}: "
        + ("the cumulative training seconds (evaluation excluded), then the optimizer steps done, "
           if columns else "the epoch, the optimizer steps done and the cumulative training seconds (evaluation excluded) ")
        + "at the end of the first epoch that reached it, mean ± sample standard deviation, and how many of its trials "
        "reached it. Metrics are recorded once per epoch, so a target reached during an "
        "epoch counts at that epoch's end. “Reached” counts every trial of the configuration, diverged, failed "
        "and not-run ones included; a trial that reached the target before diverging counts as reached.",
        "",
    ]
    table = ExportTable(numbers=cells.rename(columns={"pending": "not_run"}), latex=layout(LATEX), caption=section.title)
    return SectionOutput("\n".join(lines), tables={section.files: table})


def _display(cells: pd.DataFrame, by: list[str], style: Style) -> pd.DataFrame:
    records = []
    for _, cell in cells.iterrows():
        record = {k: style.text(str(cell[k])) for k in by}
        notes = [f"{int(cell[o])} {o}" for o in ("diverged", "failed") if int(cell[o])]
        if int(cell["pending"]):
            notes.append(f"{int(cell['pending'])} not run")
        record["reached"] = style.text(f"{int(cell['reached'])} of {int(cell['total'])}" + (f" ({', '.join(notes)})" if notes else ""))
        if cell["reached"]:
            record["epoch"] = style.text(number(cell["epochs_mean"], 1))
            record["steps"] = style.text(_spread(cell["steps_mean"], cell["steps_std"], 0))
            record["training seconds"] = style.text(_spread(cell["seconds_mean"], cell["seconds_std"], 1))
        else:
            record["epoch"] = record["steps"] = record["training seconds"] = style.text("not reached")
        records.append(record)
    return pd.DataFrame.from_records(records, columns=[*by, "reached", "epoch", "steps", "training seconds"])


def _pivot(cells: pd.DataFrame, by: list[str], columns: str, study: Mapping[str, Any], style: Style) -> pd.DataFrame:
    """Rows: the other `by` columns; columns: the values of ``columns``; each cell the
    seconds and steps to the target and how many trials reached it."""
    rows = [k for k in by if k != columns]
    col_values = ordered(cells[columns].unique(), axis_order(study, columns))
    index = {(tuple(cell[k] for k in rows), cell[columns]): cell for _, cell in cells.iterrows()}
    records = []
    for row_values in dict.fromkeys(tuple(cell[k] for k in rows) for _, cell in cells.iterrows()):
        record = {f"{', '.join(rows)} \\ {columns}": style.text(", ".join(str(v) for v in row_values))}
        for c in col_values:
            cell = index.get((row_values, c))
            record[str(c)] = "—" if cell is None else _cell(cell, style)
        records.append(record)
    return pd.DataFrame.from_records(records)


def _cell(cell: Mapping[str, Any], style: Style) -> str:
    reached = f"{int(cell['reached'])} of {int(cell['total'])}"
    notes = [f"{int(cell[o])} {o}" for o in ("diverged", "failed") if int(cell[o])]
    if int(cell["pending"]):
        notes.append(f"{int(cell['pending'])} not run")
    count = style.text(f"({reached}{'; ' + ', '.join(notes) if notes else ''})")
    if not cell["reached"]:
        return style.text("not reached ") + count
    seconds = style.text(_spread(cell["seconds_mean"], cell["seconds_std"], 1) + " s")
    steps = style.text(_spread(cell["steps_mean"], cell["steps_std"], 0) + " steps ")
    return seconds + style.newline + steps + count


def _spread(mean: float, std: float, digits: int) -> str:
    return number(mean, digits) + ("" if math.isnan(std) else f" ± {number(std, digits)}")

"""``curves``: a per-epoch metric against training progress (epoch, optimizer steps or
cumulative training seconds), one line per group: the mean over seeds with a band of
± one standard deviation or min–max; optionally one panel per value of another column."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from bench.metrics import epoch_metric
from bench.report.export import ExportTable
from bench.report.kinds import Option, SectionInput, SectionOutput, section_kind
from bench.report.plots import curves_plot
from bench.report.sections._common import metric_of
from bench.report.tables import axis_order, ordered

_STATUS = {"pending": "not run"}
X_AXES = {"epoch": "epoch", "step": "optimizer steps", "seconds": "cumulative training seconds"}
OPTIONS = {
    "group": Option("the column whose values are the lines", "key", required=True),
    "metric": Option("the per-epoch metric", "epoch-metric", "val_acc"),
    "x": Option("training progress on the x-axis: epoch, step (optimizer steps) or seconds (cumulative training time)", "choice", "epoch", choices=tuple(X_AXES)),
    "band": Option("the band around each mean: std (± one standard deviation) or minmax (over seeds)", "choice", "std", choices=("std", "minmax")),
    "panels": Option("one panel per value of this column", "key"),
}


def _title(options: Mapping[str, Any]) -> str:
    return f"{epoch_metric(options['metric']).title()} during training, per {options['group']}"


def curve_points(runs: pd.DataFrame, epochs: pd.DataFrame, keys: list[str], metric: str, x: str) -> pd.DataFrame:
    """Per (keys..., epoch): the seeds' mean, std, min and max of ``metric``, n, and the mean
    x position (epoch; step at the epoch's end; cumulative training seconds)."""
    if epochs.empty or metric not in epochs:
        return pd.DataFrame(columns=[*keys, "epoch", "x", "mean", "std", "min", "max", "n"])
    data = epochs.sort_values(["run_id", "epoch"]).merge(runs[["run_id", *keys]], on="run_id", how="inner")
    data = data.assign(
        seconds=data.groupby("run_id")["train_seconds"].cumsum() if "train_seconds" in data else float("nan"),
        value=pd.to_numeric(data[metric], errors="coerce"),
    ).dropna(subset=["value"])
    data["x"] = data["epoch"] if x == "epoch" else data[x]
    grouped = data.groupby([*keys, "epoch"], dropna=False)
    out = grouped.agg(x=("x", "mean"), mean=("value", "mean"), std=("value", "std"), min=("value", "min"),
                      max=("value", "max"), n=("value", "size")).reset_index()
    return out


@section_kind("curves", "a per-epoch metric during training, one line per group, mean with a band over seeds",
              options=OPTIONS, per_epoch=True, title=_title)
def curves(section: SectionInput) -> SectionOutput:
    o = section.options
    metric = metric_of(o, per_epoch=True)
    group, panels = o["group"], o.get("panels")
    keys = [group] + ([panels] if panels else [])
    points = curve_points(section.runs, section.epochs, keys, metric.name, o["x"])
    if points.empty:
        return SectionOutput(f"_No per-epoch {metric.name} recorded for these trials._\n")
    scale = metric.scale
    shown = points.assign(mean=points["mean"] * scale)
    if o["band"] == "std":
        spread = points["std"].fillna(0) * scale
        shown = shown.assign(low=shown["mean"] - spread, high=shown["mean"] + spread)
    else:
        shown = shown.assign(low=points["min"] * scale, high=points["max"] * scale)
    group_order = ordered(points[group].unique(), axis_order(section.study, group))
    panel_order = ordered(points[panels].unique(), axis_order(section.study, panels)) if panels else None
    figure = curves_plot(
        shown, group, x="x", xlabel=X_AXES[o["x"]], ylabel=metric.label, title=section.title, panels=panels,
        panel_order=panel_order, group_order=group_order, x_integer=o["x"] == "epoch",
    )
    path = f"{section.files}.png"
    band = "± one sample standard deviation over seeds" if o["band"] == "std" else "the minimum to the maximum over seeds"
    if int(points["n"].max()) == 1:
        band += " (none with one seed)"
    seeds = sorted(set(points["n"].astype(int)))
    lines = [
        f"![{metric.label} during training]({path})",
        "",
        f"Line: the mean over seeds at the end of each epoch{_x_note(o['x'])}; band: {band}; "
        f"{seeds[0] if len(seeds) == 1 else f'{seeds[0]} to {seeds[-1]}'} seed{'s' if seeds[-1] != 1 else ''} per point. "
        "Diverged trials contribute the epochs they finished.",
    ]
    lines += _missing(section.runs, points, keys, group_order)
    numbers = shown.drop(columns=["low", "high"]).assign(
        std=points["std"] * scale, min=points["min"] * scale, max=points["max"] * scale, metric=metric.label
    )
    numbers = numbers.drop(columns="x") if o["x"] == "epoch" else numbers.rename(columns={"x": f"{o['x']}_mean"})
    table = ExportTable(numbers=numbers, latex=None, caption=section.title)
    return SectionOutput("\n".join(lines) + "\n", figures={path: figure}, tables={section.files: table})


def _x_note(x: str) -> str:
    if x == "step":
        return " (x: optimizer steps done)"
    if x == "seconds":
        return " (x: the seeds' mean cumulative training time, evaluation excluded)"
    return ""


def _missing(runs: pd.DataFrame, points: pd.DataFrame, keys: list[str], order: list[Any]) -> list[str]:
    """The groups of the section's trials that have no curve, with their outcomes."""
    have = set(points[keys[0]].unique())
    absent = [g for g in ordered(runs[keys[0]].unique(), order) if g not in have]
    if not absent:
        return []
    parts = []
    for g in absent:
        status = runs[runs[keys[0]] == g]["status"].value_counts()
        parts.append(f"`{g}` ({', '.join(f'{n} {_STATUS.get(s, s)}' for s, n in status.items())})")
    return ["", f"No curve (no epoch finished): {', '.join(parts)}."]

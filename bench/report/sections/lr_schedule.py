"""``lr-schedule``: the learning rate every optimizer step used, one line per group.

The per-epoch ``lr`` metric samples the schedule once per epoch, which hides warm-ups and
SGDR's restarts. The schedule is a pure function of a trial's config and its steps per
epoch, so this section recomputes it exactly (:func:`bench.zoo.schedules.schedule_curve`,
the trainer's own schedule function, which ``bench zoo schedules --plot`` draws too) from each group's stored config: no per-step
logging is needed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from bench.errors import BenchError
from bench.report.export import ExportTable
from bench.report.kinds import Option, SectionInput, SectionOutput, section_kind
from bench.report.plots import line_style
from bench.report.tables import axis_order, markdown_table, ordered
from bench.spec import CONFIG_FIELDS, TrialConfig, from_mapping

OPTIONS = {
    "group": Option("the column whose values are the lines (one config each)", "key", required=True),
}


def _title(options: Mapping[str, Any]) -> str:
    return f"The learning rate at every optimizer step, per {options['group']}"


def config_of(row: Mapping[str, Any]) -> TrialConfig:
    """The TrialConfig of a runs-frame row (its config columns; NaN cells were None)."""
    values = {}
    for name in CONFIG_FIELDS:
        if name not in row:
            continue
        value = row[name]
        if not isinstance(value, (tuple, list)) and pd.isna(value):
            value = None
        elif hasattr(value, "item"):  # numpy scalars from the frame's columns
            value = value.item()
        values[name] = list(value) if isinstance(value, tuple) else value
    return from_mapping({k: v for k, v in values.items() if v is not None})


def schedule_points(runs: pd.DataFrame, group: str) -> tuple[pd.DataFrame, list[str]]:
    """Per group: (epoch position, lr) of every step, from the group's first run that
    recorded its steps per epoch; and the groups that had none."""
    from bench.zoo.schedules import schedule_curve

    frames, missing = [], []
    for value, part in runs.groupby(group, sort=False, dropna=False):
        known = part[pd.to_numeric(part.get("steps_per_epoch"), errors="coerce").notna()] if "steps_per_epoch" in part else part.iloc[0:0]
        if known.empty:
            missing.append(str(value))
            continue
        row = known.sort_values("seed").iloc[0]
        try:
            config = config_of(row)
        except BenchError:
            missing.append(str(value))
            continue
        per_epoch = int(row["steps_per_epoch"])
        epochs, lrs = schedule_curve(config, per_epoch)
        frames.append(pd.DataFrame({
            group: [value] * len(lrs),
            "step": range(len(lrs)),
            "epoch": epochs,
            "lr": lrs,
            "schedule": config.schedule,
            "steps_per_epoch": per_epoch,
        }))
    points = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[group, "step", "epoch", "lr"])
    return points, missing


@section_kind("lr-schedule", "the learning rate of every optimizer step, recomputed from each group's config",
              options=OPTIONS, title=_title)
def lr_schedule(section: SectionInput) -> SectionOutput:
    group = section.options["group"]
    points, missing = schedule_points(section.runs, group)
    if points.empty:
        return SectionOutput("_No trial has finished an epoch yet, so its steps per epoch are unknown._\n")
    order = ordered(list(dict.fromkeys(points[group])), axis_order(section.study, group))
    fig = Figure(figsize=(7.4, 4.0), dpi=120, layout="constrained")
    ax = fig.subplots()
    for i, value in enumerate(order):
        line = points[points[group] == value]
        style = line_style(i)  # colour and dash only: a marker on every step would hide the line
        ax.plot(line["epoch"], line["lr"], label=str(value), linewidth=1.4, color=style["color"], linestyle=style["linestyle"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(section.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=group)
    path = f"{section.files}.png"
    rows = []
    for value in order:
        line = points[points[group] == value]
        lr = line["lr"].to_numpy()
        peak = int(lr.argmax())
        rows.append({
            group: value,
            "schedule": line["schedule"].iloc[0],
            "steps": len(line),
            "peak lr": lr.max(),
            "peak at step": peak,
            "final lr": lr[-1],
            "mean lr": lr.mean(),
        })
    table = pd.DataFrame(rows)
    shown = table.assign(**{c: [f"{v:.3g}" for v in table[c]] for c in ("peak lr", "final lr", "mean lr")})
    text = [
        f"![{section.title}]({path})",
        "",
        markdown_table(shown.astype(str)),
        "",
        "Each line: the learning rate of every optimizer step of the group's run (the lowest seed), computed "
        "from its stored config and steps per epoch by the trainer's own schedule function; mean lr: over all "
        "steps (the area under the curve divided by the steps).",
    ]
    if missing:
        text += ["", f"No curve for {', '.join(f'`{m}`' for m in missing)}: none of its trials finished an epoch."]
    caption = f"{section.title}: peak, final and mean learning rate of each schedule."
    return SectionOutput("\n".join(text) + "\n", figures={path: fig}, tables={section.files: ExportTable(numbers=table, latex=None, caption=caption)})

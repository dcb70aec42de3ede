"""Figures. Pure functions: aggregated DataFrame in, matplotlib Figure out (saving is the
caller's business). Figures are built with ``matplotlib.figure.Figure`` directly, not
pyplot, so nothing is kept in global state."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

LOG_SPAN = 8.0  # an axis whose positive values span at least this ratio is drawn on a log scale


def log_base(values: Sequence[object], setting: str | int | None = "auto") -> int | None:
    """The base of a log axis for ``values``, or None for a linear one. ``auto``: log when
    the values are positive numbers spanning ≥ 8× (base 2 when all are powers of two,
    else 10); ``none``: linear; 2 or 10: that base."""
    if setting in (None, "none", False):
        return None
    if setting != "auto":
        return int(setting)
    values = list(values)
    numeric = [float(v) for v in values if isinstance(v, numbers.Real) and not isinstance(v, bool)]
    if not numeric or len(numeric) < len(values) or min(numeric) <= 0 or max(numeric) / min(numeric) < LOG_SPAN:
        return None
    powers_of_two = all(v.is_integer() and int(v) & (int(v) - 1) == 0 for v in numeric)
    return 2 if powers_of_two else 10


def line_style(i: int) -> dict[str, object]:
    """The i-th line's colour, marker and dash: ten colours, then the same colours dashed,
    then dotted, so up to 30 lines stay distinct."""
    return {"color": f"C{i % 10}", "linestyle": ("-", "--", ":")[(i // 10) % 3], "marker": "osD"[(i // 10) % 3]}


def scaling_plot(
    agg: pd.DataFrame,
    x: str,
    group: str,
    *,
    ylabel: str,
    title: str = "",
    log: str | int | None = "auto",
    scale: float = 100.0,
    group_order: Sequence[object] | None = None,
    bars: str = "std",
) -> Figure:
    """Metric vs an axis (e.g. accuracy vs batch size), one line per group: the mean over
    seeds with error bars of ± std (``bars="std"``) or the confidence interval
    (``bars="ci"``: columns ``ci_low``/``ci_high``); a log x-axis where :func:`log_base` says."""
    fig = Figure(figsize=(7.4, 4.4), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    shown = agg[agg["n"] > 0]
    groups = [g for g in (group_order or []) if g in set(shown[group])]
    groups += sorted((g for g in shown[group].unique() if g not in groups), key=str)
    for i, g in enumerate(groups):
        part = shown[shown[group] == g].sort_values(x)
        mean = part["mean"].astype(float) * scale
        if bars == "ci":
            low = (part["mean"] - part["ci_low"]).astype(float).fillna(0) * scale
            high = (part["ci_high"] - part["mean"]).astype(float).fillna(0) * scale
            yerr = [low.to_numpy(), high.to_numpy()]
        else:
            yerr = part["std"].astype(float).fillna(0).to_numpy() * scale
        ax.errorbar(part[x], mean, yerr=yerr, capsize=3, label=str(g), **line_style(i))
    ticks = sorted(agg[x].unique(), key=lambda v: (isinstance(v, str), v))
    base = log_base(ticks, log)
    if base:
        ax.set_xscale("log", base=base)
        labels = [f"{t:g}" if isinstance(t, float) else str(t) for t in ticks]
        ax.set_xticks(ticks, labels, rotation=45 if len(ticks) > 8 else 0)  # many ticks: slanted, so they do not overlap
        ax.minorticks_off()
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if groups:
        fig.legend(title=group, fontsize="small", loc="outside right upper")
    return fig


def curves_plot(
    curves: pd.DataFrame,
    group: str,
    *,
    x: str,
    xlabel: str,
    ylabel: str,
    title: str = "",
    panels: str | None = None,
    panel_order: Sequence[object] | None = None,
    group_order: Sequence[object] | None = None,
    x_integer: bool = False,
) -> Figure:
    """Per-epoch curves: one line per group (its ``mean`` at each ``x``), a shaded band
    from ``low`` to ``high``; one subplot per value of ``panels`` when given, sharing the
    y-axis; integer ticks when ``x_integer`` (epochs). ``curves`` holds the columns group,
    [panels], x, mean, low, high (in the units shown)."""
    panel_values: list[object] = list(panel_order) if panels and panel_order else [None]
    cols = min(3, len(panel_values))
    rows = math.ceil(len(panel_values) / cols)
    single = len(panel_values) == 1
    size = (7.4, 4.4) if single else (4.4 * cols, 3.4 * rows + 0.9)
    fig = Figure(figsize=size, dpi=120, layout="constrained")
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False).ravel()
    groups = list(group_order or sorted(curves[group].unique(), key=str))
    styles = {g: line_style(i) for i, g in enumerate(groups)}
    for ax, panel in zip(axes, panel_values):
        part = curves if panel is None else curves[curves[panels] == panel]
        for g in groups:
            line = part[part[group] == g].sort_values(x)
            if line.empty:
                continue
            ax.plot(line[x], line["mean"], markersize=3, label=str(g), **styles[g])
            ax.fill_between(line[x], line["low"], line["high"], color=styles[g]["color"], alpha=0.18, linewidth=0)
        ax.set_xlabel(xlabel)
        if x_integer:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if panel is not None:
            ax.set_title(f"{panels} = {panel}", fontsize="medium")
    for ax in axes[len(panel_values):]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel(ylabel)
    legend: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        ordered = sorted(legend, key=lambda label: [str(g) for g in groups].index(label))
        where = {"loc": "outside right upper"} if single else {"loc": "outside lower center", "ncols": min(len(ordered), 3 * cols)}
        fig.legend([legend[k] for k in ordered], ordered, title=group, fontsize="small", **where)
    if title:
        fig.suptitle(title)
    return fig

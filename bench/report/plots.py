"""Figures. Pure functions: aggregated DataFrame in, matplotlib Figure out (saving is the
caller's business). Figures are built with ``matplotlib.figure.Figure`` directly, not
pyplot, so nothing is kept in global state."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
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


MARKERS = "osD^v<>ph*"
DASHES = ("-", "--", "-.", ":")
MAX_LINES = 8  # more lines than this in one plot: small multiples (one panel per line)


def line_style(i: int) -> dict[str, object]:
    """The i-th line's colour, marker and dash. The first ten differ in all three, so lines
    that lie on top of each other stay told apart by their markers and dashes; past ten the
    colours repeat with another marker and dash, so no two of the first hundred look alike."""
    shift = i + i // 10
    return {"color": f"C{i % 10}", "marker": MARKERS[shift % len(MARKERS)], "linestyle": DASHES[shift % len(DASHES)]}


def _ordered_groups(values: Sequence[object], order: Sequence[object] | None) -> list[object]:
    present = list(dict.fromkeys(values))
    first = [g for g in (order or []) if g in present]
    return first + sorted((g for g in present if g not in first), key=_sort_key)


def _sort_key(value: object) -> tuple[int, object]:
    """Numbers numerically (1, 3, 10, not 1, 10, 3), then text."""
    return (0, value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else (1, str(value))


def _draw_scaling_line(
    ax: object, part: pd.DataFrame, x: str, style: Mapping[str, object], *, label: str, bars: str, scale: float,
    errorbars: bool = True, **extra: object,
) -> None:
    """One group's means as a line, with error bars only at points of 2 or more seeds (a
    point of one seed has no spread: no bar, and no bar in the legend)."""
    mean = part["mean"].astype(float) * scale
    ax.plot(part[x], mean, label=label, **{**style, **extra})
    if not errorbars:
        return
    spread = part["n"].astype(int) >= 2
    if bars == "ci":
        low = (part["mean"] - part["ci_low"]).astype(float) * scale
        high = (part["ci_high"] - part["mean"]).astype(float) * scale
        spread &= low.notna() & high.notna()
        yerr: object = [low[spread].to_numpy(), high[spread].to_numpy()]
    else:
        std = part["std"].astype(float) * scale
        spread &= std.notna()
        yerr = std[spread].to_numpy()
    if spread.any():
        ax.errorbar(part[x][spread], mean[spread], yerr=yerr, fmt="none", ecolor=style["color"], capsize=3,
                    elinewidth=1, label="_nolegend_")


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
    marked: Mapping[object, object] | None = None,
) -> Figure:
    """Metric vs an axis (e.g. accuracy vs batch size), one line per group: the mean over
    seeds with error bars of ± std (``bars="std"``) or the confidence interval (``bars="ci"``:
    columns ``ci_low``/``ci_high``) where a point has 2 or more seeds; a log x-axis where
    :func:`log_base` says. Up to :data:`MAX_LINES` groups share one plot, each with its own
    colour, marker and dash; more get one panel each (small multiples), the other groups
    faint grey behind. ``marked``: group → the x of a point to ring (a tuned study's choice)."""
    shown = agg[agg["n"] > 0]
    groups = _ordered_groups(shown[group], group_order)
    ticks = sorted(agg[x].unique(), key=_sort_key)
    small = len(groups) > MAX_LINES
    cols = 1
    if small:
        cols = 4
        rows = math.ceil(len(groups) / cols)
        fig = Figure(figsize=(3.3 * cols, 2.6 * rows + 0.9), dpi=120, layout="constrained")
        axes = list(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel())
    else:
        fig = Figure(figsize=(7.4, 4.4), dpi=120, layout="constrained")
        axes = [fig.add_subplot()]
    parts = {g: shown[shown[group] == g].sort_values(x, key=lambda s: s.map(_sort_key)) for g in groups}
    ring = False
    for i, g in enumerate(groups):
        ax = axes[i] if small else axes[0]
        if small:
            for other in groups:
                if other != g:
                    ax.plot(parts[other][x], parts[other]["mean"].astype(float) * scale, color="0.8", linewidth=0.8,
                            zorder=1)
            style = {"color": "C0", "marker": "o", "linestyle": "-"}
            ax.set_title(str(g), fontsize="medium")
        else:  # markers shrink line by line, so one drawn over an earlier one leaves its rim in sight
            style = {**line_style(i), "markersize": 9.0 - 4.0 * i / max(1, MAX_LINES - 1)}
        _draw_scaling_line(ax, parts[g], x, style, label=str(g), bars=bars, scale=scale, zorder=3)
        at = (marked or {}).get(g)
        point = parts[g][parts[g][x] == at] if at is not None else parts[g].iloc[0:0]
        if len(point):
            ax.plot(point[x], point["mean"].astype(float) * scale, linestyle="none", marker="o", markersize=13,
                    markerfacecolor="none", markeredgecolor="black", markeredgewidth=1.2, zorder=4)
            ring = True
    for i, ax in enumerate(axes[len(groups):] if small else [], len(groups)):
        ax.set_visible(False)
        if i - cols >= 0:
            axes[i - cols].xaxis.set_tick_params(labelbottom=True)  # the last panel of its column: its ticks labelled
    base = log_base(ticks, log)
    for ax in axes[: max(1, len(groups))]:
        if base:
            ax.set_xscale("log", base=base)
            labels = [f"{t:g}" if isinstance(t, float) else str(t) for t in ticks]
            ax.set_xticks(ticks, labels, rotation=45 if len(ticks) > 8 or small else 0)  # many ticks: slanted
            ax.minorticks_off()
        ax.grid(True, alpha=0.3)
    if small:
        fig.supxlabel(x)
        fig.supylabel(ylabel)
        if title:
            fig.suptitle(title)
    else:
        axes[0].set_xlabel(x)
        axes[0].set_ylabel(ylabel)
        if title:
            axes[0].set_title(title)
    handles, labels = ([], []) if small else axes[0].get_legend_handles_labels()
    if ring:
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=10, markerfacecolor="none",
                              markeredgecolor="black"))
        labels.append("chosen by tuning")
    if small:
        handles.append(Line2D([], [], color="0.8", linewidth=0.8))
        labels.append(f"the other {group} values")
    if handles:
        fig.legend(handles, labels, title=None if small else group, fontsize="small", loc="outside right upper")
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
    groups = list(group_order or sorted(curves[group].unique(), key=_sort_key))
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

"""Figures. Pure functions: aggregated DataFrame in, matplotlib Figure out (saving is
the caller's business)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def scaling_plot(
    agg: pd.DataFrame,
    x: str,
    group: str,
    *,
    ylabel: str,
    title: str = "",
    log_base: int | None = 2,
    scale: float = 100.0,
    group_order: Sequence[object] | None = None,
) -> Figure:
    """Metric vs an axis (e.g. accuracy vs batch size), one line per group with ± std
    error bars; log x-axis (base 2 by default) where the axis spans powers."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    groups = list(group_order) if group_order else sorted(agg[group].unique(), key=str)
    for g in groups:
        part = agg[(agg[group] == g) & (agg["n"] > 0)].sort_values(x)
        if part.empty:
            continue
        ax.errorbar(
            part[x], part["mean"] * scale, yerr=part["std"].fillna(0) * scale, marker="o", capsize=3, label=str(g)
        )
    if log_base:
        ax.set_xscale("log", base=log_base)
        ticks = sorted(agg[x].unique())
        ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(title=group, fontsize="small")
    fig.tight_layout()
    return fig

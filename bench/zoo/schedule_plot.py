"""Draws learning-rate schedules (``bench zoo schedules --plot NAME``): the learning rate
each optimizer step would use, for the options a study would give."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from bench.spec import from_mapping  # noqa: E402
from bench.zoo.schedules import schedule_curve  # noqa: E402


def plot_schedules(names: Sequence[str], options: Mapping[str, Any], steps_per_epoch: int) -> Figure:
    """One line per schedule, with the same config values (``options``) for each."""
    configs = [from_mapping({**options, "schedule": name}) for name in names]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, config in zip(names, configs):
        x, y = schedule_curve(config, steps_per_epoch)
        ax.plot(x, y, label=name, linewidth=1.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{configs[0].epochs} epochs × {steps_per_epoch} steps, peak lr {configs[0].effective_lr:g}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def save_schedule_plot(names: Sequence[str], options: Mapping[str, Any], steps_per_epoch: int, path: Path) -> None:
    """:func:`plot_schedules` written to the PNG file ``path`` (its folder created)."""
    figure = plot_schedules(names, options, steps_per_epoch)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)

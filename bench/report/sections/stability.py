"""``stability``: per-step training curves of runs trained with ``log_steps: true``, with
loss spikes and divergence marked, and a table of what :mod:`bench.trial.spikes` measures on
them: loss spikes, first-layer gradient-norm spikes and the loss spikes they precede, the
worst drop of the training accuracy, divergence, and the final validation accuracy.

Figures: one per series (``loss``, ``acc``, ``grad_norm``, ``first_grad_norm``, ``lr``),
one line per value of ``group`` (colours in order of value), one panel per combination of
the ``panels`` columns, one row of panels per value of ``rows``. A line is one run (one
seed): per-step curves are never averaged over seeds, which would smooth the spikes away.
The line is the trailing mean over ``smooth`` steps, the raw values faint behind it. Spike
starts are a rug of ticks in a strip under the panel, one row per line, with their count.

Table: one row per configuration (``panels``, ``rows``, ``group``), over every seed.
Trials without per-step records (run without ``log_steps``, or not run) are counted in
their row and listed under the table. Spike detection takes ``k``, ``window`` and
``warmup``; the accuracy drop ``acc_smooth``; their definitions are printed with the table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter

from bench.errors import ConfigError
from bench.metrics import run_metric
from bench.report.export import ExportTable
from bench.report.format import LATEX, MARKDOWN, Style, format_cell, number
from bench.report.kinds import Option, SectionInput, SectionOutput, section_kind
from bench.report.plots import line_style
from bench.report.sections._common import assignment, varied_keys
from bench.report.stats import describe
from bench.report.tables import OUTCOMES, axis_order, markdown_table, ordered, sort_key
from bench.trial.spikes import StabilityParams, divergence_step, find_spikes, stability


@dataclass(frozen=True)
class Series:
    label: str  # axis label
    log: bool  # log y-axis
    scale: float = 1.0  # stored value × scale = shown value


SERIES = {
    "loss": Series("training loss (per batch)", True),
    "acc": Series("training accuracy (%, per batch)", False, 100.0),
    "grad_norm": Series("global gradient norm", True),
    "first_grad_norm": Series("first-layer gradient norm", True),
    "lr": Series("learning rate", True),
}
DEFAULT_SERIES = ["loss", "acc", "first_grad_norm"]
FINAL = run_metric("final_val_acc")
MAX_EPOCH_LINES = 60  # more epoch boundaries than this in one panel are not drawn

OPTIONS = {
    "group": Option("the column whose values are the lines, coloured in order of value", "key", "lr"),
    "panels": Option("one panel per combination of these columns, e.g. [optimizer, vit_freeze_patch]", "keys"),
    "rows": Option("one row of panels (and table rows) per value of this column, e.g. batch_size", "key"),
    "series": Option(
        "the per-step series drawn, one figure each: " + ", ".join(SERIES), "choices", DEFAULT_SERIES, choices=tuple(SERIES)
    ),
    "smooth": Option("steps in the trailing mean drawn as each line (raw values faint behind)", "integer", 20),
    "seed": Option(
        "the seed whose run each line draws (default: the lowest seed with per-step records); the table covers every seed",
        "integer", minimum=0,
    ),
    "k": Option("a spike step exceeds k × the running median of the steps before it (k > 1)", "number", 2.0),
    "grad_k": Option("k for the gradient-norm series (default: k); gradient norms are noisier than the loss", "number"),
    "window": Option("steps in that running median", "integer", 50),
    "warmup": Option("steps at the start that are never spike steps", "integer", 50, minimum=0),
    "acc_smooth": Option("steps in the trailing mean of the training accuracy whose largest drop is reported", "integer", 10),
}


def _title(options: Mapping[str, Any]) -> str:
    return f"Training stability per step, per {options['group']}"


def _check(where: str, options: Mapping[str, Any]) -> None:
    group, rows, panels = options["group"], options.get("rows"), list(options.get("panels") or [])
    used = [*panels, *([rows] if rows else []), group]
    twice = sorted({k for k in used if used.count(k) > 1})
    if twice:
        raise ConfigError(
            f"{where}: `{twice[0]}` is named twice among group, panels and rows; each column splits the runs once."
        )
    if options.get("grad_k") is not None and not options["grad_k"] > 1:
        raise ConfigError(f"{where}: `grad_k` must be a number > 1 (or left out to use k); got {options['grad_k']:g}.")
    if not options["k"] > 1:
        raise ConfigError(
            f"{where}: `k` must be a number > 1 (a spike step exceeds k × the running median of the steps before it); "
            f"got {options['k']:g}."
        )
    try:
        params(options)
    except ValueError as error:
        raise ConfigError(f"{where}: bad spike-detection parameters: {error}.") from None


def params(options: Mapping[str, Any]) -> StabilityParams:
    """The :class:`~bench.trial.spikes.StabilityParams` of a section's options."""
    return StabilityParams(
        k=float(options["k"]), window=int(options["window"]), warmup=int(options["warmup"]), acc_smooth=int(options["acc_smooth"]),
        grad_k=None if options.get("grad_k") is None else float(options["grad_k"]),
    )


# -- per run -----------------------------------------------------------------------------


@dataclass
class RunStability:
    """What one run's per-step records say (its series cut before a divergence step)."""

    run_id: str
    seed: Any
    series: pd.DataFrame  # indexed by step: loss, acc, grad_norm, first_grad_norm, lr, epoch (those recorded)
    metrics: dict[str, Any]  # bench.trial.spikes.stability() of the cut series
    diverged_step: Any = None  # the step it diverged at (None: it did not)
    spikes: dict[str, list[Any]] = field(default_factory=dict)  # series → start steps of its spikes (for the figures)

    @property
    def has_grad(self) -> bool:
        return self.metrics.get("grad_spikes") is not None


def step_series(steps: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """run id → its records indexed by step, the numeric fields as floats."""
    if steps.empty:
        return {}
    out = {}
    for run_id, part in steps.groupby("run_id", sort=False):
        frame = part.drop(columns="run_id").drop_duplicates("step", keep="last").set_index("step").sort_index()
        out[run_id] = frame.apply(pd.to_numeric, errors="coerce").astype(float)
    return out


def run_stability(run: Mapping[str, Any], series: pd.DataFrame, p: StabilityParams) -> RunStability:
    """The stability metrics of one run. A diverged run (its status) is measured on the steps
    before its divergence step (the run's ``diverged_step``, or the first step the trainer's
    rule flags), so a last, exploding step is reported as divergence, not as a spike."""
    loss = series["loss"] if "loss" in series else pd.Series(np.nan, index=series.index)
    diverged = None
    if run.get("status") == "diverged":
        stated = _number(run.get("diverged_step"))
        factor = _number(run.get("diverge_factor"))
        found = divergence_step(loss, factor=factor if factor and factor > 1 else 10.0)
        diverged = int(stated) if stated is not None else found if found is not None else (series.index[-1] if len(series) else None)
    cut = series[series.index < diverged] if diverged is not None else series
    cut_loss = cut["loss"] if "loss" in cut else pd.Series(np.nan, index=cut.index)
    acc = cut["acc"] if "acc" in cut and cut["acc"].notna().any() else None
    first = cut["first_grad_norm"] if "first_grad_norm" in cut and cut["first_grad_norm"].notna().any() else None
    metrics = stability(cut_loss, acc, None if first is None else first.fillna(0.0), p)  # as bench.trial.steplog does
    spikes = {"loss": metrics["loss_spike_steps"], "acc": metrics["loss_spike_steps"]}
    if first is not None:
        spikes["first_grad_norm"] = metrics["grad_spike_steps"]
    if "grad_norm" in cut and cut["grad_norm"].notna().any():
        spikes["grad_norm"] = [s.start for s in find_spikes(cut["grad_norm"], k=p.grad_k or p.k, window=p.window, warmup=p.warmup)]
    return RunStability(str(run["run_id"]), run.get("seed"), cut, metrics, diverged, spikes)


# -- configurations ----------------------------------------------------------------------


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _plain(value: Any) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    return None if _missing(value) else value


def configurations(runs: pd.DataFrame, keys: Sequence[str], study: Mapping[str, Any]) -> list[tuple[tuple[Any, ...], pd.DataFrame]]:
    """(values of ``keys``, its trials) per configuration, in the spec's order of each key
    (values outside it sorted; a missing value is None)."""
    labels = [tuple(_plain(row[k]) for k in keys) for _, row in runs.iterrows()]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for position, label in enumerate(labels):
        groups.setdefault(label, []).append(position)
    ranks = []
    for i, key in enumerate(keys):
        order = ordered(list(dict.fromkeys(label[i] for label in groups)), axis_order(study, key))
        ranks.append({v: r for r, v in enumerate(order)})
    order = sorted(groups, key=lambda label: tuple(ranks[i][v] for i, v in enumerate(label)))
    return [(label, runs.iloc[groups[label]]) for label in order]


def _colours(values: Sequence[Any], study: Mapping[str, Any], key: str) -> dict[Any, Any]:
    """Numbers (a learning rate): a sequential colour map in order of value; else the
    usual line colours in the spec's order."""
    numeric = all(sort_key(v)[0] == 0 for v in values)
    if numeric:
        order = sorted(values, key=sort_key)
        cmap = colormaps["viridis"]
        return {v: cmap(0.88 * i / max(1, len(order) - 1)) for i, v in enumerate(order)}
    order = ordered(values, axis_order(study, key))
    return {v: line_style(i)["color"] for i, v in enumerate(order)}


# -- the section -------------------------------------------------------------------------


@section_kind(
    "stability",
    "per-step training curves with loss spikes marked, and a table of spikes, worst accuracy drop and final accuracy",
    options=OPTIONS, per_step=True, title=_title, check=_check,
)
def stability_section(section: SectionInput) -> SectionOutput:
    o = section.options
    p = params(o)
    group, rows, panels = o["group"], o.get("rows"), list(o.get("panels") or [])
    keys = [*panels, *([rows] if rows else []), group]
    runs = section.runs
    if runs.empty:
        return SectionOutput("_No runs yet._\n")
    runs = runs.assign(**{k: None for k in [*keys, "seed"] if k not in runs})
    per_step = step_series(section.steps)
    measured = {
        run_id: run_stability(row, per_step[run_id], p)
        for run_id, row in zip(runs["run_id"], runs.to_dict("records"))
        if run_id in per_step and len(per_step[run_id])
    }
    configs = configurations(runs, keys, section.study)
    if not measured:
        return SectionOutput(
            "_No per-step records for these trials: train them with `log_steps: true`._\n\n"
            + "\n".join(_without_steps(configs, measured, keys, table=False)) + "\n"
        )
    without = _without_steps(configs, measured, keys)
    lines_by_config, seed_notes = _drawn(configs, measured, o["seed"])
    figures = {}
    text = []
    if lines_by_config:
        for name in o["series"]:
            path = f"{section.files}-{name}.png"
            figures[path] = _figure(name, configs, lines_by_config, group, rows, panels, o, section.study)
            text += [f"![{SERIES[name].label.capitalize()} per step]({path})", ""]
        text += [_figure_note(o, group, rows, panels, seed_notes, _pooled(runs, section.study, keys)), ""]
    else:
        text += [f"_No figure: no trial of seed {o['seed']} has per-step records; the table covers every seed._", ""]
    records = [_row(label, trials, measured) for label, trials in configs]
    text += [markdown_table(_display(records, keys, MARKDOWN)), "", _columns_note(), "", _method_note(p), ""]
    if without:
        text += [*without, ""]
    numbers = pd.DataFrame.from_records([_numbers(r, keys) for r in records])
    per_run = pd.DataFrame.from_records(
        [_run_numbers(measured[rid], row, keys, lines_by_config) for rid, row in zip(runs["run_id"], runs.to_dict("records"))
         if rid in measured]
    )
    tables = {
        section.files: ExportTable(numbers=numbers, latex=_display(records, keys, LATEX), caption=section.title),
        f"{section.files}-runs": ExportTable(numbers=per_run, latex=None, caption=f"{section.title}: every run with per-step records"),
    }
    return SectionOutput("\n".join(text).rstrip("\n") + "\n", figures=figures, tables=tables)


def _drawn(
    configs: list[tuple[tuple[Any, ...], pd.DataFrame]], measured: Mapping[str, RunStability], seed: int | None
) -> tuple[dict[tuple[Any, ...], RunStability], list[str]]:
    """The run each configuration's line draws: the wanted seed's, or the lowest seed with
    records (several trials of that seed: the first by run id)."""
    drawn: dict[tuple[Any, ...], RunStability] = {}
    absent = []
    for label, trials in configs:
        have = [measured[r] for r in trials["run_id"] if r in measured]
        if seed is not None:
            have = [m for m in have if m.seed == seed]
        if not have:
            if seed is not None and any(r in measured for r in trials["run_id"]):
                absent.append(label)
            continue
        drawn[label] = min(have, key=lambda m: (_missing(m.seed), -1 if _missing(m.seed) else m.seed, m.run_id))
    notes = [f"{len(absent)} configuration{'s have' if len(absent) != 1 else ' has'} no line: no per-step records "
             f"of seed {seed}"] if absent else []
    return drawn, notes


def _figure(
    name: str, configs: list[tuple[tuple[Any, ...], pd.DataFrame]], drawn: Mapping[tuple[Any, ...], RunStability],
    group: str, rows: str | None, panels: list[str], o: Mapping[str, Any], study: Mapping[str, Any],
) -> Figure:
    """One series' figure: a grid of panels (``rows`` values × ``panels`` combinations, or
    the combinations wrapped three to a row), one line per ``group`` value in each, and
    under each panel, when any line has spikes, a strip with their rug (:func:`spike_rug`)."""
    spec = SERIES[name]
    labels = [label for label, _ in configs if label in drawn]
    n_panels = len(panels)
    panel_values = list(dict.fromkeys(label[:n_panels] for label in labels))
    row_values = list(dict.fromkeys(label[n_panels] for label in labels)) if rows else [None]
    if rows:
        grid = {(r, pv): (i, j) for i, r in enumerate(row_values) for j, pv in enumerate(panel_values)}
        nrows, ncols = len(row_values), len(panel_values)
    else:
        ncols = 2 if len(panel_values) == 4 else min(3, len(panel_values))
        nrows = math.ceil(len(panel_values) / ncols)
        grid = {(None, pv): divmod(j, ncols) for j, pv in enumerate(panel_values)}
    cells = {
        cell: [label for label in labels if label[:n_panels] == cell[1] and (not rows or label[n_panels] == cell[0])]
        for cell in grid
    }
    strip = max((len(_spiky(cell_labels, drawn, name)) for cell_labels in cells.values()), default=0)
    axes, strips, fig = _panels(nrows, ncols, strip)
    colours = _colours(list(dict.fromkeys(label[-1] for label in labels)), study, group)
    marked = diverged = False
    used: set[tuple[int, int]] = set()
    for cell, (i, j) in grid.items():
        ax = axes[i][j]
        used.add((i, j))
        cell_labels = cells[cell]
        drew = False
        for label in cell_labels:
            run = drawn[label]
            if name not in run.series or not run.series[name].notna().any():
                continue
            raw = run.series[name] * spec.scale
            if spec.log:
                raw = raw.where(raw > 0)
            smooth = raw.rolling(o["smooth"], min_periods=1).mean()
            colour = colours[label[-1]]
            ax.plot(raw.index, raw.to_numpy(), color=colour, alpha=0.12, linewidth=0.5)
            ax.plot(smooth.index, smooth.to_numpy(), color=colour, linewidth=1.4, label=str(label[-1]))
            drew = True
            if run.diverged_step is not None:
                finite = smooth.dropna()
                if len(finite):
                    ax.plot([run.diverged_step], [finite.iloc[-1]], linestyle="none", marker="x", markersize=9,
                            markeredgewidth=2, color=colour)
                    diverged = True
        below = strips[i][j] if strips else None
        if drew:
            _epoch_lines(ax, [drawn[label] for label in cell_labels])
            if spec.log:
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(_PlainLog())  # 0.5, 2, 10 rather than 5×10⁻¹
                ax.yaxis.set_minor_formatter(_PlainLog(labelOnlyBase=False, minor_thresholds=(1.5, 0.6)))
            if below is not None:
                rugs = [(colours[label[-1]], steps) for label, steps in _spiky(cell_labels, drawn, name)]
                spike_rug(below, rugs, strip)
                marked = marked or bool(rugs)
        else:  # e.g. the first layer's gradient of a frozen patch projection
            ax.text(0.5, 0.5, f"no {spec.label.split(' (')[0]} recorded", transform=ax.transAxes, ha="center",
                    va="center", fontsize="small", color="grey")
            ax.set_xticks([])
            if below is not None:
                below.set_visible(False)
                below = None
        ax.grid(True, alpha=0.3)
        if below is not None:
            ax.tick_params(labelbottom=False)
            below.set_xlabel("optimizer step")
        else:
            ax.set_xlabel("optimizer step")
        title = assignment([*([rows] if rows else []), *panels], [*([cell[0]] if rows else []), *cell[1]])
        if title:
            ax.set_title(title, fontsize="medium")
    for i in range(nrows):
        axes[i][0].set_ylabel(spec.label)
        for j in range(ncols):
            if (i, j) not in used:
                axes[i][j].set_visible(False)
                if strips:
                    strips[i][j].set_visible(False)
    handles = [Line2D([], [], color=colours[v], linewidth=1.4, label=str(v)) for v in colours]
    if marked:
        spike = "loss spike starts" if name in ("loss", "acc") else f"{spec.label.split(' (')[0]} spike starts"
        handles.append(Line2D([], [], linestyle="none", marker="|", markersize=9, markeredgewidth=1.2, color="grey",
                              label=f"{spike}\n(strip under a panel: a row\nper line, labelled with its count)"))
    if diverged:
        handles.append(Line2D([], [], linestyle="none", marker="x", markeredgewidth=2, color="grey", label="diverged"))
    if handles:
        fig.legend(handles=handles, title=group, fontsize="small", loc="outside right upper")
    fig.suptitle(f"{spec.label.capitalize()} per step (trailing mean over {o['smooth']} steps)", fontsize="medium")
    return fig


def _spiky(
    labels: Sequence[tuple[Any, ...]], drawn: Mapping[tuple[Any, ...], RunStability], name: str
) -> list[tuple[tuple[Any, ...], list[Any]]]:
    """(label, spike start steps) of the lines among ``labels`` with spikes in series ``name``."""
    out = []
    for label in labels:
        run = drawn[label]
        if name in run.series and run.series[name].notna().any():
            steps = [s for s in run.spikes.get(name, []) if s in run.series.index]
            if steps:
                out.append((label, steps))
    return out


def _panels(nrows: int, ncols: int, strip: int) -> tuple[Any, Any, Figure]:
    """(panel axes [row][column], the rug strip under each or None, the figure): the panels
    share y; a strip, ``strip`` rows of ticks high, shares x with its panel."""
    single = nrows * ncols == 1
    extra = 0.22 * strip * nrows if strip else 0.0
    size = (7.4, 4.4 + extra) if single else (4.4 * ncols + 1.6, 3.2 * nrows + 0.8 + extra)
    fig = Figure(figsize=size, dpi=120, layout="constrained")
    if not strip:
        return fig.subplots(nrows, ncols, sharey=True, squeeze=False), None, fig
    ratios = [r for _ in range(nrows) for r in (1.0, min(0.6, 0.07 * strip + 0.05))]
    grid = fig.add_gridspec(2 * nrows, ncols, height_ratios=ratios)
    axes: list[list[Any]] = [[None] * ncols for _ in range(nrows)]
    strips: list[list[Any]] = [[None] * ncols for _ in range(nrows)]
    first = None
    for i in range(nrows):
        for j in range(ncols):
            axes[i][j] = fig.add_subplot(grid[2 * i, j], sharey=first)
            first = first or axes[i][j]
            if j:
                axes[i][j].tick_params(labelleft=False)  # as subplots(sharey=True) labels only the first column
            strips[i][j] = fig.add_subplot(grid[2 * i + 1, j], sharex=axes[i][j])
    return axes, strips, fig


def spike_rug(ax: Any, rugs: Sequence[tuple[Any, Sequence[Any]]], rows: int | None = None) -> None:
    """Spike starts as a rug in the strip ``ax`` under a panel: one row of short ticks per
    line with spikes (in the legend's order, top down), in the line's colour, labelled with
    the line's number of spikes. A tick per spike stays readable where a marker per spike
    on the curve (a hundred on one run) piles up."""
    rows = max(rows or 0, len(rugs), 1)
    for k, (colour, steps) in enumerate(rugs):
        y = rows - 1 - k
        ax.vlines(list(steps), y - 0.36, y + 0.36, colors=[colour], linewidth=0.9, label="_spikes")
    ax.set_ylim(-0.5, rows - 0.5)
    ax.set_yticks([rows - 1 - k for k in range(len(rugs))], [str(len(steps)) for _, steps in rugs])
    for tick, (colour, _) in zip(ax.get_yticklabels(), rugs):
        tick.set_color(colour)
    ax.tick_params(axis="y", length=0, labelsize=7)
    ax.grid(False)
    if not rugs:
        ax.text(0.5, 0.5, "no spikes", transform=ax.transAxes, ha="center", va="center", fontsize="x-small", color="grey")


class _PlainLog(LogFormatter):
    """Log-axis labels as plain numbers (0.6, 2, 10), where matplotlib would label."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:g}"


def _epoch_lines(ax: Any, runs: list[RunStability]) -> None:
    """Light verticals at the first step of each epoch, when the panel's runs share them."""
    bounds = []
    for run in runs:
        if "epoch" not in run.series or not run.series["epoch"].notna().any():
            return
        epoch = run.series["epoch"]
        bounds.append(list(epoch.index[epoch.ne(epoch.shift())][1:]))
    if not bounds:
        return
    longest = max(bounds, key=len)
    if not 0 < len(longest) <= MAX_EPOCH_LINES or any(b != longest[: len(b)] for b in bounds):
        return
    for step in longest:
        ax.axvline(step, color="grey", linewidth=0.6, linestyle=":", alpha=0.5)


# -- the table ---------------------------------------------------------------------------


def _row(label: tuple[Any, ...], trials: pd.DataFrame, measured: Mapping[str, RunStability]) -> dict[str, Any]:
    have = sorted((measured[r] for r in trials["run_id"] if r in measured),
                  key=lambda m: (_missing(m.seed), -1 if _missing(m.seed) else m.seed, m.run_id))
    grads = [m for m in have if m.has_grad]
    status = trials["status"]
    diverged_steps = []
    for row in trials[status == "diverged"].to_dict("records"):
        run = measured.get(row["run_id"])
        step = run.diverged_step if run is not None else _number(row.get("diverged_step"))
        if step is not None:
            diverged_steps.append(int(step))
    finals = trials[status == "completed"]
    finals = pd.to_numeric(finals["final_val_acc"], errors="coerce").dropna() if "final_val_acc" in finals else pd.Series(dtype=float)
    final = describe(finals.to_numpy())
    drops = [m.metrics["max_acc_drop"] for m in have if m.metrics.get("max_acc_drop") is not None]
    return {
        "label": label,
        "trials": len(trials),
        "with_steps": len(have),
        "loss_spikes": [int(m.metrics["loss_spikes"]) for m in have],
        "grad_spikes": [int(m.metrics["grad_spikes"]) for m in grads],
        "preceded": sum(int(m.metrics["preceded_spikes"]) for m in grads),
        "preceded_of": sum(int(m.metrics["loss_spikes"]) for m in grads),
        "max_acc_drop": max(drops) if drops else math.nan,
        "diverged": int((status == "diverged").sum()),
        "diverged_steps": sorted(diverged_steps),
        "final": {
            "mean": final.mean, "std": final.std, "n": final.n, "total": len(trials),
            **{o: int((status == o).sum()) for o in OUTCOMES}, "pending": int((~status.isin(OUTCOMES)).sum()),
        },
    }


def _counts(values: list[int]) -> str:
    """``1``; over several seeds the mean and each seed's count: ``1.5 (1, 2)``."""
    if not values:
        return "—"
    if len(values) == 1:
        return str(values[0])
    return f"{number(float(np.mean(values)), 1)} ({', '.join(str(v) for v in values)})"


def _diverged(row: Mapping[str, Any]) -> str:
    text = f"{row['diverged']} of {row['trials']}"
    steps = row["diverged_steps"]
    if steps:
        text += f" (step{'s' if len(steps) > 1 else ''} {', '.join(str(s) for s in steps)})"
    return text


def _display(records: list[dict[str, Any]], keys: list[str], style: Style) -> pd.DataFrame:
    columns = [*keys, "runs with steps", "loss spikes", "first-layer grad spikes", "preceded by a grad spike",
               "worst train-acc drop (points)", "diverged", FINAL.label]
    out = []
    for r in records:
        has = r["with_steps"] > 0
        cells = [
            f"{r['with_steps']} of {r['trials']}",
            _counts(r["loss_spikes"]),
            _counts(r["grad_spikes"]),
            f"{r['preceded']} of {r['preceded_of']}" if r["grad_spikes"] else "—",
            number(r["max_acc_drop"] * 100, 1) if has else "—",
            _diverged(r),
        ]
        out.append([*(style.text(str(v)) for v in r["label"]), *(style.text(c) for c in cells),
                    format_cell(r["final"], FINAL, style)])
    return pd.DataFrame(out, columns=columns)


def _numbers(r: Mapping[str, Any], keys: list[str]) -> dict[str, Any]:
    final = r["final"]
    return {
        **dict(zip(keys, r["label"])),
        "trials": r["trials"],
        "with_steps": r["with_steps"],
        "loss_spikes_mean": float(np.mean(r["loss_spikes"])) if r["loss_spikes"] else math.nan,
        "loss_spikes_per_seed": " ".join(str(v) for v in r["loss_spikes"]),
        "grad_spikes_mean": float(np.mean(r["grad_spikes"])) if r["grad_spikes"] else math.nan,
        "preceded": r["preceded"] if r["grad_spikes"] else math.nan,
        "preceded_of": r["preceded_of"] if r["grad_spikes"] else math.nan,
        "max_acc_drop": r["max_acc_drop"] * 100,
        "diverged": r["diverged"],
        "diverged_steps": " ".join(str(s) for s in r["diverged_steps"]),
        "final_val_acc_mean": final["mean"] * 100,
        "final_val_acc_std": final["std"] * 100,
        "final_val_acc_n": final["n"],
        **{o: final[o] for o in OUTCOMES if o != "diverged"},
        "not_run": final["pending"],
    }


def _run_numbers(m: RunStability, row: Mapping[str, Any], keys: list[str], drawn: Mapping[Any, RunStability]) -> dict[str, Any]:
    metrics = m.metrics

    def steps(name: str) -> str:
        return " ".join(str(s) for s in metrics.get(name) or [])

    drop = metrics.get("max_acc_drop")
    return {
        "run_id": m.run_id,
        **{k: _plain(row.get(k)) for k in keys},
        "seed": _plain(m.seed),
        "status": row.get("status"),
        "steps": len(m.series),
        "drawn": any(d is m for d in drawn.values()),
        "loss_spikes": metrics["loss_spikes"],
        "loss_spike_steps": steps("loss_spike_steps"),
        "grad_spikes": metrics.get("grad_spikes"),
        "grad_spike_steps": steps("grad_spike_steps"),
        "preceded_spikes": metrics.get("preceded_spikes"),
        "preceded_spike_steps": steps("preceded_spike_steps"),
        "max_acc_drop": drop * 100 if drop is not None else math.nan,
        "max_acc_drop_step": metrics.get("max_acc_drop_step"),
        "diverged_step": m.diverged_step,
    }


# -- the notes ---------------------------------------------------------------------------


def _figure_note(
    o: Mapping[str, Any], group: str, rows: str | None, panels: list[str], seed_notes: list[str], pooled: list[str],
) -> str:
    layout = f"One line per {group} (colours in order of its value)"
    if panels:
        layout += f", one panel per {', '.join(panels)}"
    if rows:
        layout += f", one row of panels per {rows}"
    seed = f"the run of seed {o['seed']}" if o["seed"] is not None else "the run of the lowest seed with per-step records"
    text = (
        f"{layout}. Each line is one run, {seed}: per-step curves are never averaged over seeds, which would smooth "
        f"the spikes away (the table covers every seed). Line: the trailing mean over {o['smooth']} steps; faint: the "
        "raw per-step values. Strip under a panel: ticks at the steps where loss spikes start (on a gradient-norm figure, "
        "spikes of that gradient norm), one row per line with spikes, in its colour, labelled with its number of spikes; "
        "×: the step where a run diverged (its line ends there); dotted verticals: epoch boundaries."
    )
    if seed_notes:
        text += " " + "; ".join(s[0].upper() + s[1:] for s in seed_notes) + "."
    if pooled:
        text += (
            f" The study also varies {', '.join(pooled)}, which these lines and rows do not split: a line draws the "
            "first such trial by run id, and the table pools them."
        )
    return text


def _pooled(runs: pd.DataFrame, study: Mapping[str, Any], keys: list[str]) -> list[str]:
    """The columns the study varies that take several values among these trials but split
    neither the lines nor the table."""
    return [
        k for k in varied_keys(study)
        if k not in keys and k in runs and len({_plain(v) for v in runs[k]}) > 1
    ]


def _columns_note() -> str:
    return (
        "Columns: runs with steps: trials with per-step records, of all trials of the configuration; loss spikes and "
        "first-layer grad spikes: per trial with records, the mean over seeds with each seed's count in brackets "
        "(seed order); preceded: loss spikes that a first-layer gradient spike preceded, of the loss spikes, summed "
        "over seeds (— where the first layer recorded no gradient, e.g. frozen); worst train-acc drop: the largest, "
        "over seeds, fall of the smoothed training accuracy below its best value so far, in percentage points; "
        "diverged: trials that diverged, of all trials, with the optimizer step; final validation accuracy: mean ± "
        "sample standard deviation (ddof = 1) over the completed trials, with n."
    )


def _method_note(p: StabilityParams) -> str:
    lag = f"{p.min_lag}–{p.max_lag}"
    return (
        f"Method (`bench.trial.spikes`): a loss spike is a run of consecutive steps whose training loss exceeds "
        f"k = {p.k:g} × the running median of the {p.window} steps before it, ignoring the first "
        f"{max(p.warmup, p.window)} steps{_ignored(p)}; first-layer gradient-norm "
        f"spikes are found the same way on the gradient norm of the first layer (e.g. a ViT's patch projection)"
        + (f", with k = {p.grad_k:g}" if p.grad_k is not None else "") + ". A loss "
        f"spike is preceded when a first-layer gradient spike starts {lag} steps before it (the pattern Chen, Xie & He "
        f"2021 report for ViTs). The accuracy drop is measured on the {p.acc_smooth}-step trailing mean of the per-batch "
        "training accuracy. A diverged run is measured on its steps before the divergence step, which the diverged "
        "column reports instead of a spike."
    )


def _ignored(p: StabilityParams) -> str:
    if p.warmup < p.window:
        return f" (the warmup is {p.warmup} steps, but the median needs a full window)"
    return ""


def _without_steps(
    configs: list[tuple[tuple[Any, ...], pd.DataFrame]], measured: Mapping[str, RunStability], keys: list[str],
    *, table: bool = True,
) -> list[str]:
    """The trials without per-step records, per configuration, with their outcomes (and,
    under a table, where they count)."""
    parts = []
    total = 0
    for label, trials in configs:
        missing = trials[~trials["run_id"].isin(list(measured))]
        if missing.empty:
            continue
        total += len(missing)
        counts = missing["status"].fillna("pending").value_counts()
        outcome = ", ".join(f"{n} {'not run' if s == 'pending' else s}" for s, n in counts.items())
        parts.append(f"`{assignment(keys, label)}` ({outcome})")
    if not parts:
        return []
    text = f"No per-step records: {total} trial{'s' if total != 1 else ''}: {'; '.join(parts)}."
    if table:
        text += (
            " They were not run, or ran without `log_steps: true`; they count in the runs-with-steps and diverged "
            "columns and in the final accuracy, not in the spike and accuracy-drop columns."
        )
    return [text]

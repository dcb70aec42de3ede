"""The markdown report of a study. Pure: a study description, a runs DataFrame and a
provenance mapping in; markdown text and named figures out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from bench.report.plots import scaling_plot
from bench.report.tables import aggregate, best_rows, pivot_markdown

METRICS: dict[str, tuple[str, float, bool]] = {
    # name: (label, display scale, higher is better)
    "final_val_acc": ("final validation accuracy (%)", 100.0, True),
    "best_val_acc": ("best validation accuracy (%)", 100.0, True),
    "final_train_acc": ("final training accuracy (%)", 100.0, True),
    "final_val_loss": ("final validation loss", 1.0, False),
    "final_train_loss": ("final training loss", 1.0, False),
    "samples_per_s": ("training throughput (samples/s)", 1.0, True),
    "train_seconds": ("training time (s)", 1.0, False),
}


@dataclass
class Report:
    text: str
    figures: dict[str, Figure] = field(default_factory=dict)


def metric_info(metric: str, report: Mapping[str, Any]) -> tuple[str, float, bool]:
    label, scale, higher = METRICS.get(metric, (metric, 1.0, True))
    return label, scale, bool(report.get("higher_is_better", higher))


def build_report(study: Mapping[str, Any], frame: pd.DataFrame, provenance: Mapping[str, Any]) -> Report:
    spec = study.get("report") or {}
    key = study["name"] if study.get("profile", "default") == "default" else f"{study['name']}@{study['profile']}"
    rows, columns = spec.get("rows", "norm"), spec.get("columns", "batch_size")
    metric = spec.get("metric", "final_val_acc")
    label, scale, higher = metric_info(metric, spec)
    axes = study.get("axes") or {}
    agg = aggregate(frame, rows, columns, metric)
    if study.get("variants"):  # variants are listed in the order the spec gives them
        axes = {**axes, "variant": list(study["variants"])}
    figures: dict[str, Figure] = {}

    out = [f"# {spec.get('title') or key}", ""]
    if study.get("description"):
        out += [str(study["description"]).strip(), ""]
    out += ["## Set-up", "", *_setup_lines(study, frame), ""]

    out += [f"## {label[0].upper() + label[1:]}: {rows} × {columns}", ""]
    out += [
        pivot_markdown(
            agg, rows, columns, row_order=axes.get(rows), column_order=axes.get(columns), higher_is_better=higher, scale=scale
        ),
        "",
        f"Each cell: mean ± sample standard deviation over seeds, n = completed trials; **bold** = best "
        f"{rows} in its column ({'highest' if higher else 'lowest'}). Diverged and failed trials are counted "
        "in their cell, not averaged in.",
        "",
    ]
    out += _reference_lines(spec.get("references") or [], rows, columns)
    highlights = _highlights(agg, rows, columns, higher, scale, axes.get(columns))
    if highlights:
        out += ["**Per column:**", "", *highlights, ""]

    plot = spec.get("plot") or {"x": columns, "group": rows}
    if not agg.empty and agg["n"].sum() > 0:
        name = f"{key.replace('@', '-')}/{metric}-vs-{plot.get('x', columns)}.png"
        x, group = plot.get("x", columns), plot.get("group", rows)
        plot_agg = agg if (x, group) in ((columns, rows), (rows, columns)) else aggregate(frame, group, x, metric)
        figures[name] = scaling_plot(
            plot_agg,
            x,
            group,
            ylabel=label,
            title=f"{key}: {label} vs {x}",
            log_base=plot.get("log_base", 2),
            scale=scale,
            group_order=axes.get(group),
        )
        out += ["## Plot", "", f"![{label} vs {x}]({name})", ""]

    out += ["## Runs", "", *_outcome_lines(frame), ""]
    out += ["---", "", "### Provenance", "", *_provenance_lines(provenance, study)]
    return Report("\n".join(out) + "\n", figures)


def _reference_lines(references: list[Mapping[str, Any]], rows: str, columns: str) -> list[str]:
    """Published numbers a spec carries, set beside the measured table and labelled as
    such: ``{source, values: {row: {column: value}} or {row: value}, note}``."""
    out: list[str] = []
    for ref in references:
        values = ref.get("values") or {}
        out += [f"**Published, not measured here** — {ref.get('source', 'reference')}:", ""]
        cols: list[Any] = []
        for v in values.values():
            for c in v if isinstance(v, Mapping) else []:
                if c not in cols:
                    cols.append(c)
        if cols:
            out += [f"| {rows} \\ {ref.get('columns', columns)} | " + " | ".join(str(c) for c in cols) + " |",
                    "|" + "---|" * (len(cols) + 1)]
            for r, v in values.items():
                out.append(f"| {r} | " + " | ".join(str(v.get(c, "—")) for c in cols) + " |")
        else:
            out += [f"| {rows} | {ref.get('metric', 'value')} |", "|---|---|"]
            out += [f"| {r} | {v} |" for r, v in values.items()]
        if ref.get("note"):
            out += ["", str(ref["note"]).strip()]
        out.append("")
    return out


def _setup_lines(study: Mapping[str, Any], frame: pd.DataFrame) -> list[str]:
    axes = study.get("axes") or {}
    zipped = study.get("zip") or {}
    base = {k: v for k, v in (study.get("base") or {}).items() if k not in axes and k not in zipped and v is not None}
    seeds = study.get("seeds") or [0]
    lines = [f"- Profile: `{study.get('profile', 'default')}`; trials: {len(frame)} "
             f"({_product(axes)} configurations × {len(seeds)} seed{'s' if len(seeds) != 1 else ''})"]
    for axis, values in axes.items():
        lines.append(f"- Axis `{axis}`: {', '.join(str(v) for v in values)}")
    for axis, values in zipped.items():
        lines.append(f"- Zipped `{axis}`: {', '.join(str(v) for v in values)}")
    lines.append(f"- Seeds: {', '.join(str(s) for s in seeds)}")
    if base:
        lines.append("- Fixed: " + ", ".join(f"`{k}={v}`" for k, v in base.items()))
    if "lr_scaling" in base or "lr" in base:
        rule = base.get("lr_scaling", "linear")
        lines.append(
            f"- Learning rate: `lr={base.get('lr', 0.05)}` at batch {base.get('lr_base_batch', 32)}, "
            f"scaled with batch size by the `{rule}` rule (the effective lr of each run is stored with it)"
        )
    return lines


def _product(axes: Mapping[str, list[Any]]) -> int:
    n = 1
    for values in axes.values():
        n *= len(values)
    return n


def _highlights(agg: pd.DataFrame, rows: str, columns: str, higher: bool, scale: float, order: Any) -> list[str]:
    best = best_rows(agg, rows, columns, higher)
    lines = []
    for c in order or sorted(best):
        if c not in best:
            continue
        part = agg[(agg[columns] == c) & (agg["n"] > 0)].sort_values("mean", ascending=not higher)
        first = part.iloc[0]
        text = f"- {columns} = {c}: best `{first[rows]}` {first['mean'] * scale:.1f}"
        if len(part) > 1:
            second = part.iloc[1]
            text += f", then `{second[rows]}` {second['mean'] * scale:.1f} (gap {abs(first['mean'] - second['mean']) * scale:.1f})"
        lines.append(text)
    return lines


def _outcome_lines(frame: pd.DataFrame) -> list[str]:
    if frame.empty:
        return ["No runs recorded."]
    counts = frame["status"].value_counts()
    lines = ["- " + ", ".join(f"{status}: {n}" for status, n in counts.items())]
    if "train_seconds" in frame and frame["train_seconds"].notna().any():
        lines.append(f"- Total training time: {frame['train_seconds'].sum() / 60:.1f} min over {len(frame)} trials")
    failed = frame[frame["status"] == "failed"]
    for _, row in failed.head(5).iterrows():
        lines.append(f"- failed `{row['run_id']}`: {row.get('error') or 'no error text'}")
    return lines


def _provenance_lines(prov: Mapping[str, Any], study: Mapping[str, Any]) -> list[str]:
    lines = [f"- Generated: {prov.get('date')} from the result store ({prov.get('store')}); no training was needed to build it"]
    if prov.get("grid_command"):
        lines.append(f"- Reproduce the runs: `{prov['grid_command']}`")
    if prov.get("report_command"):
        lines.append(f"- Rebuild this report: `{prov['report_command']}`")
    lines.append(f"- Study spec: `{study.get('source', '')}` (hash `{prov.get('spec_hash', '')}`)")
    for key in ("devices", "versions", "hosts"):
        if prov.get(key):
            lines.append(f"- {key.capitalize()}: {prov[key]}")
    return lines

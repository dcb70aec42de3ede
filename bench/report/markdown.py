"""The markdown report of a study. Pure: a study description, the runs, per-epoch and
per-step DataFrames and a provenance mapping in; markdown text, named figures and
exportable tables out.

A report opens with its findings (each published claim the study tests, with its
verdict: :mod:`bench.report.findings`), then the study's set-up (with what its budget
holds equal), then its sections in the spec's order, each built by its kind (:mod:`bench.report.sections`), then the outcome
of every trial and a reproducibility footer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from bench.report.budget import budget_lines
from bench.report.claims import config_keys, evaluate
from bench.report.export import ExportTable
from bench.report.findings import FINDINGS_TABLE, findings_lines, findings_table
from bench.report.kinds import SECTIONS, SectionInput
from bench.report.schema import ReportSpec, SectionSpec, parse_report
from bench.report.sections._common import varied_keys
from bench.store.base import mask_command


@dataclass
class Report:
    text: str
    figures: dict[str, Figure] = field(default_factory=dict)  # path relative to the report → figure
    tables: dict[str, ExportTable] = field(default_factory=dict)  # path stem relative to the report → table


def study_key(study: Mapping[str, Any]) -> str:
    return study["name"] if study.get("profile", "default") == "default" else f"{study['name']}@{study['profile']}"


def build_report(
    study: Mapping[str, Any],
    frame: pd.DataFrame,
    provenance: Mapping[str, Any],
    epochs: pd.DataFrame | None = None,
    *,
    steps: pd.DataFrame | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Report:
    """``frame``: one row per trial (:func:`bench.report.frame.runs_frame`, trials never run
    included as ``pending``); ``epochs``: one row per (run, epoch)
    (:func:`bench.report.frame.metrics_frame`), needed by the per-epoch kinds; ``steps``:
    one row per (run, optimizer step) (:func:`bench.store.steps.steps_frame`), needed by
    the per-step kinds (``stability``); ``overrides``: report settings from the command
    line (``ci``, ``alpha``, ``correction``)."""
    spec = parse_report(study.get("report"), study, overrides=overrides)
    key = study_key(study)
    epochs = epochs if epochs is not None else pd.DataFrame(columns=["run_id", "epoch"])
    steps = steps if steps is not None else pd.DataFrame(columns=["run_id", "step"])
    report = Report("")
    out = [f"# {spec.title or key}", ""]
    if study.get("description"):
        out += [str(study["description"]).strip(), ""]
    prefix = key.replace("@", "-")  # the report's folder
    verdicts = evaluate(spec.claims, frame, alpha=spec.alpha, tune=study.get("tune"))
    out += ["## Findings", "", *findings_lines(verdicts, spec.alpha)]
    if verdicts:
        report.tables[f"{prefix}/{FINDINGS_TABLE}"] = findings_table(verdicts)
        out += [f"Table: [{FINDINGS_TABLE}.csv]({prefix}/{FINDINGS_TABLE}.csv)", ""]
    out += ["## Set-up", "", *_setup_lines(study, frame), *budget_lines(spec.budget, frame), ""]
    for section in spec.sections:
        out += _section(section, study, frame, epochs, steps, prefix, report, provenance)
    out += ["## Runs", "", *_outcome_lines(frame), ""]
    out += ["---", "", "### Provenance", "", *_provenance_lines(provenance, study, spec, frame)]
    report.text = "\n".join(out) + "\n"
    return report


def section_runs(runs: pd.DataFrame, where: Mapping[str, Any] | None) -> pd.DataFrame:
    """The trials a section's ``where`` ({column: [values]}) keeps."""
    for column, values in (where or {}).items():
        runs = runs[runs[column].isin(values)] if column in runs else runs.iloc[0:0]
    return runs


def _section(
    section: SectionSpec, study: Mapping[str, Any], runs: pd.DataFrame, epochs: pd.DataFrame, steps: pd.DataFrame,
    prefix: str, report: Report, provenance: Mapping[str, Any],
) -> list[str]:
    kind = SECTIONS.get(section.kind)
    where = section.options.get("where") or {}
    runs = section_runs(runs, where)
    if kind.per_epoch and not epochs.empty:
        epochs = epochs[epochs["run_id"].isin(runs["run_id"])]
    if kind.per_step and not steps.empty:
        steps = steps[steps["run_id"].isin(runs["run_id"])]
    elif not kind.per_step:
        steps = steps.iloc[0:0]
    heading = [f"## {section.title}", ""]
    if where:
        heading += ["Trials with " + "; ".join(f"{k} ∈ {{{', '.join(str(v) for v in vs)}}}" for k, vs in where.items()) + ".", ""]
    if where and runs.empty:
        return heading + ["_No trial of this study matches the section's `where`._", ""]
    built = kind.build(
        SectionInput(study, runs.reset_index(drop=True), epochs.reset_index(drop=True), section.options, section.title,
                     f"{prefix}/{section.name}", steps=steps.reset_index(drop=True))
    )
    out = heading + [built.text.rstrip("\n"), ""]
    mixed = code_mix(provenance, runs["run_id"])
    if mixed:
        out += [f"_{mixed} (see Provenance)._", ""]
    links = []
    for stem, table in built.tables.items():
        name = stem.rsplit("/", 1)[-1]
        links.append(f"[{name}.csv]({stem}.csv)" + (f" · [{name}.tex]({stem}.tex)" if table.latex is not None else ""))
    if links:
        out += ["Tables: " + " · ".join(links), ""]
    report.figures.update(built.figures)
    report.tables.update(built.tables)
    return out


def _setup_lines(study: Mapping[str, Any], frame: pd.DataFrame) -> list[str]:
    axes = study.get("axes") or {}
    zipped = study.get("zip") or {}
    variants = study.get("variants") or {}
    base = {k: v for k, v in (study.get("base") or {}).items() if k not in axes and k not in zipped and v is not None}
    seeds = study.get("seeds") or [0]
    configurations = _configurations(frame)
    shape = f"{configurations} configuration{'s' if configurations != 1 else ''}"
    if configurations * len(seeds) == len(frame):
        shape += f" × {len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
    lines = [f"- Profile: `{study.get('profile', 'default')}`; trials: {len(frame)} ({shape})"]
    if variants:
        lines.append(f"- Variants: {', '.join(f'`{name}`' for name in variants)}")
    for axis, values in axes.items():
        lines.append(f"- Axis `{axis}`: {', '.join(str(v) for v in values)}")
    for axis, values in zipped.items():
        lines.append(f"- Zipped `{axis}`: {', '.join(str(v) for v in values)}")
    lines.append(f"- Seeds: {', '.join(str(s) for s in seeds)}")
    tune = study.get("tune")
    if tune:
        lines.append(
            f"- Tuned: for each configuration, the `{tune['over']}` with the best mean `{tune['metric']}` over these seeds "
            f"is re-run with seeds {', '.join(str(s) for s in tune['seeds'])} (the DeepOBS protocol)"
        )
        lines += _tuning_lines(study, frame)
    fixed, varying = _fixed_and_varying(base, frame, variants)
    if fixed:
        lines.append("- Fixed: " + ", ".join(f"`{k}={v}`" for k, v in fixed.items()))
    for key, by_variant in varying.items():
        lines.append(f"- `{key}` by variant: " + ", ".join(f"{name} `{value}`" for name, value in by_variant.items()))
    if "lr_scaling" in base or "lr" in base:
        rule = base.get("lr_scaling", "linear")
        lr = f"`lr={base['lr']}`" if "lr" in base else "`lr` as each variant or axis sets it"
        scaling = (
            "not scaled with batch size" if rule == "none"
            else f"at batch {base.get('lr_base_batch', 32)}, scaled with batch size by the `{rule}` rule"
        )
        lines.append(f"- Learning rate: {lr}, {scaling} (the effective lr of each run is stored with it)")
    return lines


def _fixed_and_varying(
    base: Mapping[str, Any], frame: pd.DataFrame, variants: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The base values every trial has (read from the trials' configs, not from the spec:
    a variant may override one), and, per base key some trials differ on, each variant's
    value (several values of one variant are listed together)."""
    fixed: dict[str, Any] = {}
    varying: dict[str, dict[str, Any]] = {}
    for key, value in base.items():
        values = frame[key].dropna() if key in frame else pd.Series(dtype=object)
        values = values.map(_plain) if values.dtype == object else values  # only objects can be lists
        if values.empty or (values == _plain(value)).all():
            fixed[key] = value
            continue
        if "variant" in frame and variants:
            rows = frame[frame[key].notna()]
            varying[key] = {
                str(name): ", ".join(_as_base(v, value) for v in dict.fromkeys(part[key].map(_plain)))
                for name, part in rows.groupby("variant", sort=False)
            }
        else:
            varying[key] = {"trials": ", ".join(_as_base(v, value) for v in dict.fromkeys(values))}
    return fixed, varying


def _as_base(value: Any, base: Any) -> str:
    """A trial's value as text, an integer field as an integer (pandas holds a column of
    integers with a missing value, a variant's null, as floats)."""
    if isinstance(base, int) and not isinstance(base, bool) and isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _plain(value: Any) -> Any:
    """A config value comparable across rows (lists as tuples, floats that are whole kept as
    given)."""
    return tuple(value) if isinstance(value, list) else value


def tuning_choices(study: Mapping[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
    """Per configuration of a tuned study: the value of ``tune.over`` its re-runs use, the
    values its sweep tried, and whether the choice lies at an end of that sweep (where the
    best value may lie beyond it). Empty before any re-run is planned."""
    tune = study.get("tune") or {}
    over, seeds = tune.get("over"), list(tune.get("seeds") or [])
    if not over or frame.empty or over not in frame or "seed" not in frame:
        return pd.DataFrame(columns=["configuration", "chosen", "swept", "edge"])
    keys = [k for k in varied_keys(study) if k in frame and k != over]
    reruns, sweep = frame[frame["seed"].isin(seeds)], frame[~frame["seed"].isin(seeds)]
    rows = []
    for label, part in reruns.groupby(keys, sort=False) if keys else [((), reruns)]:
        label = label if isinstance(label, tuple) else (label,)
        tried = sweep
        for k, v in zip(keys, label):
            tried = tried[tried[k] == v]
        swept = sorted(set(tried[over]))
        chosen = part[over].iloc[0]
        edge = "" if len(swept) < 2 else "lowest" if chosen == swept[0] else "highest" if chosen == swept[-1] else ""
        name = ", ".join(str(v) for v in label) or "the study"
        rows.append({"configuration": name, "chosen": chosen, "swept": swept, "edge": edge})
    return pd.DataFrame(rows, columns=["configuration", "chosen", "swept", "edge"])


def _tuning_lines(study: Mapping[str, Any], frame: pd.DataFrame) -> list[str]:
    choices = tuning_choices(study, frame)
    if choices.empty:
        return []
    over = study["tune"]["over"]
    lines = ["- Chosen `" + over + "`: " + ", ".join(f"{r.configuration} {r.chosen:g}" if isinstance(r.chosen, float)
                                                  else f"{r.configuration} {r.chosen}" for r in choices.itertuples())]
    edges = choices[choices["edge"] != ""]
    if not edges.empty:
        lines.append(
            "- At an end of its sweep (the best value may lie beyond it): "
            + ", ".join(f"{r.configuration} ({r.edge} of {len(r.swept)})" for r in edges.itertuples())
        )
    else:
        lines.append(f"- Every chosen `{over}` lies inside its sweep (neither its lowest nor its highest value)")
    return lines


def _configurations(frame: pd.DataFrame) -> int:
    """Distinct configs among the trials, seeds aside (a variant that pins an axis makes
    fewer than variants × axes)."""
    return len(config_keys(frame.drop(columns="variant", errors="ignore")).drop_duplicates()) if not frame.empty else 0


def _outcome_lines(frame: pd.DataFrame) -> list[str]:
    if frame.empty:
        return ["No runs recorded."]
    outcome = frame["outcome"] if "outcome" in frame else frame["status"]
    counts = outcome.value_counts()
    lines = ["- " + ", ".join(f"{'not run' if status == 'pending' else status}: {n}" for status, n in counts.items())]
    if "collapsed" in counts:
        lines.append(
            "- collapsed: completed at chance accuracy (final validation accuracy within 3 standard errors of "
            "1 / classes on the validation set); counted with its accuracy in every mean"
        )
    if "train_seconds" in frame and frame["train_seconds"].notna().any():
        lines.append(f"- Total training time: {frame['train_seconds'].sum() / 60:.1f} min over {len(frame)} trials")
    failed = frame[frame["status"] == "failed"]
    for _, row in failed.head(5).iterrows():
        lines.append(f"- failed `{row['run_id']}`: {row.get('error') or 'no error text'}")
    diverged = frame[frame["status"] == "diverged"]
    if not diverged.empty and "diverged_step" in diverged:
        steps = pd.to_numeric(diverged["diverged_step"], errors="coerce").dropna()
        if len(steps):
            lines.append(f"- Diverged at optimizer step {int(steps.min())}" + (f" to {int(steps.max())}" if steps.max() != steps.min() else ""))
    return lines


def _provenance_lines(prov: Mapping[str, Any], study: Mapping[str, Any], spec: ReportSpec, frame: pd.DataFrame) -> list[str]:
    lines = [f"- Generated: {prov.get('date')} from the result store ({prov.get('store')}); no training was needed to build it"]
    lines.append(grid_line(prov.get("grid")))
    if prov.get("report_command"):
        lines.append(f"- Rebuild this report: `{mask_command(str(prov['report_command']))}`")
    if prov.get("runs_file"):
        lines.append(
            f"- The runs: [`{prov['runs_file']}`]({prov['runs_file']}) (`bench store import` it, then rebuild as above, "
            "to check this report without training)"
        )
    spec_line = f"- Study spec: `{study.get('source', '')}` (hash `{prov.get('spec_hash', '')}`)"
    if prov.get("grid_spec_hash") and prov.get("grid_spec_hash") != prov.get("spec_hash"):
        spec_line += (
            f"; the grid last ran with spec hash `{prov['grid_spec_hash']}` (the spec changed since, e.g. its report; "
            "the trials are matched by their ids, which depend only on their configs)"
        )
    lines.append(spec_line)
    lines.append(
        f"- Statistics: confidence intervals `{spec.ci}`, α = {spec.alpha:g}, multiple-comparison correction `{spec.correction}`"
        + (f"; {prov['report_libraries']}" if prov.get("report_libraries") else "")
    )
    for key in ("devices", "versions", "hosts"):
        if prov.get(key):
            lines.append(f"- {key.capitalize()}: {prov[key]}")
    if prov.get("revisions"):
        lines.append(f"- Code revisions: {prov['revisions']}")
    mixed = code_mix(prov, frame["run_id"] if "run_id" in frame else [])
    if mixed:
        lines.append(f"- **{mixed}**")
    return lines


def revision(env: Mapping[str, Any]) -> str:
    """A code revision as text (a run's ``env``, or a grid record): its commit, and whether
    the tree had uncommitted changes (``git_dirty``; records from before it was kept say
    nothing of it)."""
    commit = env.get("git_commit")
    if not commit:
        return "no recorded commit"
    dirty = env.get("git_dirty")
    return f"`{commit}`" + (" with uncommitted changes" if dirty else "" if dirty is False else " (changes not recorded)")


def grid_line(grid: Mapping[str, Any] | None) -> str:
    """The footer's line on the grid that made the runs, as it was recorded when it started."""
    if not grid:
        return "- Made by: no grid of this profile and these overrides is recorded with the study (nothing to reproduce them from)"
    if grid.get("legacy"):
        return f"- Made by: the study's last recorded grid command, `{mask_command(str(grid['command']))}` (no revision recorded with it)"
    command = f"`{mask_command(str(grid['command']))}`" if grid.get("command") else "`bench.run_study` (the Python API; no command line)"
    where = f"at commit {revision(grid)}" if grid.get("git_commit") else "outside a git checkout"
    version = f", bench {grid['bench']}" if grid.get("bench") else ""
    return f"- Made by: {command}, started {grid.get('started_at')} {where}{version} (recorded as it started)"


def code_mix(prov: Mapping[str, Any], run_ids: Iterable[str]) -> str | None:
    """A sentence when ``run_ids`` were made by different code, else None.

    Runs that recorded code fingerprints (``prov["run_code"]``: run id → ``{key:
    fingerprint}``) differ when some key (``norm:gn``, ``trial``) has several fingerprints
    among them: the number of versions is the most any key has. Runs without fingerprints
    are told apart by their revision (``prov["run_revision"]``: run id → commit and dirty
    flag, as text), when they recorded one.
    """
    codes: Mapping[str, Mapping[str, str]] = prov.get("run_code") or {}
    revisions: Mapping[str, str] = prov.get("run_revision") or {}
    by_key: dict[str, Counter[str]] = {}
    by_revision: Counter[str] = Counter()
    shared: dict[int, list[Any]] = {}  # runs share their fingerprints' dict: each is counted once, times its runs
    for run_id in run_ids.tolist() if isinstance(run_ids, pd.Series) else run_ids:
        code = codes.get(run_id)
        if code is not None:
            entry = shared.get(id(code))
            if entry is None:
                shared[id(code)] = [code, 1]
            else:
                entry[1] += 1
        elif run_id in revisions:
            by_revision[revisions[run_id]] += 1
    for code, runs in shared.values():
        for key, value in code.items():
            by_key.setdefault(key, Counter())[value] += runs
    parts = [f"`{key}` " + ", ".join(f"`{v}` ({_runs(n)})" for v, n in counts.most_common())
             for key, counts in by_key.items() if len(counts) > 1]
    if parts:
        versions = max(len(counts) for counts in by_key.values())
        return f"Runs made by {versions} code versions: " + "; ".join(parts)
    if len(by_revision) > 1:
        return f"Runs made by {len(by_revision)} code revisions: " + ", ".join(f"{v} ({_runs(n)})" for v, n in by_revision.most_common())
    return None


def _runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")

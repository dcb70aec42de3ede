"""What several section kinds say the same way: the metric with its direction, the
configurations a study varies, and the statements of method printed under tables."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from bench.metrics import Metric, epoch_metric, run_metric
from bench.report.format import number, p_value
from bench.report.frame import CHANCE_METRIC, chance_threshold, with_outcome
from bench.report.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from bench.spec.study import is_sweep
from bench.report.tables import Best


def metric_of(options: Mapping[str, Any], *, per_epoch: bool = False) -> Metric:
    metric = epoch_metric(options["metric"]) if per_epoch else run_metric(options["metric"])
    if options.get("higher_is_better") is not None:
        metric = dataclasses.replace(metric, higher_is_better=bool(options["higher_is_better"]))
    return metric


def varied_keys(study: Mapping[str, Any]) -> list[str]:
    """The columns that tell a study's configurations apart: variant, the keys a variant
    sweeps (a list in a variant: ``meprop: {meprop_sparsity: [0.5, 0.9]}``), axes, zipped lists."""
    keys = ["variant"] if study.get("variants") else []
    for variant in (study.get("variants") or {}).values():
        keys += [k for k, v in (variant or {}).items() if is_sweep(k, v) and k not in keys]
    return keys + [k for k in [*(study.get("axes") or {}), *(study.get("zip") or {})] if k != "seed" and k not in keys]


def assignment(keys: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values))


def code(text: str) -> str:
    return f"`{text}`"


def interval_phrase(ci: str, alpha: float, *, where: str = " in brackets") -> str:
    level = f"{(1 - alpha) * 100:g}%"
    if ci == "t":
        return f"{level} confidence interval of the mean{where} (t-based: mean ± t(1 − α/2, n − 1) · s/√n)"
    if ci == "bootstrap":
        return (
            f"{level} confidence interval of the mean{where} (percentile bootstrap over seeds, "
            f"{BOOTSTRAP_RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}; over few seeds it is too narrow)"
        )
    return ""


def cell_note(ci: str, alpha: float, runs: pd.DataFrame | None = None) -> str:
    """What a cell holds; with ``runs``, what "collapsed" means when some of them did."""
    parts = ["Each cell: mean ± sample standard deviation (ddof = 1) over seeds"]
    if ci != "none":
        parts.append(interval_phrase(ci, alpha))
    text = ", ".join(parts) + ", n = completed trials with a result (no spread with one). "
    text += (
        "Diverged, failed and not-run trials are counted in their cell (“1 of 3 diverged”) and left out of "
        "the mean, the standard deviation and the tests."
    )
    return text + (" " + collapse_note(runs) if runs is not None and collapse_note(runs) else "")


def collapse_note(runs: pd.DataFrame) -> str:
    """The definition of a collapsed run, with this table's thresholds; empty when none collapsed."""
    runs = with_outcome(runs)
    gone = runs[runs["outcome"] == "collapsed"] if "outcome" in runs else runs.iloc[0:0]
    if gone.empty:
        return ""
    limits = []
    for dataset, subset in dict.fromkeys(zip(gone.get("dataset", [None] * len(gone)), gone.get("val_subset", [None] * len(gone)))):
        limit = chance_threshold(dataset, subset if subset == subset else None)
        if limit is not None:
            limits.append(f"≤ {number(limit * 100, 1)}% on {dataset}")
    return (
        f"Collapsed: a completed trial whose {run_metric(CHANCE_METRIC).label} is at chance, at most 1/classes + 3 binomial "
        f"standard errors on the validation images ({'; '.join(limits)}); it is a result, so it stays in the mean, and its "
        "cell counts it (“1 of 3 collapsed”)."
    )


# -- the best of some cells ----------------------------------------------------------------


def best_rule(alpha: float, correction: str, tests: int, what: str) -> str:
    """The legend of a table's "best" mark."""
    text = (
        f"**Bold**: {what}, only where it is separated from the runner-up (the next-best mean) at α = {alpha:g}: a "
        "two-sided t-test over seeds, paired by seed where the two cells share two or more seeds (as the Δ are), "
        "else Welch's unpaired t-test (also where every pair differs by the same amount, which leaves the paired t "
        "undefined)"
    )
    if correction == "holm" and tests:
        text += f", p-values Holm-adjusted over the {tests} such test{'s' if tests != 1 else ''} of this table"
    return text + ". Otherwise it is tied (tested, not separated) or untested; a cell with n = 1 is never marked."


def test_text(best: Best, correction: str = "none") -> str:
    """``paired t-test over 3 seeds, p=0.012``; ``one seed, untested``."""
    test = best.test
    if test is None:
        return "nothing to compare"
    if not test.tested:
        return test.note
    kind = f"paired t-test over {test.pairs} seeds" if test.test == "paired" else "Welch t-test"
    holm = " Holm-adjusted" if correction == "holm" else ""
    return f"{kind},{holm} {p_value(best.p_adjusted)}"


def best_line(best: Best, label: str, metric: Metric, correction: str = "none", what: str = "best") -> str:
    """One column's (or group's) verdict: ``best `gn` 86.0, then `bn` 82.0 (gap 4.0; ...)``,
    ``best: tied between ...``, ``no best: highest mean ...``, ``only `gn` has a result``
    (``what`` names the best: "best configuration")."""
    scale, digits = metric.scale, metric.digits
    first = f"`{best.leader[label]}` {number(best.leader['mean'] * scale, digits)}"
    if best.runner_up is None:
        return f"only {first} has a result"
    second = f"`{best.runner_up[label]}` {number(best.runner_up['mean'] * scale, digits)}"
    why = f"(gap {number(best.gap * scale, digits)}; {test_text(best, correction)})"
    top = "highest" if metric.higher_is_better else "lowest"
    if best.verdict == "best":
        return f"{what} {first}, then {second} {why}"
    if best.verdict == "tied":
        return f"{what}: tied between {first} and {second} {why}"
    return f"no {what}: {top} mean {first}, then {second} {why}"


# -- tuned studies -------------------------------------------------------------------------


def tuned_choices(study: Mapping[str, Any], runs: pd.DataFrame) -> tuple[dict[tuple[Any, ...], Any], list[str], bool]:
    """For a study with a ``tune`` block: (configuration values of ``keys`` → the value of
    ``tune.over`` chosen for it, ``keys``, whether every choice was read from re-runs).

    A configuration whose re-runs (the tune block's seeds) are among ``runs`` is chosen by
    them; else the choice is recomputed from its sweep with the tuning round's own rule
    (:mod:`bench.grid.tuning`: the best mean metric over the sweep's seeds, a diverged or
    failed trial scoring worst), once its sweep has finished: a section restricted to the
    sweep's seed sees no re-runs."""
    from bench.grid.tuning import DONE, score

    tune = study.get("tune") or {}
    over, metric = tune.get("over"), tune.get("metric")
    if not over or runs.empty or over not in runs or "seed" not in runs:
        return {}, [], True
    keys = [k for k in varied_keys(study) if k in runs and k != over]
    rerun_seeds = list(tune.get("seeds") or [])
    sign = 1.0 if tune.get("higher_is_better", True) else -1.0
    again, sweep = runs[runs["seed"].isin(rerun_seeds)], runs[~runs["seed"].isin(rerun_seeds)]
    choices: dict[tuple[Any, ...], Any] = {}
    from_reruns = True
    labels = list(dict.fromkeys(tuple(row) for row in runs[keys].itertuples(index=False))) if keys else [()]
    for label in labels:
        chosen = _matching(again, keys, label)
        if not chosen.empty:
            choices[label] = chosen[over].iloc[0]
            continue
        tried = _matching(sweep, keys, label)
        if tried.empty or not tried["status"].isin(DONE).all():
            continue
        scores: dict[Any, list[float]] = {}
        for row in tried.to_dict("records"):
            doc = {"status": row["status"], "summary": {metric: row.get(metric)}}
            scores.setdefault(row[over], []).append(score(doc, metric, sign))
        best = max(scores, key=lambda v: sum(scores[v]) / len(scores[v]))
        if any(math.isfinite(x) for x in scores[best]):
            choices[label] = best
            from_reruns = False
    return choices, keys, from_reruns


def _matching(runs: pd.DataFrame, keys: Sequence[str], label: tuple[Any, ...]) -> pd.DataFrame:
    for k, v in zip(keys, label):
        missing = v is None or (isinstance(v, float) and math.isnan(v))
        runs = runs[runs[k].isna()] if missing else runs[runs[k] == v]
    return runs


def comparison_note(
    cells: pd.DataFrame, baseline: Mapping[str, Any], keys: Sequence[str], metric: Metric, options: Mapping[str, Any]
) -> str:
    """The statement of the comparison with the baseline, with the numbers of this table."""
    alpha, correction, ci = options["alpha"], options["correction"], options["ci"]
    free = [k for k in keys if k not in baseline]
    where = code(assignment(list(baseline), list(baseline.values())))
    if free:
        where += f" with the same {' and '.join(free)}"
    unit = f" in {metric.delta_unit}" if metric.delta_unit else ""
    compared = cells[(cells["n"] > 0) & ~cells["is_baseline"].astype(bool) & cells["has_baseline"].astype(bool)]
    pairs = sorted(set(compared["pairs"].astype(int)))
    tests = int(compared["p"].notna().sum())
    text = (
        f"Δ: difference from the baseline cell ({where}){unit}, the mean over seeds of cell − baseline, "
        "pairing runs by seed (runs with the same seed start from the same random state and draw the same "
        "example order). "
    )
    if tests:
        span = f"{pairs[0]}" if len(pairs) == 1 else f"{pairs[0]} to {pairs[-1]}"
        text += (
            f"Test: two-sided paired t-test (scipy.stats.ttest_rel) over the seeds both cells completed "
            f"({span} pairs per cell); * marks p < α = {alpha:g}"
        )
        if correction == "holm":
            text += f", p-values Holm-adjusted over the {tests} tests of this table"
        else:
            text += f"; {tests} test{'s' if tests != 1 else ''} in this table, not adjusted for multiple comparisons"
        if ci != "none":
            method = "t-based" if ci == "t" else "percentile bootstrap"
            adjusted = ", each on its own, not adjusted like the p-values" if correction == "holm" else ""
            text += f"; brackets: {(1 - alpha) * 100:g}% interval of the difference ({method}{adjusted})"
        text += ". "
    else:
        text += (
            "No difference here could be tested, as that needs two or more seeds completed by both cells: each Δ "
            "is one paired difference, with no estimate of its noise. "
        )
    text += "With one pair the difference is shown untested; with no seed in common it is not shown."
    if int(cells["pooled_seeds"].sum()):
        text += " A cell holding several trials of one seed is paired on their mean."
    return text


def no_comparison_note(baseline: Mapping[str, Any] | None, keys: Sequence[str]) -> str:
    if not baseline:
        return ""
    return (
        f"No comparison with the baseline {code(assignment(list(baseline), list(baseline.values())))}: "
        f"this table tells its cells apart by {', '.join(keys)} only."
    )


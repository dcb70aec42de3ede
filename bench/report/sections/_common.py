"""What several section kinds say the same way: the metric with its direction, the
configurations a study varies, and the statements of method printed under tables."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from bench.metrics import Metric, epoch_metric, run_metric
from bench.report.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED


def metric_of(options: Mapping[str, Any], *, per_epoch: bool = False) -> Metric:
    metric = epoch_metric(options["metric"]) if per_epoch else run_metric(options["metric"])
    if options.get("higher_is_better") is not None:
        metric = dataclasses.replace(metric, higher_is_better=bool(options["higher_is_better"]))
    return metric


def varied_keys(study: Mapping[str, Any]) -> list[str]:
    """The columns that tell a study's configurations apart: variant, axes, zipped lists."""
    keys = ["variant"] if study.get("variants") else []
    return keys + [k for k in [*(study.get("axes") or {}), *(study.get("zip") or {})] if k != "seed"]


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


def cell_note(ci: str, alpha: float) -> str:
    parts = ["Each cell: mean ± sample standard deviation (ddof = 1) over seeds"]
    if ci != "none":
        parts.append(interval_phrase(ci, alpha))
    text = ", ".join(parts) + ", n = completed trials with a result. "
    return text + (
        "Diverged, failed and not-run trials are counted in their cell (“1 of 3 diverged”) and left out of "
        "the mean, the standard deviation and the tests."
    )


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


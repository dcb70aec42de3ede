"""The statistics of a report: a cell's summary over seeds, its confidence interval, and the
paired comparison of a cell with its baseline. Pure functions of numbers.

- :func:`describe`: mean, sample standard deviation (ddof = 1) and n.
- :func:`interval`: a confidence interval for the mean, t-based (Student's t with n − 1
  degrees of freedom) or a seeded percentile bootstrap; none with fewer than 2 values.
- :func:`paired_difference`: the mean of the per-seed differences cell − baseline over the
  seeds both have, with a two-sided paired t-test (``scipy.stats.ttest_rel``) and an
  interval of the same kind; untested with fewer than 2 pairs.
- :func:`holm`: Holm's step-down adjustment of a family of p-values.
- :func:`separation`: whether one cell differs from another (the best from the runner-up):
  paired by seed where they share two or more seeds, else Welch's unpaired t-test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CI_METHODS = ("none", "t", "bootstrap")
CORRECTIONS = ("none", "holm")
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample standard deviation (ddof = 1); NaN with fewer than 2 values
    n: int


def describe(values: Sequence[float]) -> Summary:
    data = np.asarray(values, dtype=float)
    n = len(data)
    return Summary(
        mean=float(data.mean()) if n else math.nan,
        std=float(data.std(ddof=1)) if n > 1 else math.nan,
        n=n,
    )


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """mean ± t_{(1+level)/2, n−1} · s/√n; (NaN, NaN) with fewer than 2 values."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return math.nan, math.nan
    mean, sem = float(data.mean()), float(data.std(ddof=1)) / math.sqrt(len(data))
    if sem == 0:
        return mean, mean
    low, high = stats.t.interval(level, len(data) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def bootstrap_interval(
    values: Sequence[float], level: float = 0.95, *, seed: int = BOOTSTRAP_SEED, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """Percentile bootstrap of the mean: ``resamples`` resamples with replacement drawn by
    NumPy's PCG64 seeded with ``seed`` (the same inputs give the same interval), the
    (1 − level)/2 and (1 + level)/2 quantiles of their means. (NaN, NaN) with fewer than 2
    values. Over few seeds the percentile interval is too narrow: with n values it can
    never be wider than their range."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return math.nan, math.nan
    rng = np.random.Generator(np.random.PCG64(seed))
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def interval(values: Sequence[float], method: str, level: float = 0.95) -> tuple[float, float]:
    """The interval ``method`` asks for: ``t``, ``bootstrap``, or ``none`` (NaN, NaN)."""
    if method == "t":
        return t_interval(values, level)
    if method == "bootstrap":
        return bootstrap_interval(values, level)
    if method == "none":
        return math.nan, math.nan
    raise ValueError(f"unknown interval method {method!r}; expected one of {CI_METHODS}")


@dataclass(frozen=True)
class PairedDifference:
    """cell − baseline over the seeds both completed."""

    pairs: int  # seeds present in both
    mean: float  # mean of the per-seed differences (NaN without pairs)
    std: float  # their sample standard deviation (NaN with fewer than 2 pairs)
    t: float  # paired t statistic (NaN when untested)
    p: float  # two-sided p-value (NaN when untested)
    low: float  # interval of the mean difference (NaN when not asked for or undefined)
    high: float
    note: str  # why there is no test, when there is none

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p)


def paired_difference(
    cell: Mapping[int, float], baseline: Mapping[int, float], *, ci: str = "none", level: float = 0.95
) -> PairedDifference:
    """Pairs values by seed (the keys), differences cell − baseline, and tests them with a
    two-sided paired t-test. Fewer than 2 pairs: the difference is given, untested. All
    differences equal: the t statistic is undefined, so untested as well."""
    seeds = sorted(set(cell) & set(baseline))
    if not seeds:
        return PairedDifference(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, "no seed in common")
    x = np.array([cell[s] for s in seeds], dtype=float)
    b = np.array([baseline[s] for s in seeds], dtype=float)
    d = x - b
    summary = describe(d)
    low, high = interval(d, ci, level)
    if len(d) < 2:
        return PairedDifference(1, summary.mean, math.nan, math.nan, math.nan, low, high, "one pair, untested")
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return PairedDifference(len(d), summary.mean, summary.std, math.nan, math.nan, low, high, "equal differences, untested")
    result = stats.ttest_rel(x, b)
    return PairedDifference(len(d), summary.mean, summary.std, float(result.statistic), float(result.pvalue), low, high, "")


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries are left out of the family and
    stay NaN): sort the m p-values, multiply the k-th smallest by m − k + 1, make the
    sequence non-decreasing, cap at 1. Rejecting where the adjusted p < α controls the
    family-wise error rate at α."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    if not m:
        return out.tolist()
    order = valid[np.argsort(p[valid], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out.tolist()


SEPARATION_TESTS = {
    "paired": "two-sided paired t-test over the seeds both cells completed (scipy.stats.ttest_rel)",
    "welch": "two-sided Welch t-test, unpaired (scipy.stats.ttest_ind, unequal variances)",
}


@dataclass(frozen=True)
class Separation:
    """Whether one cell's values differ from another's: the test used and its p-value."""

    test: str  # "paired", "welch", or "" when untested
    p: float  # two-sided p-value (NaN when untested)
    pairs: int  # seeds both cells completed
    note: str  # why there is no test, when there is none

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p)


def separation(cell: Mapping[int, float], other: Mapping[int, float]) -> Separation:
    """Tests ``cell`` against ``other`` (seed → value): a paired t-test over the seeds both
    have when there are 2 or more, as the differences from a baseline are paired; else (or
    when every pair differs by the same amount, which leaves the paired t undefined), when
    each has 2 or more values, Welch's unpaired t-test; else untested (one seed)."""
    paired = paired_difference(cell, other)
    if paired.pairs >= 2 and paired.tested:
        return Separation("paired", paired.p, paired.pairs, "")
    if len(cell) >= 2 and len(other) >= 2:  # fewer pairs, or every pair differs by the same amount
        x, y = np.array(list(cell.values()), dtype=float), np.array(list(other.values()), dtype=float)
        if np.ptp(x) == 0 and np.ptp(y) == 0:
            return Separation("", math.nan, paired.pairs, "no spread within either cell, untested")
        result = stats.ttest_ind(x, y, equal_var=False)
        return Separation("welch", float(result.pvalue), paired.pairs, "")
    if paired.pairs >= 2:
        return Separation("", math.nan, paired.pairs, paired.note)
    return Separation("", math.nan, paired.pairs, "one seed, untested")

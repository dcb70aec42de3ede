"""The published claims a study tests, and their verdicts from its runs.

A study's report declares them (``report.claims``), each a declarative test over the runs
with the paper it comes from::

    claims:
      - name: gn-beats-bn-at-2
        statement: GroupNorm is more accurate than BatchNorm at 2 images per device
        source: Wu & He 2018, Figure 1
        kind: difference                  # a − b over the seeds both have (paired by seed)
        a: {norm: gn, norm_virtual_batch: 2}
        b: {norm: bn-ghost, norm_virtual_batch: 2}
        expect: higher                    # a's metric is higher than b's ...
        margin: 0                         # ... by more than this (shown units: points; negative:
                                          # no worse than by |margin|, a non-inferiority claim)
      - {name: bn-falls, kind: trend, where: {norm: bn-ghost}, over: norm_virtual_batch,
         expect: increasing, ...}         # the metric rises with the axis (slope per doubling)
      - {name: gn-flat, kind: flat, where: {norm: gn}, over: norm_virtual_batch,
         tolerance: 1.0, reference: 32, ...}   # every level within ±1 point of the reference
      - {name: fewer-spikes, kind: count, a: {...}, b: {...},
         event: {metric: loss_spikes, above: 0}, expect: fewer, ...}   # runs with the event
      - {name: preceded, kind: share, where: {...}, event: {metric: preceded_spikes, above: 0},
         among: {metric: loss_spikes, above: 0}, expect: more, share: 0.5, ...}   # a share of runs

A ``difference`` with ``c`` and ``d`` is an interaction, (a − b) − (c − d) per seed: does
a technique help one setting more than another?

``a`` and ``b`` (and ``where`` at each level of ``over``) name one configuration each; a
``count`` claim pools the runs of every configuration they match. In a tuned study,
``tuned: true`` reads each configuration at its tuned value only.

Each claim gets one verdict:

- **reproduced**: the (1 − α) confidence interval of the effect lies entirely on the
  claimed side of the margin (``difference``, ``trend``; ``share``: the exact
  Clopper–Pearson interval of the share on the claimed side of ``share``); every level's
  interval lies within ± the tolerance (``flat``); the exact test rejects equal rates at
  α in the claimed direction (``count``);
- **contradicted**: the interval lies entirely on the other side (``flat``: some level's
  interval lies entirely outside ± the tolerance; ``count``: significant the other way);
- **inconclusive**: neither, or fewer than :data:`MIN_SEEDS` seeds in a cell the claim
  reads (then never reproduced nor contradicted). An inconclusive verdict carries the
  number of seeds per cell that the observed spread says would be needed: the smallest n
  at which a test at α would reach the decision with power :data:`POWER`, were the
  observed effect and spread the true ones (:func:`seeds_needed`).

Completed runs count with their values (a run that collapsed to chance accuracy did
complete, and counts with its accuracy). A diverged run counts at chance accuracy where the
claim reads an accuracy of the network a run ends with
(:data:`bench.report.frame.AT_CHANCE_WHEN_DIVERGED`): a technique whose training diverges
in one seed of three is not judged on the other two alone. On any other metric, and where
the dataset's classes are not known, diverged runs have no value and stay out; failed runs
always do. The verdict counts the diverged runs it read at chance. Each claim is
tested at α on its own (not adjusted for the number of claims; a study declares few).
Pure: a runs DataFrame in, :class:`Verdict` out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from bench.errors import ConfigError
from bench.metrics import RUN_METRICS, Metric
from bench.report.frame import AT_CHANCE_WHEN_DIVERGED, chance_accuracy, row_groups
from bench.report.stats import paired_difference

MIN_SEEDS = 3  # no verdict but "inconclusive" on fewer seeds per cell
POWER = 0.8  # the power at which seeds_needed plans
MAX_SEEDS = 1000  # seeds_needed says "more than this" beyond it
KINDS = ("difference", "trend", "flat", "count", "share")
VERDICTS = ("reproduced", "contradicted", "inconclusive")
DIRECTIONS = {
    "difference": ("higher", "lower"), "trend": ("increasing", "decreasing"), "count": ("fewer", "more"),
    "share": ("more", "fewer"),
}
SCALES = ("log2", "linear")

#: Keys every claim takes, then each kind's own (required ones first).
COMMON_KEYS = ("name", "statement", "source", "kind", "metric", "note")
KIND_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "difference": (("a", "b", "expect"), ("c", "d", "margin", "tuned")),
    "trend": (("where", "over", "expect"), ("scale", "margin")),
    "flat": (("where", "over", "tolerance"), ("reference",)),
    "count": (("a", "b", "event", "expect"), ()),
    "share": (("where", "event", "expect", "share"), ("among",)),
}
EVENT_KEYS = ("metric", "above", "below", "outcome")


@dataclass(frozen=True)
class Claim:
    name: str
    statement: str
    source: str
    kind: str
    metric: str
    options: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    verdict: str  # reproduced | contradicted | inconclusive
    effect: float  # in shown units, oriented as the claim reads (NaN when there is none)
    low: float  # the effect's (1 − α) interval
    high: float
    p: float  # the test's two-sided p-value (NaN when untested)
    n: int  # seeds per cell (the fewest among the cells the claim reads)
    test: str  # the test, in words
    effect_text: str  # what the effect is, in words with its unit
    seeds_needed: int | None = None  # when inconclusive: seeds per cell for a decision (None: not estimable)
    reason: str = ""  # why inconclusive, or what decided
    at_chance: int = 0  # diverged runs the test read at chance accuracy


# -- parsing --------------------------------------------------------------------------------


def parse_claims(raw: Any, checker: Any, default_metric: str) -> tuple[Claim, ...]:
    """``report.claims`` validated: known kinds and keys, columns and values the study has
    (``checker``: :class:`bench.report.schema._Checker`), a source for every claim, unique
    names. Every mistake is a :class:`ConfigError` naming the claim."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
        raise ConfigError(
            "report.claims must be a list of claims, each a mapping with name, statement, source, kind "
            f"({', '.join(KINDS)}) and that kind's keys; got {raw!r}."
        )
    claims: list[Claim] = []
    for i, doc in enumerate(raw, 1):
        claim = _claim(i, dict(doc), checker, default_metric)
        if any(c.name == claim.name for c in claims):
            raise ConfigError(f"report.claims: two claims are named {claim.name!r}; give each its own name.")
        claims.append(claim)
    return tuple(claims)


def _claim(index: int, doc: dict[str, Any], checker: Any, default_metric: str) -> Claim:
    where = f"report.claims[{index}]" + (f" ({doc['name']})" if isinstance(doc.get("name"), str) else "")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}: `kind` must be one of {', '.join(KINDS)}; got {kind!r}.")
    required, optional = KIND_KEYS[kind]
    allowed = (*COMMON_KEYS, *required, *optional)
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: a {kind} claim has no key {unknown[0]!r}; its keys are {', '.join(allowed)}.")
    for key in ("name", "statement", "source", *required):
        if doc.get(key) in (None, ""):
            what = "the paper (and figure or table) the claim comes from" if key == "source" else f"its `{key}`"
            raise ConfigError(f"{where} needs `{key}`: {what}.")
    for key in ("name", "statement", "source", "note"):
        if key in doc and not isinstance(doc[key], str):
            raise ConfigError(f"{where}: `{key}` must be text; got {doc[key]!r}.")
    metric = doc.get("metric", default_metric)
    if metric not in RUN_METRICS:
        raise ConfigError(f"{where}: `metric` must be a run metric: {', '.join(RUN_METRICS)}; got {metric!r}.")
    options: dict[str, Any] = {}
    if ("c" in doc) != ("d" in doc):
        raise ConfigError(f"{where}: `c` and `d` come together: the claim is then (a − b) − (c − d).")
    for key in ("a", "b", "c", "d", "where"):
        if key in doc:
            options[key] = checker.mapping(where, key, doc[key], many=True)
            for column, values in options[key].items():
                # a value this study lacks (a typo, or a profile or --set that leaves it out) is not an
                # error here, so that a smaller profile still runs: its verdict then says what is missing
                known = checker.known_values(column)
                absent = [v for v in values if known is not None and v not in known]
                if absent:
                    options.setdefault("absent", []).append(f"{column}={absent[0]!r}")
    if kind in DIRECTIONS and doc["expect"] not in DIRECTIONS[kind]:
        raise ConfigError(f"{where}: `expect` must be {' or '.join(DIRECTIONS[kind])}; got {doc['expect']!r}.")
    if "expect" in doc:
        options["expect"] = doc["expect"]
    for key in ("margin", "tolerance"):
        if key in doc:
            value = doc[key]
            signed = key == "margin" and kind == "difference"  # a negative margin: "no worse than by |margin|"
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (value < 0 and not signed):
                kinds = "a finite number (negative: a non-inferiority claim)" if signed else "a non-negative number"
                raise ConfigError(f"{where}: `{key}` is {kinds} in the metric's shown units; got {value!r}.")
            options[key] = float(value)
    if kind == "flat" and options["tolerance"] <= 0:
        raise ConfigError(f"{where}: `tolerance` must be > 0 (how far from the reference level counts as flat).")
    if "over" in doc:
        options["over"] = checker.key(where, "over", doc["over"])
        known = checker.known_values(options["over"])
        if "reference" in doc and known is not None and doc["reference"] not in known:
            raise ConfigError(
                f"{where}: `reference` is {doc['reference']!r}, which no trial has; {options['over']} takes "
                f"{', '.join(repr(v) for v in known)}."
            )
        if "reference" in doc:
            options["reference"] = doc["reference"]
    if kind == "trend":
        scale = doc.get("scale", "log2")
        if scale not in SCALES:
            raise ConfigError(f"{where}: `scale` must be {' or '.join(SCALES)} (of the axis in the regression); got {scale!r}.")
        options["scale"] = scale
    if kind in ("count", "share"):
        options["event"] = _event(where, doc["event"])
    if "among" in doc:
        options["among"] = _event(where, doc["among"])
    if kind == "share":
        value = doc["share"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ConfigError(f"{where}: `share` is a fraction of runs strictly between 0 and 1, such as 0.5; got {value!r}.")
        options["share"] = float(value)
    if "tuned" in doc:
        if not isinstance(doc["tuned"], bool):
            raise ConfigError(f"{where}: `tuned` is true or false; got {doc['tuned']!r}.")
        if doc["tuned"] and not checker.tuned:
            raise ConfigError(f"{where}: `tuned: true` reads each configuration at its tuned value, but the study has no `tune`.")
        options["tuned"] = doc["tuned"]
    return Claim(str(doc["name"]), doc["statement"], doc["source"], kind, metric, options, doc.get("note", ""))


def _event(where: str, event: Any) -> dict[str, Any]:
    if not isinstance(event, dict) or set(event) - set(EVENT_KEYS) or not event:
        raise ConfigError(
            f"{where}: `event` says which runs count: {{metric: loss_spikes, above: 0}}, {{metric: ..., below: x}} or "
            f"{{outcome: [diverged, collapsed]}}; got {event!r}."
        )
    if "outcome" in event:
        outcomes = event["outcome"] if isinstance(event["outcome"], list) else [event["outcome"]]
        if set(event) != {"outcome"} or not outcomes:
            raise ConfigError(f"{where}: an `event` with `outcome` takes nothing else; got {event!r}.")
        return {"outcome": [str(o) for o in outcomes]}
    bounds = [k for k in ("above", "below") if k in event]
    if event.get("metric") not in RUN_METRICS or len(bounds) != 1 or isinstance(event[bounds[0]], bool) \
            or not isinstance(event[bounds[0]], (int, float)):
        raise ConfigError(f"{where}: `event` needs a run metric and one number, `above` or `below` (stored units); got {event!r}.")
    return {"metric": event["metric"], bounds[0]: float(event[bounds[0]])}


# -- evaluation -----------------------------------------------------------------------------


def evaluate(
    claims: Sequence[Claim], runs: pd.DataFrame, *, alpha: float = 0.05, tune: Mapping[str, Any] | None = None
) -> list[Verdict]:
    """The verdict of each claim over ``runs`` (one row per trial: status, seed, config
    columns, ``variant`` when the study has variants, and the run metrics). ``tune``: the
    study's tuning block; a claim with ``tuned: true`` reads only the tuned configurations
    (:func:`tuned_runs`). A claim naming a value the study lacks is inconclusive, and says so."""
    tuned = tuned_runs(runs, tune) if tune else runs.iloc[0:0]
    out = []
    for claim in claims:
        if claim.options.get("absent"):
            missing = ", ".join(claim.options["absent"])
            out.append(Verdict(claim, "inconclusive", math.nan, math.nan, math.nan, math.nan, 0, "not tested",
                               f"no trial of this study has {missing}", None,
                               f"no trial of this study (this profile, these --set values) has {missing}"))
            continue
        out.append(EVALUATORS[claim.kind](claim, tuned if claim.options.get("tuned") else runs, alpha))
    return out


def tuned_runs(runs: pd.DataFrame, tune: Mapping[str, Any]) -> pd.DataFrame:
    """The runs of the configurations a tuned study re-ran (those with a run at one of
    ``tune.seeds``), every seed of them: each configuration at its chosen value."""
    seeds = list(tune.get("seeds") or [])
    if runs.empty or not seeds:
        return runs.iloc[0:0]
    keys = config_keys(runs)
    chosen = set(keys[runs["seed"].isin(seeds)])
    return runs[keys.isin(chosen)]


def _select(
    runs: pd.DataFrame, selector: Mapping[str, Sequence[Any]], claim: Claim, key: str, *, single: bool = True
) -> pd.DataFrame:
    for column, values in selector.items():
        runs = runs[runs[column].isin(list(values))] if column in runs else runs.iloc[0:0]
    configs = _configurations(runs) if single else 1
    if configs > 1:
        raise ConfigError(
            f"report.claims ({claim.name}): `{key}` {dict(selector)} matches {configs} configurations; it must name "
            "one (add the columns that tell them apart)."
        )
    return runs


def _configurations(runs: pd.DataFrame) -> int:
    """Distinct configurations among ``runs``, seeds aside. A field a run does not have
    (stored before the field existed) holds its default, as the trial id counts it."""
    if runs.empty:
        return 0
    return len(config_keys(runs).drop_duplicates())


def config_keys(runs: pd.DataFrame) -> pd.Series:
    """One text key per run naming its configuration (every config field but the seed, and
    the variant), missing fields read as their defaults."""
    from bench.spec import CONFIG_FIELDS

    columns = [c for c in (*CONFIG_FIELDS, "variant") if c in runs and c != "seed"]
    if not columns:
        return pd.Series([""] * len(runs), index=runs.index)
    defaults = [CONFIG_FIELDS[column].default if column in CONFIG_FIELDS else None for column in columns]
    if runs.empty:
        parts = [runs[column].map(lambda v, d=default: _key(v, d)) for column, default in zip(columns, defaults)]
        return pd.concat(parts, axis=1).agg("\x1f".join, axis=1)
    # per configuration, not per run: a row-wise join took minutes at 100,000 runs of 150 columns
    groups, first, varies = row_groups([runs[column] for column in columns])
    firsts = runs.take(first)
    parts = [firsts[column].map(lambda v, d=default: _key(v, d)).tolist() if varying
             else [_key(firsts[column].tolist()[0], default)] * len(first)  # one value: its key once
             for column, default, varying in zip(columns, defaults, varies)]
    keys = np.array(["\x1f".join(texts) for texts in zip(*parts)], dtype=object)
    return pd.Series(keys[groups], index=runs.index)


def _key(value: Any, default: Any) -> str:
    """A config value as key text: missing (None, NaN) as its default, and a whole float as
    its integer (a column with missing values holds 16 as 16.0)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return repr(value)


@dataclass(frozen=True)
class _Values:
    """One configuration's values: seed → the metric in shown units; ``at_chance``: the
    seeds whose run diverged and reads at chance accuracy."""

    by_seed: dict[int, float]
    at_chance: frozenset[int] = frozenset()


def _values(runs: pd.DataFrame, metric: Metric) -> _Values:
    """The completed runs' values, and the diverged runs' at chance where ``metric`` is an
    accuracy of the final network and the dataset's classes are known."""
    done = runs[runs["status"] == "completed"]
    out: dict[int, float] = {}
    if metric.name in done:
        values = pd.to_numeric(done[metric.name], errors="coerce") * metric.scale
        out = {int(s): float(v) for s, v in zip(done["seed"], values) if not math.isnan(v)}
    chance: set[int] = set()
    if metric.name in AT_CHANCE_WHEN_DIVERGED:
        lost = runs[runs["status"] == "diverged"]
        datasets = lost["dataset"] if "dataset" in lost else pd.Series([None] * len(lost), index=lost.index)
        for seed, dataset in zip(lost["seed"], datasets):
            accuracy = chance_accuracy(dataset)
            if accuracy is not None:
                out[int(seed)] = accuracy * metric.scale
                chance.add(int(seed))
    return _Values(out, frozenset(chance))


def _unit(metric: Metric) -> str:
    return metric.delta_unit or metric.unit or "units"


def _interval_verdict(effect: float, low: float, high: float, margin: float, n: int) -> tuple[str, str]:
    if n < MIN_SEEDS:
        return "inconclusive", f"fewer than {MIN_SEEDS} seeds"
    if low > margin:
        return "reproduced", "interval above the margin" if margin else "interval above 0"
    if high < margin:
        return "contradicted", "interval below the margin" if margin else "interval below 0"
    return "inconclusive", "interval contains the margin" if margin else "interval contains 0"


def _difference(claim: Claim, runs: pd.DataFrame, alpha: float) -> Verdict:
    metric = RUN_METRICS[claim.metric]
    sign = 1.0 if claim.options["expect"] == "higher" else -1.0
    margin = claim.options.get("margin", 0.0)
    cells = [_values(_select(runs, claim.options[key], claim, key), metric)
             for key in ("a", "b", "c", "d") if key in claim.options]
    seeds = sorted(set.intersection(*(set(cell.by_seed) for cell in cells)))
    a, b = cells[0].by_seed, cells[1].by_seed
    d = np.array([sign * (a[s] - b[s]) for s in seeds])
    interaction = "c" in claim.options
    if interaction:  # (a − b) − (c − d): does the difference differ between two settings?
        c, dd = cells[2].by_seed, cells[3].by_seed
        d = np.array([sign * ((a[s] - b[s]) - (c[s] - dd[s])) for s in seeds])
    at_chance = sum(len(cell.at_chance & set(seeds)) for cell in cells)
    # the per-seed excess over the margin, tested against zero: H0 is "difference = margin"
    test = paired_difference(dict(zip(seeds, d - margin)), dict.fromkeys(seeds, 0.0), ci="t", level=1 - alpha)
    n, sd, p = test.pairs, test.std, test.p
    effect, low, high = test.mean + margin, test.low + margin, test.high + margin
    verdict, reason = _interval_verdict(effect, low, high, margin, n)
    needed = None
    if verdict == "inconclusive" and n > 1:
        needed = seeds_needed(abs(effect - margin), sd, alpha, lambda k: k - 1, lambda k: math.sqrt(k))
    word = "higher" if sign > 0 else "lower"
    return Verdict(
        claim, verdict, effect, low, high, p, n,
        f"paired t-test over {n} seeds, H0: difference = {margin:g}",
        (f"({_contrast(claim.options['a'], claim.options['b'])}) − ({_contrast(claim.options['c'], claim.options['d'])})"
         if interaction else _contrast(claim.options["a"], claim.options["b"]))
        + ("" if sign > 0 else " (sign reversed: lower is the claim)") + f", {_unit(metric)}; "
        + (f"claimed {word} by > {margin:g}" if margin >= 0 else f"claimed at most {-margin:g} {'lower' if sign > 0 else 'higher'}"),
        needed, reason, at_chance,
    )


def _contrast(a: Mapping[str, Sequence[Any]], b: Mapping[str, Sequence[Any]]) -> str:
    """``lars − sgd-momentum at batch_size=1024``: what differs, then what both share."""
    shared = {k: v for k, v in a.items() if b.get(k) == v}
    left = {k: v for k, v in a.items() if k not in shared}
    right = {k: v for k, v in b.items() if k not in shared}
    text = f"{_describe(left, bare=True)} − {_describe(right, bare=True)}"
    return text + (f" at {_describe(shared)}" if shared else "")


def _t_p(estimate: float, se: float, df: int) -> float:
    if not se or math.isnan(se):
        return math.nan
    return float(2 * stats.t.sf(abs(estimate / se), df))


def _levels(claim: Claim, runs: pd.DataFrame, metric: Metric) -> dict[Any, _Values]:
    """Level of the ``over`` axis → its values (seed → value), within the claim's ``where``."""
    over = claim.options["over"]
    part = runs
    for column, values in claim.options["where"].items():
        part = part[part[column].isin(list(values))] if column in part else part.iloc[0:0]
    out: dict[Any, _Values] = {}
    if over not in part:
        return out
    for level, group in part.groupby(over, sort=True):
        if _configurations(group) > 1:
            raise ConfigError(
                f"report.claims ({claim.name}): `where` {dict(claim.options['where'])} at {over}={level!r} matches "
                f"{_configurations(group)} configurations; it must leave one per level of {over}."
            )
        out[level] = _values(group, metric)
    return out


def _trend(claim: Claim, runs: pd.DataFrame, alpha: float) -> Verdict:
    metric = RUN_METRICS[claim.metric]
    sign = 1.0 if claim.options["expect"] == "increasing" else -1.0
    margin = claim.options.get("margin", 0.0)
    log = claim.options.get("scale", "log2") == "log2"
    levels = _levels(claim, runs, metric)
    xs, ys = [], []
    for level, values in levels.items():
        x = float(level)
        if log and x <= 0:
            raise ConfigError(f"report.claims ({claim.name}): {claim.options['over']}={level} cannot be on a log₂ scale; use scale: linear.")
        for value in values.by_seed.values():
            xs.append(math.log2(x) if log else x)
            ys.append(value)
    n = min((len(v.by_seed) for v in levels.values()), default=0)
    at_chance = sum(len(v.at_chance) for v in levels.values())
    unit = f"{_unit(metric)} per {'doubling of' if log else 'unit of'} {claim.options['over']}"
    test = f"least-squares slope over {len(ys)} runs at {len(levels)} levels, t-test (n − 2 df)"
    if len(levels) < 3 or len(ys) < 4:
        return Verdict(claim, "inconclusive", math.nan, math.nan, math.nan, math.nan, n, test, unit, None,
                       "fewer than 3 levels with results")
    x, y = np.array(xs), np.array(ys)
    fit = stats.linregress(x, y)
    slope, se, df = sign * float(fit.slope), float(fit.stderr), len(y) - 2
    half = stats.t.ppf(1 - alpha / 2, df) * se
    low, high = slope - half, slope + half
    verdict, reason = _interval_verdict(slope, low, high, margin, n)
    means = [np.mean(list(v.by_seed.values())) for _, v in sorted(levels.items(), key=lambda kv: float(kv[0])) if v.by_seed]
    against = sum(1 for u, w in zip(means, means[1:]) if sign * (w - u) < 0)
    reason += f"; {against} of {len(means) - 1} steps between neighbouring levels go against the trend"
    needed = None
    if verdict == "inconclusive" and n > 1 and se > 0:
        residual = math.sqrt(float(np.sum((y - (fit.intercept + fit.slope * x)) ** 2)) / df)
        sxx_one = float(np.sum((np.array(sorted({*xs})) - np.mean(sorted({*xs}))) ** 2))  # one seed per level
        levels_n = len(levels)
        needed = seeds_needed(abs(slope - margin), residual, alpha, lambda k: k * levels_n - 2, lambda k: math.sqrt(k * sxx_one))
    return Verdict(claim, verdict, slope, low, high, _t_p(slope - margin, se, df), n, test,
                   unit + ("" if sign > 0 else " (sign reversed: decreasing is the claim)"), needed, reason, at_chance)


def _flat(claim: Claim, runs: pd.DataFrame, alpha: float) -> Verdict:
    metric = RUN_METRICS[claim.metric]
    tolerance = claim.options["tolerance"]
    levels = _levels(claim, runs, metric)
    over = claim.options["over"]
    ordered = sorted(levels, key=lambda v: (float(v) if isinstance(v, (int, float)) else math.inf, str(v)))
    reference = claim.options.get("reference", ordered[-1] if ordered else None)
    test = f"paired t-intervals of each level − {over}={reference} (1 − α each, not adjusted)"
    unit = f"largest deviation of a level from {over}={reference}, {_unit(metric)}; claimed within ±{tolerance:g}"
    if reference not in levels or len(levels) < 2:
        return Verdict(claim, "inconclusive", math.nan, math.nan, math.nan, math.nan, 0, test, unit, None,
                       f"no results at {over}={reference}" if reference not in levels else "one level only")
    ref = levels[reference].by_seed
    rows = []
    read: set[tuple[Any, int]] = set()  # (level, seed) of the runs the intervals pair
    for level in ordered:
        if level == reference:
            continue
        diff = paired_difference(levels[level].by_seed, ref, ci="t", level=1 - alpha)
        rows.append((level, diff.pairs, diff.mean, diff.std, diff.low, diff.high))
        paired = set(levels[level].by_seed) & set(ref)
        read |= {(level, s) for s in paired} | {(reference, s) for s in paired}
    at_chance = sum(1 for level, seed in read if seed in levels[level].at_chance)
    n = min(r[1] for r in rows)
    worst = max(rows, key=lambda r: abs(r[2]) if not math.isnan(r[2]) else -1)
    outside = [r for r in rows if r[4] > tolerance or r[5] < -tolerance]
    inside = [r for r in rows if r[4] > -tolerance and r[5] < tolerance]
    if n < MIN_SEEDS:
        verdict, reason = "inconclusive", f"fewer than {MIN_SEEDS} seeds"
    elif outside:
        verdict, reason = "contradicted", "interval outside the tolerance at " + ", ".join(f"{over}={r[0]}" for r in outside)
    elif len(inside) == len(rows):
        verdict, reason = "reproduced", "every level's interval within the tolerance"
    else:
        verdict, reason = "inconclusive", "interval crosses the tolerance at " + ", ".join(
            f"{over}={r[0]}" for r in rows if r not in inside)
    needed = None
    if verdict == "inconclusive" and n > 1:
        open_rows = [r for r in rows if r not in inside and r[1] > 1]
        estimates = [seeds_needed(abs(tolerance - abs(r[2])), r[3], alpha, lambda k: k - 1, lambda k: math.sqrt(k))
                     for r in open_rows]
        needed = None if any(e is None for e in estimates) or not estimates else max(estimates)
    low, high = worst[4], worst[5]
    if worst[2] < 0:
        low, high = -high, -low
    p = math.nan
    return Verdict(claim, verdict, abs(worst[2]), low, high, p, n, test,
                   unit + f" (at {over}={worst[0]}, where level − reference is {worst[2]:+.{metric.digits}f})", needed, reason,
                   at_chance)


def _count(claim: Claim, runs: pd.DataFrame, alpha: float) -> Verdict:
    a_runs = _select(runs, claim.options["a"], claim, "a", single=False)  # runs pooled over the configurations
    b_runs = _select(runs, claim.options["b"], claim, "b", single=False)
    event = claim.options["event"]
    ka, na = _events(a_runs, event)
    kb, nb = _events(b_runs, event)
    fewer = claim.options["expect"] == "fewer"
    n = min(_seeds_per_configuration(a_runs), _seeds_per_configuration(b_runs))
    test = f"Fisher's exact test, {ka}/{na} vs {kb}/{nb} runs"
    what = _event_text(event)
    unit = f"share of runs with {what}, {_contrast(claim.options['a'], claim.options['b'])} (points)"
    if not na or not nb:
        return Verdict(claim, "inconclusive", math.nan, math.nan, math.nan, math.nan, n, test, unit, None, "no runs")
    effect = 100.0 * (ka / na - kb / nb)
    p = float(stats.fisher_exact([[ka, na - ka], [kb, nb - kb]]).pvalue)
    claimed_side = effect < 0 if fewer else effect > 0
    if n < MIN_SEEDS:
        verdict, reason = "inconclusive", f"fewer than {MIN_SEEDS} seeds per configuration"
    elif p < alpha:
        verdict, reason = ("reproduced", "significant in the claimed direction") if claimed_side else (
            "contradicted", "significant in the other direction")
    else:
        verdict, reason = "inconclusive", "no significant difference" if ka != kb or ka else "no such run in either"
    needed = None
    if verdict == "inconclusive":
        runs_needed = _count_seeds(ka / na, kb / nb, alpha)  # per group, spread over its configurations
        configs = min(_configurations(a_runs), _configurations(b_runs)) or 1
        needed = None if runs_needed is None else max(MIN_SEEDS, math.ceil(runs_needed / configs))
    return Verdict(claim, verdict, effect, math.nan, math.nan, p, n, test, unit, needed, reason)


def _seeds_per_configuration(runs: pd.DataFrame) -> int:
    """The fewest finished runs (completed or diverged) of any configuration among ``runs``:
    a pooled claim is decided only where every configuration it pools has enough seeds."""
    finished = runs[runs["status"].isin(["completed", "diverged"])]
    if finished.empty:
        return 0
    counts = config_keys(finished).value_counts()
    every = config_keys(runs).unique()
    return int(min(counts.get(key, 0) for key in every))


def _share(claim: Claim, runs: pd.DataFrame, alpha: float) -> Verdict:
    part = _select(runs, claim.options["where"], claim, "where", single=False)
    among = claim.options.get("among")
    if among is not None:
        part = part[_has_event(part, among)]
    k, n = _events(part, claim.options["event"])
    cell_n = _seeds_per_configuration(_select(runs, claim.options["where"], claim, "where", single=False))
    share, more = claim.options["share"], claim.options["expect"] == "more"
    what = _event_text(claim.options["event"]) + (f" among runs with {_event_text(among)}" if among else "")
    unit = f"share of runs with {what} (%); claimed {'above' if more else 'below'} {100 * share:g}%"
    test = f"exact binomial test, {k}/{n} runs, H0: share = {share:g}"
    if not n:
        return Verdict(claim, "inconclusive", math.nan, math.nan, math.nan, math.nan, 0, test, unit, None, "no such run")
    result = stats.binomtest(k, n, share)
    ci = result.proportion_ci(confidence_level=1 - alpha, method="exact")
    low, high, effect = 100 * ci.low, 100 * ci.high, 100 * k / n
    if cell_n < MIN_SEEDS:
        verdict, reason = "inconclusive", f"fewer than {MIN_SEEDS} seeds per configuration"
    elif n < MIN_SEEDS:
        verdict, reason = "inconclusive", f"fewer than {MIN_SEEDS} runs"
    elif (low > 100 * share) if more else (high < 100 * share):
        verdict, reason = "reproduced", "interval on the claimed side"
    elif (high < 100 * share) if more else (low > 100 * share):
        verdict, reason = "contradicted", "interval on the other side"
    else:
        verdict, reason = "inconclusive", "interval contains the claimed share"
    needed = None
    if verdict == "inconclusive" and n and k / n != share:
        needed = next((m for m in range(MIN_SEEDS, MAX_SEEDS + 1)
                       if stats.binomtest(round(k / n * m), m, share).pvalue < alpha), MAX_SEEDS + 1)
    return Verdict(claim, verdict, effect, low, high, float(result.pvalue), min(n, cell_n), test, unit, needed, reason)


def _has_event(runs: pd.DataFrame, event: Mapping[str, Any]) -> pd.Series:
    """Which of ``runs`` have the event (a metric beyond a bound, or one of the outcomes)."""
    if "outcome" in event:
        outcome = runs["outcome"] if "outcome" in runs else runs["status"]
        return outcome.isin(event["outcome"])
    values = pd.to_numeric(runs[event["metric"]], errors="coerce") if event["metric"] in runs else pd.Series(math.nan, index=runs.index)
    return values > event["above"] if "above" in event else values < event["below"]


def _events(runs: pd.DataFrame, event: Mapping[str, Any]) -> tuple[int, int]:
    """(runs with the event, runs that count): for an outcome, the finished runs
    (completed, collapsed, diverged; not failed or never run); for a metric, the completed
    runs that have it."""
    finished = runs[runs["status"].isin(["completed", "diverged"])]
    if "outcome" not in event:
        finished = finished[finished["status"] == "completed"]
        if event["metric"] not in finished:
            return 0, 0
        finished = finished[pd.to_numeric(finished[event["metric"]], errors="coerce").notna()]
    return int(_has_event(finished, event).sum()), len(finished)


def _event_text(event: Mapping[str, Any]) -> str:
    if "outcome" in event:
        return " or ".join(event["outcome"])
    return f"{event['metric']} {'>' if 'above' in event else '<'} {event.get('above', event.get('below')):g}"


def _describe(selector: Mapping[str, Sequence[Any]], *, bare: bool = False) -> str:
    """``variant=lars, batch_size=1024``; ``bare``: a lone key's value only (``lars``)."""
    if bare and len(selector) == 1:
        (values,) = selector.values()
        return str(values[0]) if len(values) == 1 else str(list(values))
    return ", ".join(f"{k}={v[0] if len(v) == 1 else list(v)}" for k, v in selector.items())


EVALUATORS = {"difference": _difference, "trend": _trend, "flat": _flat, "count": _count, "share": _share}


# -- planning ------------------------------------------------------------------------------


def seeds_needed(delta: float, sd: float, alpha: float, df: Any, scale: Any, power: float = POWER) -> int | None:
    """The fewest seeds per cell k at which a two-sided t-test at ``alpha`` rejects the
    margin with probability ``power`` when the true distance from it is ``delta`` and the
    spread ``sd``: the noncentral t with ``df(k)`` degrees of freedom and noncentrality
    δ · ``scale(k)`` / sd (paired differences: df = k − 1, scale = √k). None when the
    effect is zero or the spread unknown (no number of seeds decides it), and
    :data:`MAX_SEEDS` + 1 ("more than") beyond that."""
    if not delta or math.isnan(delta) or math.isnan(sd):
        return None
    if sd == 0:
        return MIN_SEEDS
    for k in range(2, MAX_SEEDS + 1):
        dof = df(k)
        if dof < 1:
            continue
        crit = stats.t.ppf(1 - alpha / 2, dof)
        if float(stats.nct.sf(crit, dof, delta * scale(k) / sd)) >= power:
            return max(k, MIN_SEEDS)
    return MAX_SEEDS + 1


def _count_seeds(rate_a: float, rate_b: float, alpha: float) -> int | None:
    """Runs per cell at which the observed rates, held fixed, would make Fisher's exact test
    significant at ``alpha`` (None when the rates are equal)."""
    if rate_a == rate_b:
        return None
    for k in range(MIN_SEEDS, MAX_SEEDS + 1):
        ka, kb = round(rate_a * k), round(rate_b * k)
        if ka != kb and stats.fisher_exact([[ka, k - ka], [kb, k - kb]]).pvalue < alpha:
            return k
    return MAX_SEEDS + 1

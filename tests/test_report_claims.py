"""Published claims, checked by the report: parsing, each kind's verdict, the seeds rule,
the planning figure, and the Findings section that opens every report."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.errors import ConfigError
from bench.report.claims import MIN_SEEDS, evaluate, seeds_needed
from bench.report.markdown import build_report
from bench.report.schema import parse_report

STUDY = {
    "name": "demo",
    "axes": {"norm": ["bn", "gn"], "batch_size": [2, 4, 8, 16]},
    "base": {"arch": "cnn"},
    "seeds": [0, 1, 2],
}
SOURCE = "Wu & He 2018, Figure 1"


def frame(acc: dict[tuple[str, int], list[float]], status: dict[tuple[str, int, int], str] | None = None) -> pd.DataFrame:
    """One completed run per (norm, batch_size, seed) with the given accuracies (fractions)."""
    rows = []
    for (norm, batch), values in acc.items():
        for seed, value in enumerate(values):
            rows.append({"run_id": f"{norm}-{batch}-{seed}", "norm": norm, "batch_size": batch, "seed": seed,
                         "arch": "cnn", "status": (status or {}).get((norm, batch, seed), "completed"),
                         "final_val_acc": value, "loss_spikes": 0.0})
    return pd.DataFrame(rows)


def claims(*docs: dict) -> tuple:
    return parse_report({"claims": [{"source": SOURCE, "statement": "s", **d} for d in docs]}, STUDY).claims


def verdict(doc: dict, runs: pd.DataFrame, alpha: float = 0.05):
    return evaluate(claims({"name": "c", **doc}), runs, alpha=alpha)[0]


GN_BEATS_BN = {"kind": "difference", "a": {"norm": "gn", "batch_size": 2}, "b": {"norm": "bn", "batch_size": 2}, "expect": "higher"}


def test_a_difference_is_reproduced_contradicted_or_inconclusive_by_its_interval():
    up = frame({("gn", 2): [0.85, 0.86, 0.87], ("bn", 2): [0.80, 0.80, 0.81]})
    v = verdict(GN_BEATS_BN, up)
    d = np.array([5.0, 6.0, 6.0])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert v.verdict == "reproduced" and v.n == 3
    assert v.effect == pytest.approx(d.mean()) and (v.low, v.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert v.p == pytest.approx(stats.ttest_rel([85, 86, 87], [80, 80, 81]).pvalue)
    assert verdict({**GN_BEATS_BN, "expect": "lower"}, up).verdict == "contradicted"
    # a margin larger than the effect: the interval lies below it
    assert verdict({**GN_BEATS_BN, "margin": 10}, up).verdict == "contradicted"
    noisy = frame({("gn", 2): [0.85, 0.80, 0.87], ("bn", 2): [0.80, 0.84, 0.81]})
    v = verdict(GN_BEATS_BN, noisy)
    assert v.verdict == "inconclusive" and v.seeds_needed is not None and v.seeds_needed > 3


def test_fewer_than_three_seeds_never_decide():
    two = frame({("gn", 2): [0.90, 0.91], ("bn", 2): [0.50, 0.51]})
    v = verdict(GN_BEATS_BN, two)
    assert v.verdict == "inconclusive" and v.n == 2 and "fewer than 3 seeds" in v.reason
    # a diverged seed of a dataset whose classes are not known has no value: two pairs, inconclusive too
    three = frame({("gn", 2): [0.90, 0.91, 0.92], ("bn", 2): [0.50, 0.51, 0.52]}, status={("bn", 2, 1): "diverged"})
    assert verdict(GN_BEATS_BN, three).n == 2 and verdict(GN_BEATS_BN, three).verdict == "inconclusive"
    assert MIN_SEEDS == 3


def test_a_diverged_run_counts_at_chance_where_a_claim_reads_the_final_networks_accuracy():
    runs = frame({("gn", 2): [0.85, 0.86, 0.87], ("bn", 2): [0.80, 0.80, 0.81]}, status={("gn", 2, 1): "diverged"})
    runs["dataset"] = "fashion-mnist"  # 10 classes: chance is 10%
    v = verdict(GN_BEATS_BN, runs)
    d = np.array([85.0 - 80.0, 10.0 - 80.0, 87.0 - 81.0])
    assert v.n == 3 and v.at_chance == 1 and v.verdict == "inconclusive"
    assert v.effect == pytest.approx(d.mean()) and v.p == pytest.approx(stats.ttest_rel([85, 10, 87], [80, 80, 81]).pvalue)
    # the baseline diverging counts for the technique, just as the technique diverging counts against it
    flipped = verdict({**GN_BEATS_BN, "a": GN_BEATS_BN["b"], "b": GN_BEATS_BN["a"], "expect": "lower"}, runs)
    assert flipped.effect == pytest.approx(v.effect) and flipped.at_chance == 1
    # a metric that is not an accuracy of the final network leaves the diverged run out
    runs["final_val_loss"] = 0.5
    assert verdict({**GN_BEATS_BN, "metric": "final_val_loss", "expect": "lower"}, runs).n == 2
    # trend and flat claims read a diverged level at chance too
    levels = frame({("bn", b): [0.80, 0.81, 0.80] for b in (2, 4, 8, 16)}, status={("bn", 2, 0): "diverged"})
    levels["dataset"] = "fashion-mnist"
    trend = verdict({"kind": "trend", "where": {"norm": "bn"}, "over": "batch_size", "expect": "increasing"}, levels)
    assert trend.at_chance == 1 and trend.n == 3 and trend.effect > 0
    flat = verdict({"kind": "flat", "where": {"norm": "bn"}, "over": "batch_size", "tolerance": 1.0, "reference": 16}, levels)
    assert flat.at_chance == 1 and flat.verdict == "inconclusive" and flat.effect == pytest.approx(70.0 / 3)
    # the report says so in n, in a sentence under the table, and in the CSV
    study = {**STUDY, "report": {"kind": "pivot", "rows": "norm", "columns": "batch_size", "claims": [
        {"name": "gn-wins", "statement": "GN beats BN at 2", "source": SOURCE, **GN_BEATS_BN}]}}
    report = build_report(study, runs.drop(columns="final_val_loss"), {"date": "d"})
    assert "| 3 (1 diverged, at chance) |" in report.text and "A diverged run counts at chance accuracy" in report.text
    assert report.tables["demo/findings"].numbers["diverged_at_chance"].tolist() == [1]
    clean = build_report(study, frame({("gn", 2): [0.85, 0.86, 0.87], ("bn", 2): [0.80, 0.80, 0.81]}), {"date": "d"})
    assert "A diverged run counts" not in clean.text


def test_a_trend_is_the_least_squares_slope_per_doubling():
    acc = {("bn", b): [0.80 + 0.01 * math.log2(b) + e for e in (0.0, 0.002, -0.002)] for b in (2, 4, 8, 16)}
    runs = frame(acc)
    v = verdict({"kind": "trend", "where": {"norm": "bn"}, "over": "batch_size", "expect": "increasing"}, runs)
    x = np.repeat(np.log2([2, 4, 8, 16]), 3)
    y = np.array([acc[("bn", b)][s] * 100 for b in (2, 4, 8, 16) for s in range(3)])
    fit = stats.linregress(x, y)
    assert v.verdict == "reproduced" and v.effect == pytest.approx(fit.slope) and v.effect == pytest.approx(1.0, abs=1e-9)
    assert "0 of 3 steps" in v.reason
    assert verdict({"kind": "trend", "where": {"norm": "bn"}, "over": "batch_size", "expect": "decreasing"}, runs).verdict == "contradicted"


def test_flat_needs_every_level_within_the_tolerance_of_the_reference():
    flat = {("gn", b): [0.80 + d, 0.81 + d, 0.805 + d] for b, d in ((2, 0.001), (4, -0.002), (8, 0.0), (16, 0.0))}
    claim = {"kind": "flat", "where": {"norm": "gn"}, "over": "batch_size", "tolerance": 1.0, "reference": 16}
    v = verdict(claim, frame(flat))
    assert v.verdict == "reproduced" and v.effect == pytest.approx(0.2) and "batch_size=4" in v.effect_text
    falls = {**flat, ("gn", 2): [0.70, 0.71, 0.705]}
    v = verdict(claim, frame(falls))
    assert v.verdict == "contradicted" and v.effect == pytest.approx(10.0) and "batch_size=2" in v.reason


def test_count_compares_runs_with_an_event_with_fishers_exact_test():
    runs = frame({("gn", 2): [0.8] * 6, ("bn", 2): [0.8] * 6})
    runs.loc[runs["norm"] == "bn", "loss_spikes"] = [3, 1, 2, 4, 1, 2]
    doc = {"kind": "count", "a": {"norm": "gn", "batch_size": 2}, "b": {"norm": "bn", "batch_size": 2},
           "event": {"metric": "loss_spikes", "above": 0}, "expect": "fewer"}
    v = verdict(doc, runs)
    assert v.verdict == "reproduced" and v.p == pytest.approx(stats.fisher_exact([[0, 6], [6, 0]]).pvalue)
    assert v.effect == pytest.approx(-100.0)
    assert verdict({**doc, "expect": "more"}, runs).verdict == "contradicted"


def test_seeds_needed_is_the_smallest_n_with_the_power():
    k = seeds_needed(1.0, 2.0, 0.05, lambda n: n - 1, math.sqrt)
    power = lambda n: stats.nct.sf(stats.t.ppf(0.975, n - 1), n - 1, 1.0 * math.sqrt(n) / 2.0)  # noqa: E731
    assert power(k) >= 0.8 > power(k - 1)
    assert 30 < k < 40  # (z_.975 + z_.8)² · 4 ≈ 31.4, plus the t correction
    assert seeds_needed(0.0, 1.0, 0.05, lambda n: n - 1, math.sqrt) is None


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"kind": "difference", "a": {"norm": "gn"}, "b": {"norm": "bn"}, "expect": "higher", "source": ""}, "needs `source`"),
        ({"kind": "difference", "a": {"norm": "gn"}, "b": {"norm": "bn"}, "expect": "better"}, "higher or lower"),
        ({"kind": "trend", "where": {"norm": "gn"}, "over": "batch_size"}, "needs `expect`"),
        ({"kind": "flat", "where": {"norm": "gn"}, "over": "batch_size", "tolerance": 1, "reference": 3}, "`reference` is 3"),
        ({"kind": "wobble"}, "`kind` must be one of"),
        ({"kind": "difference", "a": {"norm": "gn"}, "b": {"norm": "bn"}, "expect": "higher", "margn": 1}, "no key 'margn'"),
        ({"kind": "count", "a": {"norm": "gn"}, "b": {"norm": "bn"}, "expect": "fewer", "event": {"metric": "nope", "above": 0}}, "`event`"),
    ],
)
def test_claim_mistakes_are_one_clear_error(doc, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("`", ".")):
        parse_report({"claims": [{"name": "c", "statement": "s", "source": SOURCE, **doc}]}, STUDY)


def test_a_selector_that_matches_several_configurations_is_refused_when_evaluated():
    runs = frame({("gn", 2): [0.8] * 3, ("gn", 4): [0.8] * 3, ("bn", 2): [0.8] * 3})
    with pytest.raises(ConfigError, match="matches 2 configurations"):
        verdict({"kind": "difference", "a": {"norm": "gn"}, "b": {"norm": "bn"}, "expect": "higher"}, runs)


def test_every_report_opens_with_findings():
    runs = frame({("gn", 2): [0.85, 0.86, 0.87], ("bn", 2): [0.80, 0.80, 0.81]})
    study = {**STUDY, "report": {"kind": "pivot", "rows": "norm", "columns": "batch_size",
                                 "claims": [{"name": "gn-wins", "statement": "GN beats BN at 2", "source": SOURCE, **GN_BEATS_BN}]}}
    report = build_report(study, runs, {"date": "d"})
    headings = [line for line in report.text.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Findings"
    assert "| GN beats BN at 2 (`gn-wins`) | Wu & He 2018, Figure 1 | **reproduced**" in report.text
    assert "1 published claim tested: 1 reproduced." in report.text
    assert report.tables["demo/findings"].numbers["verdict"].tolist() == ["reproduced"]
    bare = build_report({**STUDY, "report": {"kind": "pivot", "rows": "norm", "columns": "batch_size"}}, runs, {"date": "d"})
    assert [line for line in bare.text.splitlines() if line.startswith("## ")][0] == "## Findings"
    assert "declares no published claim" in bare.text


def test_a_tuned_claim_reads_each_configuration_at_its_tuned_value():
    study = {"name": "sweep", "variants": {"adam": {"optimizer": "adam"}, "adamw": {"optimizer": "adamw"}},
             "axes": {}, "base": {}, "tune": {"over": "lr", "metric": "final_val_acc", "seeds": [1, 2]}}
    rows = []
    for variant, chosen in (("adam", 0.001), ("adamw", 0.003)):
        for lr in (0.001, 0.003):
            rows.append({"variant": variant, "optimizer": variant, "lr": lr, "seed": 0, "status": "completed",
                         "final_val_acc": 0.5 if lr != chosen else 0.8 + (variant == "adamw") * 0.05})
        rows += [{"variant": variant, "optimizer": variant, "lr": chosen, "seed": s, "status": "completed",
                  "final_val_acc": 0.8 + (variant == "adamw") * 0.05 + s * 0.001} for s in (1, 2)]
    runs = pd.DataFrame(rows)
    doc = {"name": "adamw-wins", "statement": "s", "source": SOURCE, "kind": "difference", "tuned": True,
           "a": {"variant": "adamw"}, "b": {"variant": "adam"}, "expect": "higher"}
    (claim,) = parse_report({"claims": [doc]}, study).claims
    (v,) = evaluate([claim], runs, tune=study["tune"])
    assert v.n == 3 and v.effect == pytest.approx(5.0) and v.verdict == "reproduced"
    with pytest.raises(ConfigError, match="has no `tune`"):
        parse_report({"claims": [doc]}, {**study, "tune": {}})


def test_an_interaction_asks_whether_a_difference_differs_between_settings():
    acc = {("gn", 2): [0.85, 0.86, 0.87], ("bn", 2): [0.80, 0.80, 0.81],   # +5.67 points at batch 2
           ("gn", 16): [0.85, 0.85, 0.86], ("bn", 16): [0.85, 0.86, 0.86]}  # −0.33 at batch 16
    doc = {**GN_BEATS_BN, "c": {"norm": "gn", "batch_size": 16}, "d": {"norm": "bn", "batch_size": 16}}
    v = verdict(doc, frame(acc))
    per_seed = [(85 - 80) - (85 - 85), (86 - 80) - (85 - 86), (87 - 81) - (86 - 86)]
    assert v.effect == pytest.approx(np.mean(per_seed)) and v.verdict == "reproduced"
    assert v.effect_text.startswith("(gn − bn at batch_size=2) − (gn − bn at batch_size=16)")
    with pytest.raises(ConfigError, match="come together"):
        claims({"name": "c", **GN_BEATS_BN, "c": {"norm": "gn"}})


def test_a_share_of_runs_is_tested_exactly_against_the_claimed_share():
    runs = frame({("bn", b): [0.8] * 3 for b in (2, 4, 8, 16)})
    runs["loss_spikes"] = [1] * 10 + [0] * 2
    runs["preceded_spikes"] = [1] * 9 + [0] * 3
    doc = {"kind": "share", "where": {"norm": "bn"}, "event": {"metric": "preceded_spikes", "above": 0},
           "among": {"metric": "loss_spikes", "above": 0}, "expect": "more", "share": 0.5}
    v = verdict(doc, runs)
    result = stats.binomtest(9, 10, 0.5)
    assert v.n == 3 and "9/10 runs" in v.test  # n: seeds per configuration pooled
    assert v.effect == pytest.approx(90.0) and v.p == pytest.approx(result.pvalue)
    assert v.low == pytest.approx(100 * result.proportion_ci(0.95, "exact").low) and v.verdict == "reproduced"
    assert verdict({**doc, "expect": "fewer"}, runs).verdict == "contradicted"


def test_a_claim_on_values_the_study_lacks_is_inconclusive_and_says_which():
    """A smaller profile (or --set batch_size=...) still runs; the claim says what is missing."""
    runs = frame({("gn", 2): [0.85, 0.86, 0.87], ("bn", 2): [0.80, 0.80, 0.81]})
    v = verdict({**GN_BEATS_BN, "b": {"norm": "xx", "batch_size": 2}}, runs)
    assert v.verdict == "inconclusive" and "norm='xx'" in v.reason and v.seeds_needed is None


def test_a_pooled_count_needs_three_seeds_in_every_configuration_it_pools():
    """Twenty runs of twenty configurations at one seed each decide nothing."""
    runs = frame({(norm, b): [0.8] for norm in ("gn", "bn") for b in (2, 4, 8, 16)})
    runs.loc[runs["norm"] == "bn", "loss_spikes"] = 3
    doc = {"kind": "count", "a": {"norm": "gn"}, "b": {"norm": "bn"}, "event": {"metric": "loss_spikes", "above": 0},
           "expect": "fewer"}
    v = verdict(doc, runs)
    assert v.n == 1 and v.verdict == "inconclusive" and "fewer than 3 seeds per configuration" in v.reason
    assert v.p == pytest.approx(stats.fisher_exact([[0, 4], [4, 0]]).pvalue)


def test_a_pipe_in_a_claims_words_does_not_break_the_findings_table():
    runs = frame({("gn", 2): [0.85, 0.86, 0.87], ("bn", 2): [0.80, 0.80, 0.81]})
    study = {**STUDY, "report": {"kind": "pivot", "rows": "norm", "columns": "batch_size",
                                 "claims": [{"name": "c", "statement": "|GN| wins", "source": SOURCE, **GN_BEATS_BN}]}}
    text = build_report(study, runs, {"date": "d"}).text
    row = next(line for line in text.splitlines() if "wins" in line)
    assert row.count(" | ") == 6 and "\\|GN\\| wins" in row  # seven cells, the pipes escaped


def test_a_negative_margin_claims_no_worse_than_by_that_much():
    """Non-inferiority: "a is at most 1 point below b" holds when the interval of a − b lies above −1."""
    close = frame({("gn", 2): [0.80, 0.801, 0.80], ("bn", 2): [0.80, 0.80, 0.801]})
    v = verdict({**GN_BEATS_BN, "margin": -1.0}, close)
    assert v.verdict == "reproduced" and v.low > -1 and "claimed at most 1 lower" in v.effect_text
    far = frame({("gn", 2): [0.75, 0.76, 0.75], ("bn", 2): [0.80, 0.80, 0.81]})
    assert verdict({**GN_BEATS_BN, "margin": -1.0}, far).verdict == "contradicted"
    assert verdict({**GN_BEATS_BN, "margin": 0}, close).verdict == "inconclusive"
    with pytest.raises(ConfigError, match="`tolerance` is a non-negative number"):
        parse_report({"claims": [{"name": "c", "statement": "s", "source": SOURCE, "kind": "flat", "where": {"norm": "gn"},
                                  "over": "batch_size", "tolerance": -1, "reference": 2}]}, STUDY)

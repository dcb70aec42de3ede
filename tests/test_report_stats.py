"""The statistics of reports, pinned on numbers with known answers (computed by hand here,
not by the code under test)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.report.stats import bootstrap_interval, describe, holm, interval, paired_difference, t_interval
from bench.report.tables import aggregate, compare

T_975_DF4 = 2.7764451051977987  # Student's t quantile 0.975, 4 degrees of freedom (tables: 2.776)
T_975_DF2 = 4.302652729749464  # ... 2 degrees of freedom (tables: 4.303)


def test_describe_is_mean_sample_std_and_n():
    s = describe([1, 2, 3, 4, 5])
    assert (s.mean, s.n) == (3.0, 5) and s.std == pytest.approx(math.sqrt(2.5))  # ddof = 1: 10 / 4
    one = describe([7.0])
    assert one.mean == 7.0 and one.n == 1 and math.isnan(one.std)
    assert describe([]).n == 0 and math.isnan(describe([]).mean)


def test_t_interval_matches_the_hand_computation_and_contains_the_mean():
    low, high = t_interval([1, 2, 3, 4, 5], 0.95)
    half = T_975_DF4 * math.sqrt(2.5) / math.sqrt(5)  # t · s / √n = 1.9632
    assert (low, high) == pytest.approx((3 - half, 3 + half))
    assert (low, high) == pytest.approx((1.036757, 4.963243), abs=1e-6)
    assert low < 3 < high  # values symmetric about the true mean 3
    assert all(math.isnan(v) for v in t_interval([4.0], 0.95))  # no interval from one value
    assert t_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_t_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(12345)
    samples = rng.normal(10.0, 2.0, size=(2000, 5))
    covered = sum(low <= 10.0 <= high for low, high in (t_interval(row, 0.95) for row in samples))
    assert 0.93 <= covered / len(samples) <= 0.97


def test_bootstrap_is_seeded_reproducible_and_right_in_a_known_case():
    values = [0.81, 0.84, 0.80, 0.86, 0.83, 0.79, 0.88, 0.85]
    first = bootstrap_interval(values, 0.95)
    assert bootstrap_interval(values, 0.95) == first  # same seed, same interval
    assert bootstrap_interval(values, 0.95, seed=1, resamples=200) != bootstrap_interval(values, 0.95, seed=2, resamples=200)
    assert min(values) <= first[0] < np.mean(values) < first[1] <= max(values)
    # two values 0 and 1: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% quantiles are 0 and 1
    assert bootstrap_interval([0.0, 1.0], 0.95) == (0.0, 1.0)
    assert bootstrap_interval([3.0, 3.0, 3.0]) == (3.0, 3.0)
    assert all(math.isnan(v) for v in bootstrap_interval([1.0]))
    assert interval(values, "bootstrap", 0.95) == first and all(math.isnan(v) for v in interval(values, "none"))


def test_paired_difference_by_hand_pairs_by_seed():
    # seeds 0, 1, 2 in both (listed in different orders; seeds 3 and 4 have no partner)
    cell = {1: 0.82, 0: 0.81, 2: 0.86, 3: 0.99}
    base = {2: 0.83, 0: 0.80, 1: 0.80, 4: 0.10}
    d = paired_difference(cell, base, ci="t", level=0.95)
    # differences 0.01, 0.02, 0.03: mean 0.02, sd 0.01, t = 0.02 / (0.01 / √3) = 2√3
    assert d.pairs == 3 and d.mean == pytest.approx(0.02) and d.std == pytest.approx(0.01)
    assert d.t == pytest.approx(2 * math.sqrt(3))
    # two-sided p with 2 degrees of freedom has a closed form: p = 1 − t / √(2 + t²)
    assert d.p == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14))  # 0.0742
    half = T_975_DF2 * 0.01 / math.sqrt(3)
    assert (d.low, d.high) == pytest.approx((0.02 - half, 0.02 + half))
    assert d.tested and not d.note


def test_paired_difference_without_enough_pairs_is_untested():
    one = paired_difference({0: 0.9, 1: 0.8}, {0: 0.85})
    assert one.pairs == 1 and one.mean == pytest.approx(0.05) and not one.tested and one.note == "one pair, untested"
    none = paired_difference({0: 0.9}, {1: 0.85})
    assert none.pairs == 0 and math.isnan(none.mean) and none.note == "no seed in common"
    same = paired_difference({0: 0.9, 1: 0.8}, {0: 0.85, 1: 0.75})  # every pair differs by 0.05
    assert same.pairs == 2 and same.mean == pytest.approx(0.05) and not same.tested and "untested" in same.note


def test_holm_adjusts_by_hand():
    # sorted: 0.01 × 3 = 0.03; 0.03 × 2 = 0.06; 0.04 × 1 = 0.04 → monotone: 0.06
    assert holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def _frame() -> pd.DataFrame:
    rows = []
    for norm, accs in {"bn": [0.80, 0.80, 0.83], "gn": [0.81, 0.82, 0.86], "ln": [0.70, None, 0.74]}.items():
        for seed, acc in enumerate(accs):
            rows.append({"run_id": f"{norm}{seed}", "norm": norm, "batch_size": 8, "seed": seed,
                         "status": "completed" if acc is not None else "diverged", "final_val_acc": acc})
    return pd.DataFrame(rows)


def test_compare_with_the_baseline_in_the_same_column():
    agg = aggregate(_frame(), ["norm", "batch_size"], "final_val_acc", ci="t", level=0.95)
    cells = compare(agg, ["norm", "batch_size"], {"norm": "bn"}, ci="t", alpha=0.1).set_index("norm")
    assert cells.loc["bn", "is_baseline"] and math.isnan(cells.loc["bn", "p"])
    gn = cells.loc["gn"]
    assert gn["pairs"] == 3 and gn["delta"] == pytest.approx(0.02)
    assert gn["p"] == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14)) and gn["significant"]  # 0.074 < 0.1
    ln = cells.loc["ln"]  # seed 1 diverged: counted in the cell, left out of mean and pairs
    assert ln["n"] == 2 and ln["diverged"] == 1 and ln["total"] == 3 and ln["mean"] == pytest.approx(0.72)
    assert ln["pairs"] == 2 and ln["delta"] == pytest.approx(((0.70 - 0.80) + (0.74 - 0.83)) / 2)
    # differences −0.10, −0.09: t = −0.095 / (0.00707 / √2) = −19; with 1 degree of freedom
    # t is Cauchy, so p = 1 − 2·atan(19)/π
    p_ln = 1 - 2 * math.atan(19) / math.pi  # 0.0334
    assert ln["t"] == pytest.approx(-19) and ln["p"] == pytest.approx(p_ln)
    # Holm over the 2 tests: ln (smaller) × 2 = 0.067; gn × 1 = 0.074
    holm_cells = compare(agg, ["norm", "batch_size"], {"norm": "bn"}, alpha=0.07, correction="holm").set_index("norm")
    assert holm_cells.loc["ln", "p_adjusted"] == pytest.approx(2 * p_ln) and holm_cells.loc["ln", "significant"]
    assert holm_cells.loc["gn", "p_adjusted"] == pytest.approx(gn["p"]) and not holm_cells.loc["gn", "significant"]


def test_compare_with_a_fixed_baseline_cell_and_a_missing_one():
    frame = _frame()
    frame.loc[frame["norm"] == "bn", "batch_size"] = 32  # the baseline lives in another column
    agg = aggregate(frame, ["norm", "batch_size"], "final_val_acc")
    fixed = compare(agg, ["norm", "batch_size"], {"norm": "bn", "batch_size": 32}).set_index("norm")
    assert fixed.loc["gn", "delta"] == pytest.approx(0.02) and fixed.loc["gn", "has_baseline"]
    same_column = compare(agg, ["norm", "batch_size"], {"norm": "bn"}).set_index("norm")
    assert not same_column.loc["gn", "has_baseline"] and same_column.loc["gn", "delta_note"] == "no baseline cell: norm=bn, batch_size=8"

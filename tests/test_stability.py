"""Stability metrics on synthetic per-step series with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from bench.trial.spikes import (
    StabilityParams,
    divergence_step,
    find_spikes,
    largest_accuracy_drop,
    preceded_spikes,
    running_median,
    stability,
)


def smooth_loss(n: int = 1000, noise: float = 0.02, seed: int = 0) -> np.ndarray:
    """A decaying training loss with multiplicative noise, never twice its recent median."""
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    return (2.0 * np.exp(-t / 300) + 0.1) * (1 + noise * rng.standard_normal(n))


def test_running_median_excludes_the_current_step():
    m = running_median([1, 2, 3, 100, 5], window=3)
    assert math.isnan(m[2]) and m[3] == 2 and m[4] == 3


def test_no_spikes_in_a_smooth_decaying_loss():
    assert find_spikes(smooth_loss()) == []
    assert find_spikes(smooth_loss(noise=0.1, seed=3)) == []


def test_planted_spikes_are_found_with_their_steps():
    loss = smooth_loss()
    loss[200] *= 4
    loss[500] *= 3
    loss[800:803] *= 5  # one spike lasting three steps
    spikes = find_spikes(loss)
    assert [(s.start, s.end) for s in spikes] == [(200, 200), (500, 500), (800, 802)]
    assert spikes[0].ratio == pytest.approx(4, rel=0.1)
    assert spikes[2].peak in (800, 801, 802)


def test_threshold_and_warmup():
    loss = smooth_loss()
    loss[10] *= 10  # inside the warm-up: ignored
    loss[300] *= 1.8  # below k = 2
    assert find_spikes(loss) == []
    assert [s.start for s in find_spikes(loss, k=1.5)] == [300]
    assert [s.start for s in find_spikes(loss, window=5, warmup=5)] == [10]


def test_spike_steps_are_the_series_index():
    loss = pd.Series(smooth_loss(200), index=np.arange(1000, 1400, 2))
    loss.iloc[120] *= 5
    assert [s.start for s in find_spikes(loss)] == [1000 + 2 * 120]


def test_largest_accuracy_drop_on_a_hand_made_series():
    acc = [0.1, 0.5, 0.7, 0.4, 0.6, 0.8, 0.75, 0.9]
    drop = largest_accuracy_drop(acc, smooth=1)
    assert drop.size == pytest.approx(0.3) and (drop.peak_step, drop.trough_step) == (2, 3)
    # smoothed over 2 steps: 0.3, 0.6, 0.55, 0.5, 0.7, 0.775, 0.825 → best 0.6 at step 2, bottom 0.5 at step 4
    drop = largest_accuracy_drop(acc, smooth=2)
    assert drop.size == pytest.approx(0.1) and (drop.peak_step, drop.trough_step) == (2, 4)


def test_no_drop_in_a_rising_accuracy():
    drop = largest_accuracy_drop(np.linspace(0.1, 0.9, 50), smooth=5)
    assert drop.size == 0.0


def test_divergence_step():
    assert divergence_step([2.0, 1.5, 1.0, float("nan"), 1.0]) == 3
    assert divergence_step([2.0, 1.5, float("inf")]) == 2
    assert divergence_step([2.0, 1.5, 25.0, 1.0]) == 2
    assert divergence_step([2.0, 1.5, 15.0], factor=10) is None
    assert divergence_step(pd.Series([1.0, 1.0, 11.0], index=[10, 20, 30])) == 30


def test_a_planted_grad_spike_before_a_loss_spike_is_found_with_its_lag():
    loss, grad = smooth_loss(), smooth_loss(seed=1) + 1.0
    grad[497] *= 6
    loss[500] *= 4  # preceded by 3 steps
    loss[700] *= 4  # no gradient spike before it
    grad[900] *= 6
    loss[900] *= 4  # same step: not "preceding" by default
    index = pd.RangeIndex(len(loss))
    loss_spikes, grad_spikes = find_spikes(loss), find_spikes(grad)
    assert [s.start for s in grad_spikes] == [497, 900]
    pairs = preceded_spikes(loss_spikes, grad_spikes, index)
    assert [(p.loss_step, p.grad_step, p.lag) for p in pairs] == [(500, 497, 3)]
    with_same_step = preceded_spikes(loss_spikes, grad_spikes, index, min_lag=0)
    assert [(p.loss_step, p.lag) for p in with_same_step] == [(500, 3), (900, 0)]
    assert preceded_spikes(loss_spikes, grad_spikes, index, max_lag=2) == []


def test_summary_of_a_run():
    steps = np.arange(0, 2000, 2)
    loss = pd.Series(smooth_loss(), index=steps)
    grad = pd.Series(smooth_loss(seed=1) + 1.0, index=steps)
    acc = pd.Series(np.linspace(0.2, 0.9, 1000), index=steps)
    grad.iloc[395] *= 6
    loss.iloc[400] *= 4
    loss.iloc[600] *= 4
    acc.iloc[400:420] -= 0.3
    out = stability(loss, acc, grad, StabilityParams(acc_smooth=5))
    assert out["loss_spikes"] == 2 and out["loss_spike_steps"] == [800, 1200]
    assert out["grad_spike_steps"] == [790]
    assert out["preceded_spikes"] == 1 and out["preceded_spike_steps"] == [800] and out["preceded_lags"] == [5]
    assert out["preceded_fraction"] == 0.5
    assert out["diverged_step"] is None
    assert out["max_acc_drop"] == pytest.approx(0.3, abs=0.01) and 800 <= out["max_acc_drop_step"] <= 840
    json.dumps(out)  # storable as it is


def test_summary_without_optional_series_and_with_divergence():
    loss = smooth_loss(300)
    loss[250] = float("nan")
    out = stability(loss)
    assert out == {"loss_spikes": 0, "loss_spike_steps": [], "diverged_step": 250}


def test_mismatched_steps_and_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="same steps"):
        stability(pd.Series([1.0] * 5, index=[0, 1, 2, 3, 4]), grad_norm=pd.Series([1.0] * 5, index=[1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match="k="):
        StabilityParams(k=1.0)
    with pytest.raises(ValueError, match="min_lag"):
        StabilityParams(min_lag=5, max_lag=2)

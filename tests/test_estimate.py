"""The dry run's time estimate: what it counts for a trial."""

from __future__ import annotations

import torch

from bench.grid.estimate import step_costs, trial_steps, trial_val_images
from bench.spec import TrialConfig
from bench.zoo.datasets import SYNTHETIC_TRAIN, SYNTHETIC_VAL


def test_a_trial_evaluates_its_validation_split_after_every_epoch():
    assert trial_val_images(TrialConfig(dataset="synthetic", epochs=3)) == 3 * SYNTHETIC_VAL
    assert trial_val_images(TrialConfig(dataset="synthetic", epochs=3, val_subset=64)) == 3 * 64
    assert trial_val_images(TrialConfig(dataset="synthetic", epochs=3, ema_decay=0.99)) == 2 * 3 * SYNTHETIC_VAL  # and its EMA model
    assert trial_val_images(TrialConfig(dataset="fashion-mnist", epochs=2)) == 2 * 10_000


def test_steps_and_evaluation_are_timed_once_per_distinct_model():
    trials = [TrialConfig(dataset="synthetic", arch="cnn", width=8, batch_size=32, epochs=2, seed=s) for s in (0, 1)]
    trials.append(trials[0].replace(batch_size=64))
    costs = step_costs(trials, torch.device("cpu"), threads=1)
    assert len(costs) == 2  # the seed changes no cost, the batch size does
    assert all(step > 0 and image > 0 for step, image in costs.values())
    assert trial_steps(trials[0]) == 2 * (SYNTHETIC_TRAIN // 32)

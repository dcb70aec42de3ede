"""Every optimizer and schedule trains a real (tiny) model through the trial loop, and the
config options reach the optimizer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.zoo.datasets import DATASETS, dataset_source
from bench.spec import TrialConfig
from bench.trial import build_model, build_optimizer, run_trial
from bench.zoo.optimizers import OPTIMIZERS
from bench.zoo.schedules import SCHEDULES

TINY = dict(dataset="synthetic", arch="mlp", width=16, epochs=2, batch_size=32, lr_scaling="none")
LR = {"adadelta": 1.0, "lars": 1.0, "sgd": 0.05}


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_completes_a_trial(name):
    result = run_trial(TrialConfig(**TINY, optimizer=name, lr=LR.get(name, 0.003)))
    assert result.status == "completed", result.error
    assert result.summary["final_val_acc"] is not None and len(result.epochs) == 2


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_completes_a_trial_and_sets_the_lr(name):
    result = run_trial(TrialConfig(**{**TINY, "schedule": name, "lr": 0.05, "epochs": 3, "warmup_epochs": 1 if name == "poly" else 0}))
    assert result.status == "completed", result.error
    assert all(0 <= e["lr"] <= 0.05 + 1e-12 for e in result.epochs)


def _model_and_optimizer(**changes):
    config = TrialConfig(**{**TINY, **changes})
    torch.manual_seed(0)
    model = build_model(config, dataset_source("synthetic"))
    return config, model, build_optimizer(config, model, steps=4)


def test_config_options_reach_the_optimizer():
    _, _, opt = _model_and_optimizer(optimizer="lars", lr=0.5, lars_eta=0.002, wd_exclude_1d=True, weight_decay=0.01)
    assert opt.param_groups[0]["trust_coeff"] == 0.002 and opt.param_groups[0]["weight_decay"] == 0.01
    assert opt.param_groups[1]["weight_decay"] == 0.0 and not opt.param_groups[1]["always_adapt"]
    _, _, opt = _model_and_optimizer(optimizer="adam", weight_decay=0.1, weight_decay_mode="decoupled", optimizer_eps=1e-6)
    assert opt.param_groups[0]["weight_decay"] == 0.0 and opt.param_groups[0]["bench_decay"] == 0.1
    assert opt.param_groups[0]["eps"] == 1e-6


def test_lawn_from_the_config_fixes_the_classifier_norm_after_its_free_epochs():
    _, model, opt = _model_and_optimizer(optimizer="adam", lr=0.01, lawn=True, lawn_free_epochs=0.5)
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    norms = []
    for _ in range(8):
        opt.zero_grad()
        F.cross_entropy(model(_inputs(32)), torch.randint(0, 10, (32,))).backward()
        opt.step()
        norms.append(classifier.weight.norm().item())
    # free for round(0.5 × 4) = 2 steps, then fixed at the norm it had when the free phase ended
    assert norms[2:] == pytest.approx([norms[1]] * 6, rel=1e-6)
    assert norms[0] != pytest.approx(norms[1], rel=1e-6)


def _inputs(n: int) -> torch.Tensor:
    source = dataset_source("synthetic")
    return torch.randn(n, source.in_channels, source.image_size, source.image_size)


def test_momentum_is_inert_for_adam_and_beta2_for_sgd():
    assert TrialConfig(optimizer="adam", momentum=0.5).trial_id == TrialConfig(optimizer="adam").trial_id
    assert TrialConfig(optimizer="sgd", beta2=0.99).trial_id == TrialConfig(optimizer="sgd").trial_id
    assert TrialConfig(optimizer="sgd", momentum=0.5).trial_id != TrialConfig(optimizer="sgd").trial_id
    assert TrialConfig(schedule="cosine", sgdr_t0=3).trial_id == TrialConfig().trial_id
    assert TrialConfig(schedule="sgdr", sgdr_t0=3).trial_id != TrialConfig(schedule="sgdr").trial_id

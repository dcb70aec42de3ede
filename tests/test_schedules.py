"""Schedules hit their defining points."""

from __future__ import annotations

import math

import pytest
import torch

from bench.errors import ConfigError
from bench.zoo.schedules import SCHEDULES


def test_constant():
    f = SCHEDULES.get("constant")(total_steps=100)
    assert [f(s) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]


def test_cosine_starts_at_peak_halves_midway_and_ends_near_zero():
    f = SCHEDULES.get("cosine")(total_steps=100)
    assert f(0) == 1.0
    assert f(50) == pytest.approx(0.5)
    assert f(25) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert f(100) == pytest.approx(0.0, abs=1e-12)


def test_warmup_is_linear_and_reaches_the_peak_at_the_given_step():
    f = SCHEDULES.get("warmup-cosine")(total_steps=110, warmup_steps=10)
    assert [f(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f(9) == 1.0 and f(10) == 1.0
    assert f(60) == pytest.approx(0.5)
    assert f(110) == pytest.approx(0.0, abs=1e-12)


def test_warmup_cosine_defaults_to_five_percent_warmup():
    f = SCHEDULES.get("warmup-cosine")(total_steps=200)
    assert f(0) == pytest.approx(0.1) and f(9) == 1.0


def test_step_decays_by_gamma_at_each_milestone():
    f = SCHEDULES.get("step")(total_steps=100, lr_milestones=(0.5, 0.75), lr_gamma=0.1)
    assert f(49) == 1.0
    assert f(50) == pytest.approx(0.1)
    assert f(74) == pytest.approx(0.1)
    assert f(75) == pytest.approx(0.01)


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_is_positive_bounded_and_warms_up(name):
    f = SCHEDULES.get(name)(total_steps=100, warmup_steps=5, steps_per_epoch=10)
    if name == "one-cycle":  # its warm-up is its own cosine rise from peak/25
        assert f(0) == pytest.approx(1 / 25)
    else:
        assert f(0) == pytest.approx(0.2)
    assert f(4) == pytest.approx(1.0)
    assert all(0 <= f(s) <= 1.0 for s in range(101))
    entry = SCHEDULES.entry(name)
    assert entry.description and (entry.paper or name == "constant")


def torch_lrs(make_scheduler, steps: int) -> list[float]:
    """The factors torch's own scheduler gives over ``steps`` optimizer steps."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_sgdr_restarts_at_t0_then_t0_plus_t0_tmult():
    f = SCHEDULES.get("sgdr")(total_steps=700, steps_per_epoch=10, sgdr_t0=1.0, sgdr_t_mult=2.0)
    # cycles of 10, 20, 40, 80 steps: restarts (factor back to 1) at 10, 30, 70, 150
    for restart in (0, 10, 30, 70, 150):
        assert f(restart) == 1.0
    assert f(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 10)))
    assert f(20) == pytest.approx(0.5)  # halfway through the 20-step cycle
    assert f(50) == pytest.approx(0.5)  # halfway through the 40-step cycle
    assert f(29) < 0.01 and f(69) < 0.01


def test_sgdr_matches_torch_cosine_annealing_warm_restarts():
    ours = SCHEDULES.get("sgdr")(total_steps=300, steps_per_epoch=5, sgdr_t0=2.0, sgdr_t_mult=2.0)
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2), 300)
    assert [ours(s) for s in range(300)] == pytest.approx(theirs, abs=1e-12)


def test_sgdr_without_growth_restarts_every_t0():
    f = SCHEDULES.get("sgdr")(total_steps=100, steps_per_epoch=4, sgdr_t0=2.5, sgdr_t_mult=1.0)
    assert [s for s in range(100) if f(s) == 1.0] == list(range(0, 100, 10))


def test_one_cycle_matches_torch_one_cycle_lr():
    ours = SCHEDULES.get("one-cycle")(total_steps=200)
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1.0, total_steps=200), 200)
    assert [ours(s) for s in range(200)] == pytest.approx(theirs, rel=1e-9, abs=1e-12)
    assert ours(0) == pytest.approx(1 / 25) and ours(59) == pytest.approx(1.0)
    assert ours(199) == pytest.approx(1 / 25 / 1e4)


def test_one_cycle_peak_at_the_warmup_when_given():
    f = SCHEDULES.get("one-cycle")(total_steps=100, warmup_steps=20)
    assert f(19) == pytest.approx(1.0) and f(18) < 1.0 and f(20) < 1.0


def test_poly_decay_with_warmup():
    f = SCHEDULES.get("poly")(total_steps=110, warmup_steps=10, poly_power=2.0)
    assert f(9) == 1.0
    assert f(60) == pytest.approx(0.25)  # (1 − 0.5)²
    assert f(85) == pytest.approx(0.25**2)  # (1 − 0.75)²
    assert f(110) == 0.0


def test_step_matches_torch_multistep_lr():
    ours = SCHEDULES.get("step")(total_steps=100, lr_milestones=(0.3, 0.6, 0.9), lr_gamma=0.5)
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[30, 60, 90], gamma=0.5), 100)
    assert [ours(s) for s in range(100)] == pytest.approx(theirs)


def test_cosine_matches_torch_cosine_annealing():
    ours = SCHEDULES.get("cosine")(total_steps=50)
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=50), 50)
    assert [ours(s) for s in range(50)] == pytest.approx(theirs, abs=1e-12)


def test_invalid_arguments_are_config_errors():
    with pytest.raises(ConfigError):
        SCHEDULES.get("cosine")(total_steps=10, warmup_steps=20)
    with pytest.raises(ConfigError):
        SCHEDULES.get("step")(total_steps=10, lr_milestones=(1.5,))
    with pytest.raises(ConfigError, match="sgdr_t_mult"):
        SCHEDULES.get("sgdr")(total_steps=10, sgdr_t_mult=0.5)
    with pytest.raises(ConfigError, match="onecycle_pct"):
        SCHEDULES.get("one-cycle")(total_steps=10, onecycle_pct=1.5)
    with pytest.raises(ConfigError, match="poly_power"):
        SCHEDULES.get("poly")(total_steps=10, poly_power=0)

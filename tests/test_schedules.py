"""Schedules hit their defining points."""

from __future__ import annotations

import math

import pytest

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
    f = SCHEDULES.get("step")(total_steps=100, milestones=(0.5, 0.75), gamma=0.1)
    assert f(49) == 1.0
    assert f(50) == pytest.approx(0.1)
    assert f(74) == pytest.approx(0.1)
    assert f(75) == pytest.approx(0.01)


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_is_positive_bounded_and_warms_up(name):
    f = SCHEDULES.get(name)(total_steps=100, warmup_steps=5)
    assert f(0) == pytest.approx(0.2)
    assert f(4) == pytest.approx(1.0)
    assert all(0 <= f(s) <= 1.0 for s in range(101))


def test_invalid_arguments_are_config_errors():
    with pytest.raises(ConfigError):
        SCHEDULES.get("cosine")(total_steps=10, warmup_steps=20)
    with pytest.raises(ConfigError):
        SCHEDULES.get("step")(total_steps=10, milestones=(1.5,))

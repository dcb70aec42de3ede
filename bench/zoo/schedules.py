"""Learning-rate schedules, by name.

A schedule is a pure function of the optimizer step: ``factor(step) -> float``, the
multiple of the (already batch-scaled) learning rate to use at that step. Training
applies it through ``torch.optim.lr_scheduler.LambdaLR`` stepped once per optimizer
step. Pure functions keep each schedule one formula, easy to test at its defining
points (and against torch's own schedulers where torch has the schedule) and to plot.
Every builder is called with keywords::

    build(*, total_steps, steps_per_epoch, warmup_steps, **declared_options) -> factor

``warmup_steps`` applies a linear warm-up from ~0 to the peak to any schedule
(one-cycle's warm-up is its own rising phase); ``lr_milestones`` are fractions of
training for ``step``; ``sgdr_t0`` is in epochs. Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from bench.errors import ConfigError
from bench.zoo.registry import SCHEDULES, Option

Factor = Callable[[int], float]


def _with_warmup(after: Callable[[float], float], total_steps: int, warmup_steps: int) -> Factor:
    """Linear warm-up over ``warmup_steps`` (reaching 1.0 at step ``warmup_steps``), then
    ``after(progress)`` with progress ∈ [0, 1] over the remaining steps."""
    if total_steps < 1:
        raise ConfigError(f"A schedule needs at least one training step; got total_steps={total_steps}.")
    if warmup_steps < 0 or warmup_steps > total_steps:
        raise ConfigError(
            f"warm-up must last between 0 and the whole run ({total_steps} steps); got {warmup_steps} steps."
        )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        rest = max(1, total_steps - warmup_steps)
        return after(min(1.0, (step - warmup_steps) / rest))

    return factor


@SCHEDULES.register("constant", "Constant learning rate (after optional warm-up).")
def constant(*, total_steps: int, steps_per_epoch: int = 1, warmup_steps: int = 0) -> Factor:
    return _with_warmup(lambda p: 1.0, total_steps, warmup_steps)


@SCHEDULES.register(
    "cosine",
    "Cosine decay from the peak to 0 over training: ½(1 + cos(π·t/T)).",
    paper="Loshchilov & Hutter 2017, arXiv:1608.03983 (one cycle, no restart)",
)
def cosine(*, total_steps: int, steps_per_epoch: int = 1, warmup_steps: int = 0) -> Factor:
    return _with_warmup(lambda p: 0.5 * (1.0 + math.cos(math.pi * p)), total_steps, warmup_steps)


@SCHEDULES.register(
    "warmup-cosine",
    "Linear warm-up to the peak (warmup_epochs; 5% of training if unset), then cosine decay to 0.",
    paper="Goyal et al. 2017, arXiv:1706.02677 (warm-up); Loshchilov & Hutter 2017 (cosine)",
)
def warmup_cosine(*, total_steps: int, steps_per_epoch: int = 1, warmup_steps: int = 0) -> Factor:
    warmup = warmup_steps or max(1, round(0.05 * total_steps))
    return cosine(total_steps=total_steps, warmup_steps=warmup)


@SCHEDULES.register(
    "step",
    "Step (multistep) decay: multiply by lr_gamma (0.1) at each milestone (lr_milestones, fractions of "
    "training, default 0.5, 0.75).",
    paper="He et al. 2016, arXiv:1512.03385",
    options=(
        Option("lr_milestones", tuple, (0.5, 0.75), "when to decay, as fractions of training", unit="fractions of training"),
        Option("lr_gamma", float, 0.1, "decay factor per milestone", gt=0, le=1),
    ),
)
def step(
    *, total_steps: int, steps_per_epoch: int = 1, warmup_steps: int = 0, lr_milestones: Sequence[float] = (0.5, 0.75),
    lr_gamma: float = 0.1,
) -> Factor:
    if any(not 0 < m < 1 for m in lr_milestones):
        raise ConfigError(
            f"lr_milestones are fractions of training strictly between 0 and 1; got {list(lr_milestones)}."
        )
    bounds = sorted(round(m * total_steps) for m in lr_milestones)

    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        return lr_gamma ** sum(s >= b for b in bounds)

    _with_warmup(lambda p: 1.0, total_steps, warmup_steps)  # validates the arguments
    return factor


def sgdr_cycle(step: int, t0: int, t_mult: float) -> tuple[int, int]:
    """(steps into the current cycle, length of the current cycle) at ``step``; cycle i
    lasts round(t0 · t_mult^i) steps."""
    start, length = 0, t0
    while step >= start + length:
        start += length
        length = max(1, round(length * t_mult))
    return step - start, length


@SCHEDULES.register(
    "sgdr",
    "SGDR: cosine from the peak to 0 over sgdr_t0 epochs (default 1), then warm restarts, each cycle "
    "sgdr_t_mult (2) times longer: η = ½η_max(1 + cos(π·T_cur/T_i)).",
    paper="Loshchilov & Hutter 2017, arXiv:1608.03983",
    options=(
        Option("sgdr_t0", float, 1.0, "length of the first cycle", unit="epochs", gt=0),
        Option("sgdr_t_mult", float, 2.0, "each cycle this many times longer than the last", ge=1),
    ),
)
def sgdr(
    *, total_steps: int, steps_per_epoch: int = 1, warmup_steps: int = 0, sgdr_t0: float = 1.0, sgdr_t_mult: float = 2.0,
) -> Factor:
    if not sgdr_t0 > 0 or not sgdr_t_mult >= 1:
        raise ConfigError(
            f"SGDR needs sgdr_t0 > 0 (epochs of the first cycle) and sgdr_t_mult ≥ 1; got sgdr_t0={sgdr_t0}, "
            f"sgdr_t_mult={sgdr_t_mult}."
        )
    t0 = max(1, round(sgdr_t0 * steps_per_epoch))

    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        t_cur, t_i = sgdr_cycle(s - warmup_steps, t0, sgdr_t_mult)
        return 0.5 * (1.0 + math.cos(math.pi * t_cur / t_i))

    _with_warmup(lambda p: 1.0, total_steps, warmup_steps)
    return factor


@SCHEDULES.register(
    "one-cycle",
    "One-cycle: cosine rise from peak/onecycle_div (25) to the peak over onecycle_pct (30%) of training "
    "(or over warmup_epochs when set), then cosine fall to peak/(onecycle_div·onecycle_final_div) (1e4). "
    "The same curve as torch's OneCycleLR.",
    paper="Smith & Topin 2019, arXiv:1708.07120",
    options=(
        Option("onecycle_pct", float, 0.3, "fraction of training spent rising", gt=0, lt=1),
        Option("onecycle_div", float, 25.0, "starts at peak / div", ge=1),
        Option("onecycle_final_div", float, 10000.0, "ends at peak / (div · final_div)", ge=1),
    ),
)
def one_cycle(
    *, total_steps: int, steps_per_epoch: int = 1, warmup_steps: int = 0, onecycle_pct: float = 0.3,
    onecycle_div: float = 25.0, onecycle_final_div: float = 1e4,
) -> Factor:
    if not 0 < onecycle_pct < 1 or onecycle_div < 1 or onecycle_final_div < 1:
        raise ConfigError(
            "one-cycle needs 0 < onecycle_pct < 1, onecycle_div ≥ 1 and onecycle_final_div ≥ 1; got "
            f"onecycle_pct={onecycle_pct}, onecycle_div={onecycle_div}, onecycle_final_div={onecycle_final_div}."
        )
    _with_warmup(lambda p: 1.0, total_steps, warmup_steps)
    start = 1.0 / onecycle_div
    end = start / onecycle_final_div
    peak_at = (warmup_steps if warmup_steps else onecycle_pct * total_steps) - 1
    last = total_steps - 1
    if peak_at <= 0 or last <= peak_at:
        raise ConfigError(
            f"one-cycle needs room to rise and to fall: {total_steps} steps with the peak at step {peak_at:.0f}."
        )

    def anneal(a: float, b: float, pct: float) -> float:
        return b + (a - b) / 2.0 * (1.0 + math.cos(math.pi * pct))

    def factor(s: int) -> float:
        if s <= peak_at:
            return anneal(start, 1.0, s / peak_at)
        return anneal(1.0, end, min(1.0, (s - peak_at) / (last - peak_at)))

    return factor


@SCHEDULES.register(
    "poly",
    "Polynomial decay to 0: (1 − t/T)^poly_power (2), after optional warm-up; the schedule LARS was used with.",
    paper="You, Gitman & Ginsburg 2017, arXiv:1708.03888",
    options=(Option("poly_power", float, 2.0, "exponent p of (1 − t/T)^p", gt=0),),
)
def poly(*, total_steps: int, steps_per_epoch: int = 1, warmup_steps: int = 0, poly_power: float = 2.0) -> Factor:
    if not poly_power > 0:
        raise ConfigError(f"poly_power must be > 0; got {poly_power}.")
    return _with_warmup(lambda p: (1.0 - p) ** poly_power, total_steps, warmup_steps)


def schedule_factor(config: Any, steps_per_epoch: int) -> Factor:
    """The config's schedule as a function of the optimizer step (``steps_per_epoch`` steps
    per epoch, ``config.epochs`` epochs, warm-up ``config.warmup_epochs``)."""
    return SCHEDULES.build(
        config.schedule, config, total_steps=steps_per_epoch * config.epochs, steps_per_epoch=steps_per_epoch,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
    )


def schedule_curve(config: Any, steps_per_epoch: int) -> tuple[list[float], list[float]]:
    """(epoch of each step, learning rate at that step) over the whole run: what
    ``bench zoo schedules --plot`` draws and the ``lr-schedule`` report section shows."""
    factor = schedule_factor(config, steps_per_epoch)
    total = steps_per_epoch * config.epochs
    return [s / steps_per_epoch for s in range(total)], [config.effective_lr * factor(s) for s in range(total)]

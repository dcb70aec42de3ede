"""Learning-rate schedules, by name.

A schedule is a pure function of the optimizer step: ``factor(step) -> float``, the
multiple of the (already batch-scaled) learning rate to use at that step. Training
applies it through ``torch.optim.lr_scheduler.LambdaLR`` stepped once per optimizer
step. Pure functions keep each schedule one formula, easy to test at its defining
points and to plot. Every builder has one signature::

    build(*, total_steps, warmup_steps=0, milestones=(0.5, 0.75), gamma=0.1) -> factor

``warmup_steps`` applies a linear warm-up from ~0 to the peak to any schedule;
``milestones`` are fractions of training for ``step``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from bench.errors import ConfigError
from bench.registry import Registry

Factor = Callable[[int], float]
SCHEDULES: Registry[Callable[..., Factor]] = Registry("schedule")


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
def constant(*, total_steps: int, warmup_steps: int = 0, **_: object) -> Factor:
    return _with_warmup(lambda p: 1.0, total_steps, warmup_steps)


@SCHEDULES.register(
    "cosine",
    "Cosine decay from the peak to 0 over training: ½(1 + cos(π·t/T)).",
    paper="Loshchilov & Hutter 2017, arXiv:1608.03983 (one cycle, no restart)",
)
def cosine(*, total_steps: int, warmup_steps: int = 0, **_: object) -> Factor:
    return _with_warmup(lambda p: 0.5 * (1.0 + math.cos(math.pi * p)), total_steps, warmup_steps)


@SCHEDULES.register(
    "warmup-cosine",
    "Linear warm-up to the peak (warmup_epochs; 5% of training if unset), then cosine decay to 0.",
    paper="Goyal et al. 2017, arXiv:1706.02677 (warm-up); Loshchilov & Hutter 2017 (cosine)",
)
def warmup_cosine(*, total_steps: int, warmup_steps: int = 0, **_: object) -> Factor:
    warmup = warmup_steps or max(1, round(0.05 * total_steps))
    return cosine(total_steps=total_steps, warmup_steps=warmup)


@SCHEDULES.register(
    "step",
    "Step decay: multiply by gamma (0.1) at each milestone (fractions of training, default 0.5, 0.75).",
    paper="He et al. 2016, arXiv:1512.03385",
)
def step(
    *, total_steps: int, warmup_steps: int = 0, milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1, **_: object
) -> Factor:
    if any(not 0 < m < 1 for m in milestones):
        raise ConfigError(
            f"lr_milestones are fractions of training strictly between 0 and 1; got {list(milestones)}."
        )
    bounds = sorted(round(m * total_steps) for m in milestones)

    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        return gamma ** sum(s >= b for b in bounds)

    _with_warmup(lambda p: 1.0, total_steps, warmup_steps)  # validates the arguments
    return factor

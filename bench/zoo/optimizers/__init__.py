"""Optimizers, by name (the ``optimizer`` choice).

Each registry entry is a small function ``(groups, *, lr, **options) -> torch.optim.Optimizer``
that maps the harness's hyperparameters onto a library implementation: torch.optim where
it has the method (:mod:`.classic`), timm.optim for LARS and LAMB (:mod:`.large_batch`),
and hand-written classes only for what neither ships (:mod:`.adabound`, :mod:`.adax`,
:mod:`.grassmann`; entries tagged ``grassmann`` get the model's scale-invariant weights in
groups of their own).
Each entry's description states its native weight-decay form; :func:`make` can override
it (``weight_decay_mode``) and split off the 1-D parameters (:mod:`.weight_decay`; the
ε-shifted and orthonormal forms: :mod:`.eps_shifted`, :mod:`.orthonormal`). LAWN, Singular
Value Bounding and adaptive gradient clipping stack on any entry (:mod:`.lawn`, :mod:`.svb`,
:mod:`.agc`), backward error modulation on any convolutional model (:mod:`.modulation`).

The hyperparameters several optimizers share are declared here once; an entry lists the
ones it reads, and only those reach it and its trial id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bench.zoo.registry import OPTIMIZERS, Option

MOMENTUM = Option("momentum", float, 0.9, "heavy-ball momentum μ: v ← μv + g", ge=0, lt=1)
NESTEROV = Option("nesterov", bool, False, "Nesterov momentum (needs momentum > 0)")
BETA1 = Option("beta1", float, 0.9, "decay of the first-moment (gradient) average", ge=0, lt=1)
BETA2 = Option("beta2", float, 0.999, "decay of the second-moment (squared-gradient) average", ge=0, lt=1)
EPS = Option(
    "optimizer_eps", float, None, "ε of the denominator; null: each optimizer's own default (stated per entry)", gt=0,
    nullable=True,
)
ADAM_OPTIONS = (BETA1, BETA2, EPS)
WEIGHT_DECAY_MODES = ("native", "l2", "decoupled", "eps-shifted", "orthonormal")  # see .weight_decay
WD_SHIFT_EPS = Option(
    "wd_shift_eps", float, 1e-3, "ε-shifted L2 (Li et al. 2019, arXiv:1911.05920): the standard deviation of each conv "
    "filter that decay pulls toward (the authors' 1e-3)", ge=0, when="weight_decay_mode=eps-shifted",
)  # a trial-level option (bench.spec.config.TRIAL_OPTIONS); declared here for make's default


def make(
    name: str,
    params: Iterable[Any],
    *,
    lr: float,
    weight_decay: float = 0.0,
    weight_decay_mode: str = "native",
    exclude_1d: bool = False,
    shift_eps: float = WD_SHIFT_EPS.default,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """The optimizer ``name`` over ``params`` (tensors, a module or param-group dicts),
    with its declared ``options`` (missing ones at their defaults); ``shift_eps`` is the ε
    of ``weight_decay_mode="eps-shifted"``."""
    from bench.zoo.optimizers import weight_decay as wd

    groups = wd.take_decay(wd.param_groups(params, weight_decay, exclude_1d=exclude_1d), weight_decay_mode)
    entry = OPTIMIZERS.entry(name)
    if "grassmann" in entry.tags:  # a model's scale-invariant weights go on the manifold (.grassmann)
        from bench.zoo.optimizers.grassmann import manifold_groups

        groups = manifold_groups(params, groups, name)
    values = {o.name: o.default for o in entry.options}
    unknown = sorted(set(options or {}) - set(values))
    if unknown:
        from bench.errors import ConfigError

        raise ConfigError(f"The optimizer {name!r} takes no option {unknown[0]!r}; it takes: {', '.join(values) or 'none'}.")
    optimizer = entry.factory(groups, lr=lr, **{**values, **(options or {})})
    wd.attach(optimizer, weight_decay_mode, params=params, shift_eps=shift_eps)
    return optimizer


def eps_or(eps: float | None, default: float) -> float:
    return default if eps is None else eps

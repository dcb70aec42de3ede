"""Optimizers, by name.

Each registry entry is a small function ``(groups, options) -> torch.optim.Optimizer``
that maps the harness's hyperparameters (:class:`OptimizerOptions`) onto a library
implementation: torch.optim where it has the method, timm.optim for LARS and LAMB, and
hand-written classes only for what neither ships (:mod:`bench.zoo.adabound`,
:mod:`bench.zoo.adax`). Each entry's description states its native weight-decay form;
:func:`make` can override it (``weight_decay_mode``) and split off the 1-D parameters
(:mod:`bench.zoo.weight_decay`). LAWN and adaptive gradient clipping stack on any entry
(:mod:`bench.zoo.lawn`, :mod:`bench.zoo.agc`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

import torch
from timm.optim import Lamb, Lars

from bench.errors import ConfigError
from bench.registry import Registry
from bench.zoo import weight_decay as wd
from bench.zoo.adabound import AdaBound
from bench.zoo.adax import AdaX


@dataclass(frozen=True)
class OptimizerOptions:
    """Hyperparameters an optimizer may take; each entry reads the ones it uses."""

    lr: float
    momentum: float = 0.0
    nesterov: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float | None = None  # None: the entry's own default (stated per entry)
    rmsprop_alpha: float = 0.99
    adadelta_rho: float = 0.9
    adax_beta2: float = 1e-4
    lars_eta: float = 1e-3
    adabound_final_lr: float = 0.1
    adabound_gamma: float = 1e-3

    def eps_or(self, default: float) -> float:
        return default if self.eps is None else self.eps


Build = Callable[[list[dict[str, Any]], OptimizerOptions], torch.optim.Optimizer]
OPTIMIZERS: Registry[Build] = Registry("optimizer")
OPTION_NAMES = tuple(f.name for f in fields(OptimizerOptions))


def make(
    name: str,
    params: Iterable[Any],
    *,
    weight_decay: float = 0.0,
    weight_decay_mode: str = "native",
    exclude_1d: bool = False,
    **options: Any,
) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``params`` (tensors, a module or param-group dicts)."""
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ConfigError(f"Unknown optimizer option {unknown[0]!r}; options: {', '.join(OPTION_NAMES)}.")
    groups = wd.take_decay(wd.param_groups(params, weight_decay, exclude_1d=exclude_1d), weight_decay_mode)
    optimizer = OPTIMIZERS.get(name)(groups, OptimizerOptions(**options))
    wd.attach(optimizer, weight_decay_mode)
    return optimizer


@OPTIMIZERS.register(
    "sgd",
    "SGD; heavy-ball momentum with `momentum` (v ← μv + g, w ← w − lr·v), Nesterov with `nesterov=true`. "
    "Native decay: L2.",
    paper="Robbins & Monro 1951; Polyak 1964; Sutskever et al. 2013 (Nesterov)",
)
def sgd(groups: list[dict[str, Any]], o: OptimizerOptions) -> torch.optim.Optimizer:
    if o.nesterov and o.momentum <= 0:
        raise ConfigError(
            f"Nesterov momentum needs momentum > 0; got momentum={o.momentum} with nesterov=true. "
            "Set momentum (e.g. 0.9) or nesterov=false."
        )
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)


@OPTIMIZERS.register(
    "adagrad",
    "Adagrad: per-coordinate lr / √(Σ g²) (eps 1e-10). Native decay: L2.",
    paper="Duchi, Hazan & Singer 2011, JMLR 12",
)
def adagrad(groups: list[dict[str, Any]], o: OptimizerOptions) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(groups, lr=o.lr, eps=o.eps_or(1e-10))


@OPTIMIZERS.register(
    "adadelta",
    "Adadelta: RMS of past updates over RMS of gradients (adadelta_rho 0.9, eps 1e-6); lr scales the "
    "update (1.0 is the paper's). Native decay: L2.",
    paper="Zeiler 2012, arXiv:1212.5701",
)
def adadelta(groups: list[dict[str, Any]], o: OptimizerOptions) -> torch.optim.Optimizer:
    return torch.optim.Adadelta(groups, lr=o.lr, rho=o.adadelta_rho, eps=o.eps_or(1e-6))


@OPTIMIZERS.register(
    "rmsprop",
    "RMSprop: lr · g / (√(moving mean of g²) + eps) (rmsprop_alpha 0.99, eps 1e-8, no momentum). Native decay: L2.",
    paper="Tieleman & Hinton 2012, Coursera lecture 6.5",
)
def rmsprop(groups: list[dict[str, Any]], o: OptimizerOptions) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(groups, lr=o.lr, alpha=o.rmsprop_alpha, eps=o.eps_or(1e-8))


@OPTIMIZERS.register(
    "adam",
    "Adam with bias correction (beta1, beta2, eps 1e-8). Native decay: L2 on the gradient.",
    paper="Kingma & Ba 2015, arXiv:1412.6980",
)
def adam(groups: list[dict[str, Any]], o: OptimizerOptions) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps_or(1e-8))


@OPTIMIZERS.register(
    "nadam",
    "NAdam: Adam with Nesterov momentum and Dozat's momentum schedule (ψ = 0.004; eps 1e-8). Native decay: L2.",
    paper="Dozat 2016, ICLR workshop",
)
def nadam(groups: list[dict[str, Any]], o: OptimizerOptions) -> torch.optim.Optimizer:
    return torch.optim.NAdam(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps_or(1e-8))


@OPTIMIZERS.register(
    "adamw",
    "AdamW: Adam with decoupled weight decay w ← w − lr·(update + wd·w) (eps 1e-8). Native decay: decoupled.",
    paper="Loshchilov & Hutter 2019, arXiv:1711.05101",
)
def adamw(groups: list[dict[str, Any]], o: OptimizerOptions) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps_or(1e-8))


@OPTIMIZERS.register(
    "lars",
    "LARS: per layer, local lr = lars_eta·‖w‖ / (‖g‖ + wd·‖w‖) (η 0.001); v ← μv + local_lr·(g + wd·w), "
    "w ← w − lr·v. With exclude_1d, biases and norm parameters skip decay and adaptation. Native decay: "
    "inside the trust ratio.",
    paper="You, Gitman & Ginsburg 2017, arXiv:1708.03888",
)
def lars(groups: list[dict[str, Any]], o: OptimizerOptions) -> torch.optim.Optimizer:
    # timm's Lars adapts a group only if its decay is non-zero or always_adapt is set;
    # "adapt" marks the groups the paper adapts (all, or all but the 1-D parameters).
    for g in groups:
        g["always_adapt"] = g.pop("adapt")
    return Lars(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, trust_coeff=o.lars_eta, eps=o.eps_or(1e-8))


@OPTIMIZERS.register(
    "lamb",
    "LAMB: Adam moments with bias correction, update u = m̂/(√v̂ + eps) + wd·w, w ← w − lr·‖w‖/‖u‖·u per "
    "layer (eps 1e-6, no gradient clipping). With exclude_1d, biases and norm parameters take a plain Adam "
    "step. Native decay: inside the trust ratio.",
    paper="You et al. 2020, arXiv:1904.00962",
)
def lamb(groups: list[dict[str, Any]], o: OptimizerOptions) -> torch.optim.Optimizer:
    for g in groups:
        g["always_adapt"] = g.pop("adapt")
    # max_grad_norm=None: the paper's LAMB has no global gradient clipping (timm's default clips at 1.0).
    return Lamb(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps_or(1e-6), max_grad_norm=None)


@OPTIMIZERS.register(
    "adabound",
    "AdaBound: Adam with its step size clipped into bounds converging to adabound_final_lr (0.1, scaled with "
    "the lr schedule) at speed adabound_gamma (1e-3); eps 1e-8. Native decay: L2.",
    paper="Luo et al. 2019, arXiv:1902.09843",
)
def adabound(groups: list[dict[str, Any]], o: OptimizerOptions) -> torch.optim.Optimizer:
    return AdaBound(
        groups, lr=o.lr, betas=(o.beta1, o.beta2), final_lr=o.adabound_final_lr, gamma=o.adabound_gamma, eps=o.eps_or(1e-8)
    )


@OPTIMIZERS.register(
    "adax",
    "AdaX: long-term memory v ← (1 + adax_beta2)·v + adax_beta2·g² (1e-4), bias-corrected by (1 + β2)^t − 1; "
    "no bias correction of m; eps 1e-12. Native decay: L2.",
    paper="Li et al. 2020, arXiv:2004.09740",
)
def adax(groups: list[dict[str, Any]], o: OptimizerOptions) -> torch.optim.Optimizer:
    return AdaX(groups, lr=o.lr, betas=(o.beta1, o.adax_beta2), eps=o.eps_or(1e-12))

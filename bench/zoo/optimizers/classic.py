"""The optimizers torch.optim ships: SGD (momentum, Nesterov), Adagrad, Adadelta, RMSprop,
Adam, NAdam, AdamW, used as they are."""

from __future__ import annotations

from typing import Any

import torch

from bench.errors import ConfigError
from bench.zoo.optimizers import ADAM_OPTIONS, EPS, MOMENTUM, NESTEROV, eps_or
from bench.zoo.registry import OPTIMIZERS, Option

ADADELTA_RHO = Option("adadelta_rho", float, 0.9, "Adadelta: decay of both running averages", ge=0, lt=1)
RMSPROP_ALPHA = Option("rmsprop_alpha", float, 0.99, "RMSprop: smoothing of the squared-gradient average", ge=0, lt=1)


@OPTIMIZERS.register(
    "sgd",
    "SGD; heavy-ball momentum with `momentum` (v ← μv + g, w ← w − lr·v), Nesterov with `nesterov=true`. "
    "Native decay: L2.",
    paper="Robbins & Monro 1951; Polyak 1964; Sutskever et al. 2013 (Nesterov)",
    options=(MOMENTUM, NESTEROV),
)
def sgd(groups: list[dict[str, Any]], *, lr: float, momentum: float, nesterov: bool) -> torch.optim.Optimizer:
    if nesterov and momentum <= 0:
        raise ConfigError(
            f"Nesterov momentum needs momentum > 0; got momentum={momentum} with nesterov=true. "
            "Set momentum (e.g. 0.9) or nesterov=false."
        )
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


@OPTIMIZERS.register(
    "adagrad",
    "Adagrad: per-coordinate lr / √(Σ g²) (eps 1e-10). Native decay: L2.",
    paper="Duchi, Hazan & Singer 2011, JMLR 12",
    options=(EPS,),
)
def adagrad(groups: list[dict[str, Any]], *, lr: float, optimizer_eps: float | None) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(groups, lr=lr, eps=eps_or(optimizer_eps, 1e-10))


@OPTIMIZERS.register(
    "adadelta",
    "Adadelta: RMS of past updates over RMS of gradients (adadelta_rho 0.9, eps 1e-6); lr scales the "
    "update (1.0 is the paper's). Native decay: L2.",
    paper="Zeiler 2012, arXiv:1212.5701",
    options=(ADADELTA_RHO, EPS),
)
def adadelta(groups: list[dict[str, Any]], *, lr: float, adadelta_rho: float, optimizer_eps: float | None) -> torch.optim.Optimizer:
    return torch.optim.Adadelta(groups, lr=lr, rho=adadelta_rho, eps=eps_or(optimizer_eps, 1e-6))


@OPTIMIZERS.register(
    "rmsprop",
    "RMSprop: lr · g / (√(moving mean of g²) + eps) (rmsprop_alpha 0.99, eps 1e-8, no momentum). Native decay: L2.",
    paper="Tieleman & Hinton 2012, Coursera lecture 6.5",
    options=(RMSPROP_ALPHA, EPS),
)
def rmsprop(groups: list[dict[str, Any]], *, lr: float, rmsprop_alpha: float, optimizer_eps: float | None) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(groups, lr=lr, alpha=rmsprop_alpha, eps=eps_or(optimizer_eps, 1e-8))


@OPTIMIZERS.register(
    "adam",
    "Adam with bias correction (beta1, beta2, eps 1e-8). Native decay: L2 on the gradient.",
    paper="Kingma & Ba 2015, arXiv:1412.6980",
    options=ADAM_OPTIONS,
)
def adam(groups: list[dict[str, Any]], *, lr: float, beta1: float, beta2: float, optimizer_eps: float | None) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=lr, betas=(beta1, beta2), eps=eps_or(optimizer_eps, 1e-8))


@OPTIMIZERS.register(
    "nadam",
    "NAdam: Adam with Nesterov momentum and Dozat's momentum schedule (ψ = 0.004; eps 1e-8). Native decay: L2.",
    paper="Dozat 2016, ICLR workshop",
    options=ADAM_OPTIONS,
)
def nadam(groups: list[dict[str, Any]], *, lr: float, beta1: float, beta2: float, optimizer_eps: float | None) -> torch.optim.Optimizer:
    return torch.optim.NAdam(groups, lr=lr, betas=(beta1, beta2), eps=eps_or(optimizer_eps, 1e-8))


@OPTIMIZERS.register(
    "adamw",
    "AdamW: Adam with decoupled weight decay w ← w − lr·(update + wd·w) (eps 1e-8). Native decay: decoupled.",
    paper="Loshchilov & Hutter 2019, arXiv:1711.05101",
    options=ADAM_OPTIONS,
)
def adamw(groups: list[dict[str, Any]], *, lr: float, beta1: float, beta2: float, optimizer_eps: float | None) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), eps=eps_or(optimizer_eps, 1e-8))

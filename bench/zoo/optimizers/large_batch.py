"""Large-batch optimizers with layer-wise trust ratios: LARS and LAMB, timm's implementations
(``timm.optim.Lars``, ``timm.optim.Lamb``), configured as the papers define them."""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import Lamb, Lars

from bench.zoo.optimizers import ADAM_OPTIONS, EPS, MOMENTUM, NESTEROV, eps_or
from bench.zoo.registry import OPTIMIZERS, Option

LARS_ETA = Option("lars_eta", float, 0.001, "LARS trust coefficient η", ge=0)


@OPTIMIZERS.register(
    "lars",
    "LARS: per layer, local lr = lars_eta·‖w‖ / (‖g‖ + wd·‖w‖) (η 0.001); v ← μv + local_lr·(g + wd·w), "
    "w ← w − lr·v. With exclude_1d, biases and norm parameters skip decay and adaptation. Native decay: "
    "inside the trust ratio.",
    paper="You, Gitman & Ginsburg 2017, arXiv:1708.03888",
    options=(MOMENTUM, NESTEROV, LARS_ETA, EPS),
)
def lars(groups: list[dict[str, Any]], *, lr: float, momentum: float, nesterov: bool, lars_eta: float, optimizer_eps: float | None) -> torch.optim.Optimizer:
    # timm's Lars adapts a group only if its decay is non-zero or always_adapt is set;
    # "adapt" marks the groups the paper adapts (all, or all but the 1-D parameters).
    for g in groups:
        g["always_adapt"] = g.pop("adapt")
    return Lars(groups, lr=lr, momentum=momentum, nesterov=nesterov, trust_coeff=lars_eta, eps=eps_or(optimizer_eps, 1e-8))


@OPTIMIZERS.register(
    "lamb",
    "LAMB: Adam moments with bias correction, update u = m̂/(√v̂ + eps) + wd·w, w ← w − lr·‖w‖/‖u‖·u per "
    "layer (eps 1e-6, no gradient clipping). With exclude_1d, biases and norm parameters take a plain Adam "
    "step. Native decay: inside the trust ratio.",
    paper="You et al. 2020, arXiv:1904.00962",
    options=ADAM_OPTIONS,
)
def lamb(groups: list[dict[str, Any]], *, lr: float, beta1: float, beta2: float, optimizer_eps: float | None) -> torch.optim.Optimizer:
    for g in groups:
        g["always_adapt"] = g.pop("adapt")
    # max_grad_norm=None: the paper's LAMB has no global gradient clipping (timm's default clips at 1.0).
    return Lamb(groups, lr=lr, betas=(beta1, beta2), eps=eps_or(optimizer_eps, 1e-6), max_grad_norm=None)

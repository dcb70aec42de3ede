"""Optimizers, by name.

The registry is data (the timm habit): each entry is a frozen record naming the
torch.optim class and which hyperparameters it takes, so a variant is a record with
other defaults, not another if/elif branch. Every builder has one signature::

    build(params, *, lr, momentum, nesterov, weight_decay, beta1, beta2, eps) -> Optimizer

Hyperparameters an optimizer does not take are ignored (documented per entry).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from bench.errors import ConfigError
from bench.registry import Registry


@dataclass(frozen=True)
class OptimizerEntry:
    cls: type[torch.optim.Optimizer]
    takes_momentum: bool = False
    takes_betas: bool = False

    def __call__(
        self,
        params: Iterable[Any],
        *,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> torch.optim.Optimizer:
        kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
        if self.takes_momentum:
            if nesterov and momentum <= 0:
                raise ConfigError(
                    f"Nesterov momentum needs momentum > 0; got momentum={momentum} with "
                    "nesterov=true. Set momentum (e.g. 0.9) or nesterov=false."
                )
            kwargs.update(momentum=momentum, nesterov=nesterov)
        if self.takes_betas:
            kwargs.update(betas=(beta1, beta2), eps=eps)
        return self.cls(params, **kwargs)


OPTIMIZERS: Registry[OptimizerEntry] = Registry("optimizer")

OPTIMIZERS.register(
    "sgd",
    "SGD; heavy-ball momentum with `momentum`, Nesterov with `nesterov=true`; L2 weight decay.",
    paper="Robbins & Monro 1951; Polyak 1964; Sutskever et al. 2013 (Nesterov)",
)(OptimizerEntry(torch.optim.SGD, takes_momentum=True))
OPTIMIZERS.register(
    "adam",
    "Adam with bias correction (beta1, beta2, eps); weight decay as L2 on the gradient.",
    paper="Kingma & Ba 2015, arXiv:1412.6980",
)(OptimizerEntry(torch.optim.Adam, takes_betas=True))
OPTIMIZERS.register(
    "adamw",
    "AdamW: Adam with decoupled weight decay w ← w − lr·(update + wd·w).",
    paper="Loshchilov & Hutter 2019, arXiv:1711.05101",
)(OptimizerEntry(torch.optim.AdamW, takes_betas=True))

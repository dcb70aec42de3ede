"""AdaX (Li et al. 2020, arXiv:2004.09740): Adam with an exponential *long-term* memory
of past squared gradients instead of a moving average.

Written here because neither torch.optim nor timm.optim ships it. The paper's
Algorithm 1::

    m_t = β1 m_{t−1} + (1 − β1) g_t
    v_t = (1 + β2) v_{t−1} + β2 g_t²            (β2 small: 1e-4; v only grows)
    v̂_t = v_t / ((1 + β2)^t − 1)
    w ← w − lr · m_t / (√v̂_t + ε)

There is no bias correction of m (the paper's choice). Weight decay is L2 (added to the
gradient), as in the authors' AdaX (their AdaXW is this with decoupled decay, available
here through ``weight_decay_mode=decoupled``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from bench.zoo.optimizers import BETA1, EPS, eps_or
from bench.zoo.registry import OPTIMIZERS, Option

ADAX_BETA2 = Option("adax_beta2", float, 1e-4, "AdaX: growth rate of the long-term second moment", gt=0)


class AdaX(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1.5e-3,
        betas: tuple[float, float] = (0.9, 1e-4),
        eps: float = 1e-12,
        weight_decay: float = 0.0,
    ):
        if not betas[1] > 0:
            raise ValueError(f"AdaX's beta2 must be > 0; got {betas[1]}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(1 + beta2).addcmul_(grad, grad, value=beta2)
                v_hat = v / ((1 + beta2) ** state["step"] - 1)
                p.addcdiv_(m, v_hat.sqrt_().add_(group["eps"]), value=-group["lr"])
        return loss


@OPTIMIZERS.register(
    "adax",
    "AdaX: long-term memory v ← (1 + adax_beta2)·v + adax_beta2·g² (1e-4), bias-corrected by (1 + β2)^t − 1; "
    "no bias correction of m; eps 1e-12. Native decay: L2.",
    paper="Li et al. 2020, arXiv:2004.09740",
    options=(BETA1, ADAX_BETA2, EPS),
)
def adax(groups: list[dict[str, Any]], *, lr: float, beta1: float, adax_beta2: float, optimizer_eps: float | None) -> torch.optim.Optimizer:
    return AdaX(groups, lr=lr, betas=(beta1, adax_beta2), eps=eps_or(optimizer_eps, 1e-12))

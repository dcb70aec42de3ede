"""AdaBound (Luo et al. 2019, arXiv:1902.09843): Adam whose per-coordinate step size is
clipped into bounds that tighten, over training, onto a fixed SGD learning rate.

Written here because neither torch.optim nor timm.optim ships it (the authors' package,
``adabound``, is unmaintained since 2019 and uses removed ``Tensor.add_`` signatures).
The update follows the authors' reference implementation, which is also the paper's
Algorithm 2 without the 1/√t factor that appears only in the convergence analysis::

    m ← β1 m + (1 − β1) g          v ← β2 v + (1 − β2) g²
    α_t   = lr · √(1 − β2^t) / (1 − β1^t)                (Adam's bias-corrected step)
    η*    = final_lr · lr / lr₀                          (follows the lr schedule)
    η_l(t) = η* (1 − 1 / (γ t + 1)),   η_u(t) = η* (1 + 1 / (γ t))
    w ← w − clip(α_t / (√v + ε), η_l(t), η_u(t)) · m

Weight decay is L2 (added to the gradient), as in the reference code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from bench.zoo.optimizers import ADAM_OPTIONS, eps_or
from bench.zoo.registry import OPTIMIZERS, Option

ADABOUND_FINAL_LR = Option(
    "adabound_final_lr", float, 0.1, "AdaBound: the SGD learning rate the bounds converge to (scaled with the lr schedule)",
    ge=0,
)
ADABOUND_GAMMA = Option("adabound_gamma", float, 0.001, "AdaBound: convergence speed of the bounds", ge=0)


class AdaBound(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        final_lr: float = 0.1,
        gamma: float = 1e-3,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"AdaBound's gamma must lie in [0, 1); got {gamma}")
        defaults = dict(lr=lr, betas=betas, final_lr=final_lr, gamma=gamma, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        for group in self.param_groups:
            group.setdefault("initial_lr_for_bounds", group["lr"])

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
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                final_lr = group["final_lr"] * group["lr"] / group["initial_lr_for_bounds"]
                lower, upper = bounds(final_lr, group["gamma"], t)
                rate = (step_size / (v.sqrt() + group["eps"])).clamp_(lower, upper)
                p.sub_(rate * m)
        return loss


def bounds(final_lr: float, gamma: float, t: int) -> tuple[float, float]:
    """The paper's bound functions at step ``t`` (1-based): both converge to ``final_lr``."""
    return final_lr * (1 - 1 / (gamma * t + 1)), final_lr * (1 + 1 / (gamma * t))


@OPTIMIZERS.register(
    "adabound",
    "AdaBound: Adam with its step size clipped into bounds converging to adabound_final_lr (0.1, scaled with "
    "the lr schedule) at speed adabound_gamma (1e-3); eps 1e-8. Native decay: L2.",
    paper="Luo et al. 2019, arXiv:1902.09843",
    options=(*ADAM_OPTIONS, ADABOUND_FINAL_LR, ADABOUND_GAMMA),
)
def adabound(groups: list[dict[str, Any]], *, lr: float, beta1: float, beta2: float, optimizer_eps: float | None, adabound_final_lr: float, adabound_gamma: float) -> torch.optim.Optimizer:
    return AdaBound(
        groups, lr=lr, betas=(beta1, beta2), final_lr=adabound_final_lr, gamma=adabound_gamma, eps=eps_or(optimizer_eps, 1e-8)
    )

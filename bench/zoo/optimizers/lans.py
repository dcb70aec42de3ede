"""LANS (Zheng et al. 2020, "Accelerated Large Batch Optimization of BERT Pretraining in 54
Minutes", arXiv:2006.13484, Algorithm 2): LAMB with a per-block normalized gradient and a
Nesterov-style step made of two trust-ratio updates.

Written here because neither torch.optim nor timm.optim ships it. For each block (here:
each parameter tensor) x with gradient g, at step t:

    g̃   = g / (‖g‖ + ε)                      (left as is where ‖g‖ = 0)
    m   ← β1 m + (1 − β1) g̃,    v ← β2 v + (1 − β2) g̃²
    d   = √(v / (1 − β2^t)) + ε
    r   = m / (1 − β1^t) / d + λ x           (the momentum direction, as in LAMB)
    c   = g̃ / d + λ x                        (the current normalized gradient)
    x   ← x − lr · β1 · ‖x‖/‖r‖ · r − lr · (1 − β1) · ‖x‖/‖c‖ · c

r and c use the same x (before the step), and a trust ratio ‖x‖/‖·‖ is 1 where either norm
is 0. This is the authors' code: the fused kernel of GluonNLP (dmlc/gluon-nlp,
``src/gluonnlp/torch/clib/multi_tensor_lans.cu``, stages 1 and 2, decoupled decay mode,
``normalize_grad=True``, ``grad_averaging=True``), which adds ε to the gradient norm and
uses ``eps`` 1e-6. The paper's φ (a bound on ‖x‖) is the identity there and here.

Weight decay λ is inside both trust ratios (``adam_w_mode`` in the authors' code). The
authors' BERT recipe puts biases and LayerNorm parameters in a group with λ = 0 that still
takes the trust-ratio step, so here ``wd_exclude_1d`` removes their decay only: every group
is adapted (unlike LARS and LAMB here, whose exempt group takes a plain step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from bench.zoo.optimizers import ADAM_OPTIONS, eps_or
from bench.zoo.registry import OPTIMIZERS


def _trust(w_norm: torch.Tensor, u_norm: torch.Tensor) -> torch.Tensor:
    """‖w‖ / ‖u‖, or 1 where either is 0 (no host synchronization)."""
    ok = (w_norm > 0) & (u_norm > 0)
    return torch.where(ok, w_norm / torch.where(ok, u_norm, torch.ones_like(u_norm)), torch.ones_like(w_norm))


class Lans(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ):
        if not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1:
            raise ValueError(f"LANS needs betas in [0, 1); got {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                grad = p.grad
                g_norm = torch.linalg.vector_norm(grad)
                grad = torch.where(g_norm > 0, grad / (g_norm + eps), grad)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (v / (1 - beta2**t)).sqrt_().add_(eps)
                r = m.div(1 - beta1**t).div_(denom)
                c = grad.div(denom)
                if decay:
                    r.add_(p, alpha=decay)
                    c.add_(p, alpha=decay)
                w_norm = torch.linalg.vector_norm(p)
                ratio_r = _trust(w_norm, torch.linalg.vector_norm(r))
                ratio_c = _trust(w_norm, torch.linalg.vector_norm(c))
                p.sub_(r.mul_(ratio_r * (lr * beta1)) + c.mul_(ratio_c * (lr * (1 - beta1))))
        return loss


@OPTIMIZERS.register(
    "lans",
    "LANS: per-tensor normalized gradient g/(‖g‖ + eps) into Adam moments with bias correction; the step is "
    "β1 × a LAMB step on m̂/(√v̂ + eps) + wd·w plus (1 − β1) × a LAMB step on the normalized gradient "
    "g̃/(√v̂ + eps) + wd·w, each scaled by its own trust ratio ‖w‖/‖u‖ (eps 1e-6). With exclude_1d, biases and "
    "norm parameters skip decay but keep the trust ratio, as in the authors' recipe. Native decay: inside the "
    "trust ratios.",
    paper="Zheng et al. 2020, arXiv:2006.13484 (Algorithm 2)",
    options=ADAM_OPTIONS,
)
def lans(groups: list[dict[str, Any]], *, lr: float, beta1: float, beta2: float, optimizer_eps: float | None) -> torch.optim.Optimizer:
    for g in groups:
        g.pop("adapt", None)  # every group takes the trust-ratio step (see the module docstring)
    return Lans(groups, lr=lr, betas=(beta1, beta2), eps=eps_or(optimizer_eps, 1e-6))

"""Parameter groups and the form weight decay takes.

Two choices every optimizer study must state:

- **which parameters decay**: all of them, or all but the 1-D ones (biases and the norm
  layers' γ, β), as in Goyal et al. 2017 and most large-batch recipes, together with the
  parameters a model names in ``no_weight_decay()`` (timm's convention: a ViT's position
  embedding and class token). The exempt group also skips LARS/LAMB's layer-wise
  adaptation, as their reference implementations do.
- **how decay is applied** (``weight_decay_mode``):
  ``native`` — the optimizer's own form (L2 for SGD and Adam, decoupled for AdamW, inside
  the trust ratio for LARS and LAMB; each registry entry says which);
  ``l2`` — λw added to the gradient before the optimizer sees it;
  ``decoupled`` — w ← w − lr_t·λ·w before the update, with lr_t the scheduled learning rate
  (Loshchilov & Hutter 2019; Adam with it is AdamW, SGD with it is SGDW);
  ``eps-shifted`` — ``l2`` with each conv filter's spread pulled toward ε instead of 0
  (Li et al. 2019, :mod:`.eps_shifted`);
  ``orthonormal`` — ``l2`` with each conv and linear weight pulled toward orthonormal
  filters instead of 0 (Xie et al. 2017, :mod:`.orthonormal`).
  The overrides are optimizer step pre-hooks, so they stack on any optimizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from bench.errors import ConfigError, UnknownNameError
from bench.zoo.optimizers import WD_SHIFT_EPS, WEIGHT_DECAY_MODES, eps_shifted, orthonormal
DECAY_KEY = "bench_decay"  # the decay a pre-hook applies, kept in the group when the optimizer gets 0


def param_groups(params: Iterable[Any] | nn.Module, weight_decay: float, *, exclude_1d: bool = False) -> list[dict[str, Any]]:
    """Trainable parameters in groups: ``adapt`` marks where layer-wise adaptation applies."""
    named_exempt: set[int] = set()
    if isinstance(params, nn.Module):  # no_weight_decay() of the model or any module inside it
        names = {
            f"{prefix}.{name}" if prefix else name
            for prefix, module in params.named_modules()
            if callable(getattr(module, "no_weight_decay", None))
            for name in module.no_weight_decay()
        }
        named_exempt = {id(p) for name, p in params.named_parameters() if name in names}
    tensors = params.parameters() if isinstance(params, nn.Module) else params
    items = list(tensors)
    if items and isinstance(items[0], dict):
        return [{"weight_decay": weight_decay, "adapt": True, **g} for g in items]
    trainable = [p for p in items if p.requires_grad]
    if not exclude_1d:
        return [{"params": trainable, "weight_decay": weight_decay, "adapt": True}]
    decay = [p for p in trainable if p.ndim > 1 and id(p) not in named_exempt]
    exempt = [p for p in trainable if p.ndim <= 1 or id(p) in named_exempt]
    groups = [{"params": decay, "weight_decay": weight_decay, "adapt": True}]
    if exempt:
        groups.append({"params": exempt, "weight_decay": 0.0, "adapt": False})
    return [g for g in groups if g["params"]]


def check_mode(mode: str) -> None:
    if mode not in WEIGHT_DECAY_MODES:
        raise UnknownNameError("weight_decay_mode", mode, WEIGHT_DECAY_MODES)


def take_decay(groups: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """For the ``l2``/``decoupled`` overrides, moves each group's decay out of the
    optimizer's reach (the optimizer sees 0; :func:`attach` applies it)."""
    check_mode(mode)
    if mode == "native":
        return groups
    return [{**g, DECAY_KEY: g.get("weight_decay", 0.0), "weight_decay": 0.0} for g in groups]


def attach(
    optimizer: torch.optim.Optimizer, mode: str, *, params: Any = None, shift_eps: float = WD_SHIFT_EPS.default
) -> None:
    """Registers the pre-step hook that applies an overriding decay form. ``params``, when
    it is the model, tells the orthonormal form which tensors are layer weights (without
    it: every decayed tensor of 2 dimensions or more); ``shift_eps`` is the ε-shifted ε."""
    check_mode(mode)
    if mode == "native":
        return
    decayed = [p for group in optimizer.param_groups if group.get(DECAY_KEY, 0.0) for p in group["params"]]
    if mode == "eps-shifted" and not any(eps_shifted.is_filter_bank(p) for p in decayed):
        raise ConfigError(
            "weight_decay_mode=eps-shifted shifts the decay of conv filters (4-D conv weights), but none of the "
            "decayed parameters is one (an MLP, or weight_decay=0). Use weight_decay_mode=l2 for this model."
        )
    matrices: set[int] = set()
    if mode == "orthonormal":
        weights = orthonormal.layer_weights(params) if isinstance(params, nn.Module) else [p for p in decayed if p.ndim > 1]
        matrices = {id(w) for w in weights}
        if not matrices & {id(p) for p in decayed}:
            raise ConfigError(
                "weight_decay_mode=orthonormal replaces the decay of conv and linear weights, but none of them is "
                "trained with decay (train_only_norm, or weight_decay=0)."
            )

    @torch.no_grad()
    def apply(opt: torch.optim.Optimizer, *_: Any) -> None:
        for group in opt.param_groups:
            decay = group.get(DECAY_KEY, 0.0)
            if not decay:
                continue
            grads = [p for p in group["params"] if p.grad is not None]
            if mode == "decoupled":
                for p in grads:
                    p.mul_(1 - group["lr"] * decay)
                continue
            for p in grads:
                if mode == "eps-shifted" and eps_shifted.is_filter_bank(p):
                    p.grad.add_(eps_shifted.decay_gradient(p, shift_eps), alpha=decay)
                elif mode == "orthonormal" and id(p) in matrices:
                    p.grad.add_(orthonormal.gradient(p), alpha=decay)
                else:
                    p.grad.add_(p, alpha=decay)

    optimizer.register_step_pre_hook(apply)

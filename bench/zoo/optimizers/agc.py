"""Adaptive gradient clipping (Brock et al. 2021, "High-Performance Large-Scale Image
Recognition Without Normalization", arXiv:2102.06171, §4).

Each unit i of a parameter (a row of a linear weight, an output filter of a conv; the
whole tensor for a bias or other vector) has its gradient G_i clipped relative to its
weight W_i, norms taken over the unit's fan-in:

    if ‖G_i‖ / max(‖W_i‖, ε) > λ:   G_i ← λ · max(‖W_i‖, ε) / ‖G_i‖ · G_i,

with ε = 1e-3, so a unit's update can change its weights by at most a fraction λ (times
the learning rate). The final linear (classifier) layer is not clipped. The math is
``timm.utils.agc.adaptive_clip_grad``; this module chooses which parameters it sees.

Parameters are clipped tensor by tensor as stored: a reparametrized layer's parameters
(Weight Normalization's g of shape (C, 1, ...) and v, a scaled-WS conv's gain of shape
(C, 1, 1, 1)) are each clipped per output unit, each against its own norm.
"""

from __future__ import annotations

from torch import nn

from bench.errors import ConfigError


def classifier(model: nn.Module) -> nn.Module | None:
    """The model's final linear layer: the last module marked ``is_classifier = True`` in
    ``model.modules()`` order if any is marked, else the last ``nn.Linear`` (weight-normed
    and cosine linears are ``nn.Linear`` subclasses); ``None`` if the model has neither."""
    marked = [m for m in model.modules() if getattr(m, "is_classifier", False)]
    if marked:
        return marked[-1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def classifier_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of the classifier (see :func:`classifier`), including those a
    parametrization stores in place of the weight (``parametrizations.weight.original0``
    and ``original1`` for Weight Normalization)."""
    head = classifier(model)
    return list(head.parameters()) if head is not None else []


def clip_gradients(model: nn.Module, clip: float, eps: float = 1e-3) -> None:
    """Clip the gradients of every parameter except the classifier's, in place, unit-wise
    to ‖G_i‖ ≤ λ · max(‖W_i‖, ε) with λ = ``clip`` (Brock et al. 2021, arXiv:2102.06171). Parameters without a gradient are skipped. Call between ``backward()`` and
    the optimizer step."""
    if not clip > 0:
        raise ConfigError(
            f"Adaptive gradient clipping bounds each unit's gradient norm by λ·‖W‖, so λ must be > 0; got {clip}. "
            "The paper uses λ = 0.01 at batch 4096 (larger λ for smaller batches); set agc_clip=0 to turn clipping off."
        )
    excluded = {id(p) for p in classifier_parameters(model)}
    params = [p for p in model.parameters() if p.grad is not None and id(p) not in excluded]
    from timm.utils.agc import adaptive_clip_grad  # here: importing timm.utils loads most of timm

    adaptive_clip_grad(params, clip_factor=clip, eps=eps)

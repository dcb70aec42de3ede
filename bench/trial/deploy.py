"""An architecture's inference form, evaluated at the end of a trial.

Some architectures train one network and deploy another that computes the same function:
RepVGG (Ding et al. 2021) trains 3×3 + 1×1 + identity branches per block and folds them,
with their BatchNorms, into a single 3×3 conv (:func:`bench.zoo.archs.repvgg.deploy`). The
paper's claim is exact equality, so a trial of such an architecture checks it on its own
weights: after the last epoch the deployed network is built from the trained one and
evaluated on the validation split beside it, under the same precision, giving the run
metrics ``deployed_val_acc``, ``deployed_val_loss`` and ``deployed_logit_error`` (the
largest absolute difference between the two networks' validation logits, relative to the
largest logit magnitude: float32 rounding is about 1e-6; a folding error is of the order
of the logits). The trained network's numbers are untouched (the deployed one is a copy).

An architecture declares its inference form by naming, in its registry entry's ``info``,
the function of its module that builds it: ``info={"deploy": "deploy"}``, a function of the
trained model returning the deployed one (any wrapper around the architecture included),
which raises :class:`~bench.errors.ConfigError` when the trial's norm or conv cannot be
folded; such a trial records no deployed metrics (and logs why).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.errors import ConfigError
from bench.spec import TrialConfig
from bench.zoo.registry import ARCHS

log = logging.getLogger(__name__)


def deploy_function(config: TrialConfig) -> Callable[[nn.Module], nn.Module] | None:
    """The function building the trial's architecture's inference form, or None when it has none."""
    entry = ARCHS.entry(config.arch)
    name = entry.info.get("deploy")
    if not name:
        return None
    return getattr(importlib.import_module(entry.module), name)


@torch.no_grad()
def deployed_metrics(
    config: TrialConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor, evaluate: Callable[..., tuple[float, float]],
    *, channels_last: bool = False, batch: int = 1024,
) -> dict[str, Any]:
    """``deployed_val_loss``, ``deployed_val_acc`` and ``deployed_logit_error`` of the
    trained ``model``'s inference form on ``(x, y)`` (call under the trial's precision);
    empty when the architecture has none or this trial's cannot be built."""
    build = deploy_function(config)
    if build is None:
        return {}
    try:
        deployed = build(model)
    except ConfigError as exc:
        log.info("No deployed form evaluated: %s", exc)
        return {}
    loss, acc = evaluate(deployed, x, y, channels_last=channels_last)
    model.eval()
    largest, error = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(x), batch):
        images = x[i : i + batch]
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        trained = model(images).float()
        largest = torch.maximum(largest, trained.abs().max())
        error = torch.maximum(error, (deployed(images).float() - trained).abs().max())
    return {
        "deployed_val_loss": loss,
        "deployed_val_acc": acc,
        "deployed_logit_error": (error / largest).item() if largest.item() > 0 else error.item(),
    }

"""An exponential moving average (EMA) of the model, evaluated beside it; EMAN's statistics.

Any trial can keep, beside the model it trains (the student), a copy whose weights are an
exponential moving average of the student's (``ema_decay`` = m > 0). It starts as a copy
of the initialized student and is updated after every optimizer step, θ being the
student's parameters after step t:

    θ'₀ = θ₀,    θ'ₜ = m·θ'ₜ₋₁ + (1 − m)·θₜ

and evaluated, in eval mode, after every epoch (per-epoch ``ema_val_loss`` and
``ema_val_acc``; the run's ``final_ema_val_acc``, ``best_ema_val_acc`` and
``final_ema_val_loss``, :mod:`bench.metrics`). What its normalization statistics (the
buffers: BatchNorm's running mean and variance) are is ``ema_norm``:

- ``eman`` — Exponential Moving Average Normalization (Cai, Ravichandran, Maji, Fowlkes,
  Tu & Soatto, CVPR 2021, arXiv:2101.08482): the statistics are EMAs, with the same m, of
  the student's, μ'ₜ = m·μ'ₜ₋₁ + (1 − m)·μₜ and σ'²ₜ = m·σ'²ₜ₋₁ + (1 − m)·σ²ₜ, so that
  they go with the averaged weights rather than with the student's current ones. As in
  the authors' code (amazon-science/exponential-moving-average-normalization,
  ``models/fixmatch.py``: ``FixMatch.momentum_update_ema``, called after
  ``optimizer.step()`` in ``main_fixmatch.py``; ``models/moco.py``:
  ``MoCoEMAN._momentum_update_key_encoder``): every entry of the state dict is averaged
  but ``num_batches_tracked``, which is copied (and so are the other integer counters,
  Batch Renorm's and MABN's step counts, which the authors' networks do not have); the
  EMA model is kept in eval mode.
- ``copy`` — the standard EMA of the weights (the mean teacher, MoCo's key encoder,
  Polyak averaging): the parameters are averaged and the buffers are the student's
  current ones, computed for the student's weights.
- ``recompute`` — the parameters are averaged and, before each evaluation, BatchNorm's
  statistics are re-estimated for the averaged weights, as SWA does (Izmailov et al.
  2018, arXiv:1803.05407; torch's ``torch.optim.swa_utils.update_bn``): reset, then a
  cumulative average over the first :data:`RECOMPUTE_BATCHES` = 100 batches of the
  epoch's batch order (fewer when the epoch has fewer), at the trial's batch size and
  without augmentation (the images the model is evaluated on are not augmented either).
  ``update_bn`` knows torch's BatchNorm layers only: a norm keeping statistics in buffers
  of its own (MABN, Batch Renorm, Ghost BN...) is refused with it.

With a norm that keeps no statistics (GroupNorm, LayerNorm) the three are the same.

Defaults: ``ema_decay`` 0, no EMA model (the trial runs exactly the operations it ran
before the option existed); the authors use m = 0.999 for MoCo and FixMatch
(``models/moco.py``, ``main_fixmatch.py``'s ``--ema-m``; their BYOL command 0.98), an
average over about 1/(1 − m) = 1000 steps — after t steps the initial weights still weigh
mᵗ (0.999^1000 ≈ 0.37), so a short run wants a smaller m. ``ema_norm`` eman, the paper's
method and what timm averages by default.

The update is timm's ``ModelEmaV3`` (``timm/utils/model_ema.py``; timm ≥ 0.9.16): the
same rule as θ' + (1 − m)·(θ − θ') in one ``torch._foreach_lerp_`` over the floating
state-dict entries, non-floating ones copied (``eman``), or over the parameters only,
buffers copied (``exclude_buffers``: ``copy`` and ``recompute``); it reads nothing back
to the host. The re-estimation is torch's ``update_bn``; written here are only the choice
of its batches and the random state it runs under. The EMA model draws no random numbers
from the trial's streams (``recompute``'s training-mode passes run under a forked random
state, for dropout and drop path), so the student trains exactly as it would without it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bench.errors import ConfigError
from bench.spec import TrialConfig
from bench.zoo.norms import is_norm_module

RECOMPUTE_BATCHES = 100  # ema_norm=recompute: training batches BatchNorm's statistics are re-estimated on


class ModelEma:
    """The EMA model of a trial (:mod:`bench.trial.ema`): timm's ``ModelEmaV3`` and, with
    ``recompute``, BatchNorm's statistics re-estimated before it is evaluated."""

    def __init__(self, model: nn.Module, decay: float, norm: str) -> None:
        # timm is imported by the trials that keep an EMA model only
        from timm.utils.model_ema import ModelEmaV3

        self.norm = norm
        self._ema = ModelEmaV3(model, decay=decay, exclude_buffers=norm != "eman")
        self._ema.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (in eval mode)."""
        return self._ema.module

    def update(self, model: nn.Module) -> None:
        """One EMA step toward ``model``'s current state (after an optimizer step)."""
        self._ema.update(model)

    def state_dict(self) -> dict[str, Any]:
        return self._ema.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._ema.load_state_dict(state)

    def for_evaluation(self, images: torch.Tensor, order: torch.Tensor, batch_size: int, channels_last: bool) -> nn.Module:
        """The averaged model, ready to evaluate: with ``recompute``, BatchNorm's statistics
        re-estimated on the first :data:`RECOMPUTE_BATCHES` batches of ``order`` (indices
        into the training ``images``)."""
        if self.norm == "recompute":
            count = min(RECOMPUTE_BATCHES, len(order) // batch_size)
            batches = (images[order[i * batch_size : (i + 1) * batch_size]] for i in range(count))
            if channels_last and images.dim() == 4:
                batches = (b.contiguous(memory_format=torch.channels_last) for b in batches)
            devices = [images.device] if images.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):  # training-mode passes (dropout) leave the trial's stream alone
                torch.optim.swa_utils.update_bn(batches, self.module)
        return self.module


def build_ema(config: TrialConfig, model: nn.Module) -> ModelEma | None:
    """The trial's EMA model, started from ``model`` as it is now (after any data-dependent
    initialization); None when ``ema_decay`` is 0."""
    if config.ema_decay == 0:
        return None
    check_ema(config, model)
    return ModelEma(model, config.ema_decay, config.ema_norm)


def check_ema(config: TrialConfig, model: nn.Module) -> None:
    """Refuses ``ema_norm: recompute`` for a model whose norms keep statistics that torch's
    ``update_bn`` would not re-estimate (it knows its own BatchNorm layers only). Works on
    a model built on the meta device."""
    if config.ema_decay == 0 or config.ema_norm != "recompute":
        return
    own = sorted({
        type(m).__name__ for m in model.modules()
        if is_norm_module(m) and not isinstance(m, _BatchNorm) and any(b.is_floating_point() for b in m.buffers(recurse=False))
    })
    if own:
        raise ConfigError(
            f"ema_norm=recompute re-estimates the EMA model's BatchNorm statistics with torch's update_bn, which knows "
            f"torch's BatchNorm layers only; norm={config.norm} keeps its statistics in buffers of its own "
            f"({', '.join(own)}), which would stay the student's. Use ema_norm=eman (their EMAs) or ema_norm=copy "
            f"(the student's) with norm={config.norm}."
        )

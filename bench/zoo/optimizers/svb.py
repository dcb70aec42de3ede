"""Singular Value Bounding (Jia, Tao, Gao & Xu 2017, "Improving training of deep neural
networks via Singular Value Bounding", CVPR, arXiv:1611.06013), stacked on any optimizer.

Definition (Algorithm 1). Every conv and linear weight, as the matrix
W ∈ ℝ^{out × C_in·k·k}, starts orthogonal (every singular value 1) and, after every T-th
optimizer step, has its singular values clipped to a narrow band around 1 while its
singular vectors are kept:

    W = U Σ Vᵀ   →   W ← U · clip(Σ, 1/(1+ε), 1+ε) · Vᵀ.

At ε = 0 this is the projection onto the orthogonal matrices, W ← U Vᵀ. Bounded Batch
Normalization (BBN, Algorithm 2), the paper's companion for the BatchNorm layers, runs at
the same steps when ``svb_bbn_eps`` = ε̃ is set: each layer's per-channel gains γ_i/σ_i
(σ_i = √(running var_i + ε_BN)) are held within a factor 1+ε̃ of their mean α,

    γ_i ← σ_i · α · clip(γ_i / (σ_i α), 1/(1+ε̃), 1+ε̃),

so that SVB's well-conditioned weights are not undone by an ill-conditioned BatchNorm.

Source: the authors' Torch code, kui-jia/svb: ``cnnTrain.lua`` (``fcConvWeightReguViaSVB``:
the SVD of each ``nn.Linear`` weight and of each conv weight reshaped to nOutputPlane ×
nInputPlane·kH·kW, every singular value above 1+ε set to 1+ε and every one below 1/(1+ε)
to 1/(1+ε); ``BNScalingBounding`` with bType ``BBN``; both called after ``optim.sgd`` in
``epochTrain``), ``Utils/configUtils.lua`` (``initFcConvLayer`` with ``orthogonal``: the
SVD of a Gaussian fan-in × fan-out matrix with every singular value set to 1) and
``optsArgParse.lua`` (svBFactor = 1+ε = 1.5, svBIter = 391, bnsBFactor = 1+ε̃ = 2).

Defaults and why: ε = 0.5, the code's svBFactor 1.5, with which its ResNet and Wide ResNet
results were run (the paper's plain-ConvNet study sweeps ε from 0.01 to 1); T = one epoch,
the code's 391 iterations being one CIFAR-10 epoch at batch 128 (given in epochs so it
means the same at any dataset size and batch); the orthogonal initialization on
(``svb_init``), as Algorithm 1 starts; BBN off unless ``svb_bbn_eps`` is set (the paper
reports SVB alone and SVB with BBN). Every conv and linear layer is bounded, the classifier
included, as in the code.

Where this departs from the released code: ``epochTrain`` bounds only when the iteration's
index within its epoch is a multiple of svBIter with at least 100 iterations left in the
epoch, and never in the last epoch; an epoch of CIFAR-10 at batch 128 has at most 391
iterations, so with the README's svBIter 391 the condition holds at no iteration. Here
the bound follows Algorithm 1: after every T-th optimizer step of the run.

Written here because no library ships it; the SVD is ``torch.linalg.svd``, the orthogonal
initialization ``torch.nn.init.orthogonal_`` (QR of a Gaussian matrix: the same
distribution as the code's SVD construction, every singular value 1). Implemented as
optimizer step hooks, like LAWN, so it composes with every registry entry; its step count
travels in the optimizer's state dict, so a checkpoint resumes it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bench.errors import ConfigError
from bench.zoo.optimizers.matrices import as_matrix, plain_layers

TECHNIQUE = "Singular Value Bounding (svb)"


@torch.no_grad()
def bound_singular_values(weight: Tensor, eps: float) -> None:
    """Clips the singular values of ``weight`` (as out × fan-in) to [1/(1+ε), 1+ε] in place,
    keeping its singular vectors."""
    u, s, vh = torch.linalg.svd(as_matrix(weight), full_matrices=False)
    weight.copy_(((u * s.clamp(1 / (1 + eps), 1 + eps)) @ vh).reshape(weight.shape))


@torch.no_grad()
def bound_batch_norm(norm: nn.Module, eps: float) -> None:
    """Bounded BatchNorm: γ_i/σ_i held within a factor 1+ε of their mean, in place."""
    std = torch.sqrt(norm.running_var + norm.eps)
    mean_gain = (norm.weight / std).mean()
    ratio = (norm.weight / (std * mean_gain)).clamp(1 / (1 + eps), 1 + eps)
    norm.weight.copy_(std * mean_gain * ratio)


def batch_norms(model: nn.Module) -> list[nn.Module]:
    """The layers BBN bounds: those with a per-channel gain γ and a running variance."""
    return [
        m for m in model.modules()
        if isinstance(getattr(m, "running_var", None), Tensor) and isinstance(getattr(m, "weight", None), nn.Parameter)
        and m.weight.ndim == 1 and m.weight.requires_grad
    ]


def orthogonal_init(model: nn.Module) -> None:
    """Algorithm 1's start: every conv and linear weight orthogonal (all singular values 1)."""
    with torch.no_grad():
        for layer in plain_layers(model, TECHNIQUE):
            matrix = nn.init.orthogonal_(torch.empty_like(as_matrix(layer.weight)))
            layer.weight.copy_(matrix.reshape(layer.weight.shape))


class Svb:
    """The bound's state: optimizer steps taken; it bounds after every ``period``-th."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, *, eps: float, period: int,
                 bbn_eps: float | None = None):
        if eps < 0:
            raise ConfigError(f"Singular Value Bounding keeps singular values in [1/(1+ε), 1+ε], so ε ≥ 0; got svb_eps={eps}.")
        if period < 1:
            raise ConfigError(f"Singular Value Bounding needs a period of at least one optimizer step; got {period}.")
        self.weights = [m.weight for m in plain_layers(model, TECHNIQUE) if m.weight.requires_grad]
        if not self.weights:
            raise ConfigError(f"{TECHNIQUE} bounds the trained conv and linear weights, but every one is frozen.")
        self.norms = batch_norms(model) if bbn_eps is not None else []
        if bbn_eps is not None and not self.norms:
            raise ConfigError(
                "svb_bbn_eps bounds the BatchNorm layers' gains γ/σ (Bounded BatchNorm), but the model has no trained "
                "BatchNorm layer with a running variance. Use a batch norm (bn, bn-ghost, brn) with norm_affine=true, "
                "or leave svb_bbn_eps unset."
            )
        self.eps, self.period, self.bbn_eps, self.steps = eps, period, bbn_eps, 0
        optimizer.register_step_post_hook(self._after)
        optimizer.register_state_dict_post_hook(self._save)
        optimizer.register_load_state_dict_pre_hook(self._load)

    def bound(self) -> None:
        """Bounds every weight (and, with BBN, every BatchNorm layer) now."""
        for weight in self.weights:
            bound_singular_values(weight, self.eps)
        for norm in self.norms:
            bound_batch_norm(norm, self.bbn_eps)

    def _after(self, *_: Any) -> None:
        self.steps += 1
        if self.steps % self.period == 0:
            self.bound()

    def _save(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        state_dict["svb"] = {"steps": self.steps}
        return state_dict

    def _load(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        state_dict = dict(state_dict)
        saved = state_dict.pop("svb", None)
        if saved is not None:
            self.steps = int(saved["steps"])
        return state_dict

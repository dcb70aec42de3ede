"""BatchNorm with inference example weighting (Summers & Dinneen, ICLR 2020, "Four Things
Everyone Should Know to Improve Batch Normalization", arXiv:1906.03548, "Inference Example
Weighting").

In training, an example is normalized with statistics it contributes to (its batch's); at
inference, BatchNorm normalizes it with the population (running) statistics alone. The
fix: at inference, blend the example's own statistics into the population's with weight
α. For example i and channel c, with E_i[·] the mean over the example's own positions
(H, W; its tokens in a ViT; the value itself for vector features) and μ, σ² the running
mean and variance:

    μ_i  = α E_i[x] + (1 − α) μ
    σ²_i = α E_i[x²] + (1 − α) (σ² + μ²) − μ_i²
    y    = γ (x − μ_i) / √(σ²_i + ε) + β

i.e. the mean and variance of a mixture giving the example weight α and the population
1 − α. α = 0 is BatchNorm's inference; α = 1 is InstanceNorm's statistics. Training is
BatchNorm's, unchanged (``F.batch_norm``, running mean and unbiased running variance with
``norm_momentum``), so α can be changed after training. The paper tunes α on held-out
data; unset, α here is 1/B with B the training batch the layer last saw, the weight the
example had in its own training batch (before any training step: α = 0). The state dict
has BatchNorm's keys plus ``train_batch`` (B).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.zoo.norms import BATCH_NORM_OPTIONS
from bench.zoo.registry import NORMS, Option

EXAMPLE_WEIGHT = Option(
    "example_weight", float, None,
    "inference example weighting α: the example's weight in its own normalization statistics at inference "
    "(0: BatchNorm; null: 1/B, B the training batch)", ge=0, le=1, nullable=True,
)


class ExampleWeightedBatchNorm(nn.Module):
    """BatchNorm whose inference statistics blend each example's own with the running ones
    (the module docstring gives the equations); ``alpha`` None means 1/B."""

    def __init__(self, num_features: int, alpha: float | None = None, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True):
        super().__init__()
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"the example weight α must lie in [0, 1]; got {alpha}.")
        self.num_features, self.alpha, self.eps, self.momentum = num_features, alpha, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.register_buffer("train_batch", torch.tensor(0, dtype=torch.long))
        self._train_batch = 0

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._train_batch = int(self.train_batch)

    def example_weight(self) -> float:
        """α at inference: the given one, else 1/B (0 before any training batch)."""
        if self.alpha is not None:
            return self.alpha
        return 1.0 / self._train_batch if self._train_batch else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"ExampleWeightedBatchNorm expects features shaped (N, {self.num_features}, ...); "
                             f"got {tuple(x.shape)}.")
        if self.training:
            if x.shape[0] != self._train_batch:
                self._train_batch = x.shape[0]
                self.train_batch.fill_(x.shape[0])
            self.num_batches_tracked.add_(1)
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum,
                                self.eps)
        alpha = self.example_weight()
        if alpha == 0.0:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mu, var = self.running_mean.view(shape), self.running_var.view(shape)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        own = tuple(range(2, x.dim()))
        mean_i = xf.mean(dim=own, keepdim=True) if own else xf
        square_i = xf.square().mean(dim=own, keepdim=True) if own else xf.square()
        mean = alpha * mean_i + (1 - alpha) * mu
        second = alpha * square_i + (1 - alpha) * (var + mu.square())
        variance = (second - mean.square()).clamp_min(0.0)
        y = (xf - mean) * torch.rsqrt(variance + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, alpha={self.alpha}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.weight is not None}")


@NORMS.register(
    "bn-example-weighted",
    "BatchNorm with inference example weighting: at inference each example is normalized with the mean and "
    "variance of a blend of its own statistics (weight example_weight = α; unset: 1/B) and the running ones; "
    "training is BatchNorm.",
    paper="Summers & Dinneen 2020, arXiv:1906.03548 (ICLR 2020, inference example weighting)",
    options=(EXAMPLE_WEIGHT, *BATCH_NORM_OPTIONS),
    tags=("batch", "unit-invariant"),
)
def bn_example_weighted(
    num_channels: int, dims: int, *, example_weight: float | None, norm_eps: float, norm_momentum: float,
    norm_affine: bool,
) -> nn.Module:
    return ExampleWeightedBatchNorm(num_channels, alpha=example_weight, eps=norm_eps, momentum=norm_momentum,
                                    affine=norm_affine)

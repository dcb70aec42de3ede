"""The basic normalizations: none, BatchNorm, LayerNorm, InstanceNorm, GroupNorm.

Definitions (x̂ = (x − μ) / sqrt(σ² + ε), then a per-channel affine γ x̂ + β):

- ``bn``  BatchNorm (Ioffe & Szegedy 2015): μ, σ² over (N, H, W) per channel; in eval
  mode the running mean and the *unbiased* running variance. torch's layer is exactly
  this, so it is used as is.
- ``ln``  LayerNorm for conv features: μ, σ² over (C, H, W) per sample, with a
  per-channel affine (the form GroupNorm's paper compares against; torch's
  ``nn.LayerNorm([C, H, W])`` would need H and W up front and learn a per-pixel affine).
- ``in``  InstanceNorm (Ulyanov et al. 2016): over (H, W) per sample and channel.
- ``gn``  GroupNorm (Wu & He 2018): over (C/G, H, W) per sample and group.
- ``none`` identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError
from bench.zoo.norms import BATCH_NORM_OPTIONS, GROUP_OPTIONS, NORM_AFFINE, NORM_EPS, groups_for
from bench.zoo.registry import NORMS


class LayerNorm2d(nn.Module):
    """LayerNorm over (C, H, W) of each sample, with a per-channel affine."""

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.num_channels, self.eps = num_channels, eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, x.shape[1:], eps=self.eps)
        if self.weight is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.weight is not None}"


@NORMS.register("none", "No normalization (identity).")
def none(num_channels: int, dims: int) -> nn.Module:
    return nn.Identity()


@NORMS.register(
    "bn",
    "BatchNorm: batch statistics per channel; running mean and unbiased variance at eval.",
    paper="Ioffe & Szegedy 2015, arXiv:1502.03167",
    options=BATCH_NORM_OPTIONS,
    tags=("batch", "unit-invariant"),
)
def bn(num_channels: int, dims: int, *, norm_eps: float, norm_momentum: float, norm_affine: bool) -> nn.Module:
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return cls(num_channels, eps=norm_eps, momentum=norm_momentum, affine=norm_affine)


@NORMS.register(
    "ln",
    "LayerNorm over (C, H, W) per sample, per-channel affine (norm_affine=false: none).",
    paper="Ba et al. 2016, arXiv:1607.06450",
    options=(NORM_EPS, NORM_AFFINE),
)
def ln(num_channels: int, dims: int, *, norm_eps: float, norm_affine: bool) -> nn.Module:
    if dims == 1:
        return nn.LayerNorm(num_channels, eps=norm_eps, elementwise_affine=norm_affine)
    return LayerNorm2d(num_channels, eps=norm_eps, affine=norm_affine)


@NORMS.register(
    "in",
    "InstanceNorm over (H, W) per sample and channel, with affine (norm_affine=false: none).",
    paper="Ulyanov et al. 2016, arXiv:1607.08022",
    options=(NORM_EPS, NORM_AFFINE),
    tags=("unit-invariant",),
)
def in_(num_channels: int, dims: int, *, norm_eps: float, norm_affine: bool) -> nn.Module:
    if dims != 2:
        raise ConfigError(
            "InstanceNorm ('in') normalizes over the spatial positions of each channel, "
            "so it needs conv features (N, C, H, W); the MLP has vector features. Use it "
            "with a conv architecture (cnn, resnet) or choose bn, gn, ln or none for the MLP."
        )
    return nn.InstanceNorm2d(num_channels, eps=norm_eps, affine=norm_affine, track_running_stats=False)


@NORMS.register(
    "gn",
    "GroupNorm over (C/G, H, W) per sample and group: norm_groups = G, or norm_group_size = C/G.",
    paper="Wu & He 2018, arXiv:1803.08494",
    options=(*GROUP_OPTIONS, NORM_EPS, NORM_AFFINE),
)
def gn(
    num_channels: int, dims: int, *, norm_groups: int, norm_group_size: int | None, norm_eps: float, norm_affine: bool
) -> nn.Module:
    groups = groups_for(num_channels, norm_groups, norm_group_size)
    return nn.GroupNorm(groups, num_channels, eps=norm_eps, affine=norm_affine)

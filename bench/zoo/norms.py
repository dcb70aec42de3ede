"""Normalization layers, by name.

Every entry builds a layer for a given number of channels, so an architecture takes
"the norm" as a factory and any norm fits any architecture (the timm habit: channels
first, options as keywords). ``dims=2`` builds a layer for conv features (N, C, H, W);
``dims=1`` for vector features (N, C), as in an MLP.

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

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError
from bench.registry import Registry

NormBuilder = Callable[..., nn.Module]
NORMS: Registry[NormBuilder] = Registry("norm")


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


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@NORMS.register("none", "No normalization (identity).")
def _none(num_channels: int, *, dims: int = 2, **_: object) -> nn.Module:
    return nn.Identity()


@NORMS.register(
    "bn",
    "BatchNorm: batch statistics per channel; running mean and unbiased variance at eval.",
    paper="Ioffe & Szegedy 2015, arXiv:1502.03167",
    tags=("batch",),
)
def _bn(
    num_channels: int, *, dims: int = 2, eps: float = 1e-5, momentum: float = 0.1, **_: object
) -> nn.Module:
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return cls(num_channels, eps=eps, momentum=momentum)


@NORMS.register(
    "ln",
    "LayerNorm over (C, H, W) per sample, per-channel affine.",
    paper="Ba et al. 2016, arXiv:1607.06450",
)
def _ln(num_channels: int, *, dims: int = 2, eps: float = 1e-5, **_: object) -> nn.Module:
    if dims == 1:
        return nn.LayerNorm(num_channels, eps=eps)
    return LayerNorm2d(num_channels, eps=eps)


@NORMS.register(
    "in",
    "InstanceNorm over (H, W) per sample and channel, with affine.",
    paper="Ulyanov et al. 2016, arXiv:1607.08022",
)
def _in(num_channels: int, *, dims: int = 2, eps: float = 1e-5, **_: object) -> nn.Module:
    if dims != 2:
        raise ConfigError(
            "InstanceNorm ('in') normalizes over the spatial positions of each channel, "
            "so it needs conv features (N, C, H, W); the MLP has vector features. Use it "
            "with a conv architecture (cnn, resnet) or choose bn, gn, ln or none for the MLP."
        )
    return nn.InstanceNorm2d(num_channels, eps=eps, affine=True, track_running_stats=False)


@NORMS.register(
    "gn",
    "GroupNorm over (C/G, H, W) per sample and group (norm_groups = G).",
    paper="Wu & He 2018, arXiv:1803.08494",
)
def _gn(num_channels: int, *, dims: int = 2, groups: int = 8, eps: float = 1e-5, **_: object) -> nn.Module:
    if groups < 1 or num_channels % groups:
        raise ConfigError(
            f"GroupNorm with norm_groups={groups} cannot split a layer of {num_channels} "
            f"channels into equal groups: the number of groups must divide every layer's "
            f"channel count. Valid values for {num_channels} channels: "
            f"{', '.join(map(str, _divisors(num_channels)))} (change norm_groups or the "
            "architecture's width)."
        )
    return nn.GroupNorm(groups, num_channels, eps=eps)


@dataclass(frozen=True)
class NormFactory:
    """A norm chosen by name with its options; call it with a channel count."""

    name: str
    groups: int = 8
    eps: float = 1e-5
    momentum: float = 0.1

    def __post_init__(self) -> None:
        NORMS.check(self.name)

    def __call__(self, num_channels: int, dims: int = 2) -> nn.Module:
        return NORMS.get(self.name)(
            num_channels, dims=dims, groups=self.groups, eps=self.eps, momentum=self.momentum
        )

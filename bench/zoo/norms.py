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
from dataclasses import dataclass, field

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
def _none(num_channels: int, dims: int, opts: NormFactory) -> nn.Module:
    return nn.Identity()


@NORMS.register(
    "bn",
    "BatchNorm: batch statistics per channel; running mean and unbiased variance at eval.",
    paper="Ioffe & Szegedy 2015, arXiv:1502.03167",
    tags=("batch",),
)
def _bn(num_channels: int, dims: int, opts: NormFactory) -> nn.Module:
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return cls(num_channels, eps=opts.eps, momentum=opts.momentum, affine=opts.affine)


@NORMS.register(
    "ln",
    "LayerNorm over (C, H, W) per sample, per-channel affine (norm_affine=false: none).",
    paper="Ba et al. 2016, arXiv:1607.06450",
)
def _ln(num_channels: int, dims: int, opts: NormFactory) -> nn.Module:
    if dims == 1:
        return nn.LayerNorm(num_channels, eps=opts.eps, elementwise_affine=opts.affine)
    return LayerNorm2d(num_channels, eps=opts.eps, affine=opts.affine)


@NORMS.register(
    "in",
    "InstanceNorm over (H, W) per sample and channel, with affine (norm_affine=false: none).",
    paper="Ulyanov et al. 2016, arXiv:1607.08022",
)
def _in(num_channels: int, dims: int, opts: NormFactory) -> nn.Module:
    if dims != 2:
        raise ConfigError(
            "InstanceNorm ('in') normalizes over the spatial positions of each channel, "
            "so it needs conv features (N, C, H, W); the MLP has vector features. Use it "
            "with a conv architecture (cnn, resnet) or choose bn, gn, ln or none for the MLP."
        )
    return nn.InstanceNorm2d(num_channels, eps=opts.eps, affine=opts.affine, track_running_stats=False)


@NORMS.register(
    "gn",
    "GroupNorm over (C/G, H, W) per sample and group: norm_groups = G, or norm_group_size = C/G.",
    paper="Wu & He 2018, arXiv:1803.08494",
)
def _gn(num_channels: int, dims: int, opts: NormFactory) -> nn.Module:
    return nn.GroupNorm(opts.groups_for(num_channels), num_channels, eps=opts.eps, affine=opts.affine)


@dataclass(frozen=True)
class RenormSchedule:
    """Batch Renormalization's clipping bounds over training steps (Ioffe 2017, §4):
    r_max = 1 and d_max = 0 (plain BatchNorm) until ``start``, then relaxed linearly to
    ``rmax`` at step ``rmax_at`` and ``dmax`` at step ``dmax_at``. The paper's ImageNet
    schedule: start 5k, r_max 3 at 40k, d_max 5 at 25k."""

    rmax: float = 3.0
    dmax: float = 5.0
    start: int = 5000
    rmax_at: int = 40000
    dmax_at: int = 25000

    def bounds(self, step: int) -> tuple[float, float]:
        def ramp(end: int) -> float:
            if step <= self.start:
                return 0.0
            return 1.0 if end <= self.start else min(1.0, (step - self.start) / (end - self.start))

        return 1.0 + (self.rmax - 1.0) * ramp(self.rmax_at), self.dmax * ramp(self.dmax_at)


@dataclass(frozen=True)
class NormFactory:
    """A norm chosen by name with its options; call it with a channel count.

    Builders registered in :data:`NORMS` receive ``(num_channels, dims, opts)`` where
    ``opts`` is this factory, so a new option is one field here, not a new signature.
    Every module built is marked ``is_bench_norm = True`` (see :func:`is_norm_module`), so
    training can find the norm layers (e.g. to train only their γ and β).
    """

    name: str
    groups: int = 8
    group_size: int | None = None  # GroupNorm channels per group; overrides `groups`
    eps: float = 1e-5
    momentum: float = 0.1
    affine: bool = True
    virtual_batch: int | None = None  # Ghost BatchNorm: examples per virtual batch
    renorm: RenormSchedule = field(default_factory=RenormSchedule)

    def __post_init__(self) -> None:
        NORMS.check(self.name)

    def __call__(self, num_channels: int, dims: int = 2) -> nn.Module:
        module = NORMS.get(self.name)(num_channels, dims, self)
        module.is_bench_norm = True
        return module

    def groups_for(self, num_channels: int) -> int:
        """The number of groups for a layer of ``num_channels`` channels, checked."""
        if self.group_size is not None:
            if self.group_size < 1 or num_channels % self.group_size:
                raise ConfigError(
                    f"GroupNorm with norm_group_size={self.group_size} channels per group cannot split a layer "
                    f"of {num_channels} channels: the group size must divide every layer's channel count. "
                    f"Valid values for {num_channels} channels: {', '.join(map(str, _divisors(num_channels)))}."
                )
            return num_channels // self.group_size
        if self.groups < 1 or num_channels % self.groups:
            raise ConfigError(
                f"GroupNorm with norm_groups={self.groups} cannot split a layer of {num_channels} "
                f"channels into equal groups: the number of groups must divide every layer's channel count. "
                f"Valid values for {num_channels} channels: {', '.join(map(str, _divisors(num_channels)))} "
                "(change norm_groups or the architecture's width, or set norm_group_size)."
            )
        return self.groups


def is_norm_module(module: nn.Module) -> bool:
    return bool(getattr(module, "is_bench_norm", False))

# Entries defined in their own modules register themselves on import.
from bench.zoo import mimic  # noqa: E402,F401
from bench.zoo import batch_norms  # noqa: E402,F401  (registers the batch-statistics variants)

"""A plugin: RMSNorm for conv features, registered beside the zoo's norms.

RMSNorm (Zhang & Sennrich 2019, arXiv:1910.07467) rescales each sample by the root mean
square of its features, with no mean subtraction and no batch statistics:
y = x / sqrt(mean over (C, H, W) of x² + ε) · γ, a per-channel gain γ.

    bench --plugin examples/rmsnorm.py train --set norm=rmsnorm --set rms_eps=1e-6
"""

import torch
from torch import nn

from bench.zoo.registry import NORMS, Option


class RMSNorm2d(nn.Module):
    def __init__(self, num_channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.pow(2).mean(dim=tuple(range(1, x.dim())), keepdim=True).add(self.eps).rsqrt()
        return x * rms * self.weight.view((1, -1) + (1,) * (x.dim() - 2))


@NORMS.register(
    "rmsnorm",
    "RMSNorm: each sample divided by the root mean square of its features, per-channel gain; no mean, no batch.",
    paper="Zhang & Sennrich 2019, arXiv:1910.07467",
    options=(Option("rms_eps", float, 1e-8, "ε added to the mean square", gt=0),),
)
def rmsnorm(num_channels: int, dims: int, *, rms_eps: float) -> nn.Module:
    return RMSNorm2d(num_channels, eps=rms_eps)

"""Filter Response Normalization with a Thresholded Linear Unit (Singh & Krishnan 2020,
"Filter Response Normalization Layer: Eliminating Batch Dependence in the Training of Deep
Neural Networks", CVPR 2020, arXiv:1911.09737, §3 and Algorithm 1).

For x ∈ R^{N×C×H×W}, per sample and channel, with no batch and no mean subtraction:

    ν² = (1/HW) Σ_{h,w} x²                  (the mean squared norm of the filter response)
    x̂ = x / sqrt(ν² + ε)
    y = γ x̂ + β                            (per-channel γ, β)
    z = max(y, τ)                           (TLU: a learned per-channel threshold τ)

γ starts at 1, β and τ at 0. ``frn_learned_eps`` makes ε learnable as ε + |ε_l| (ε_l
starting at 1e-4), which the paper recommends when H·W is small (its 1×1 case: a vector
feature has ν² = x², so x̂ ≈ sign(x) unless ε is comparable to x²). ``frn_tlu=false``
leaves out the threshold (the paper's "FRN without TLU" ablation). The layer is the
paper's Algorithm 1 line for line; with fixed ε it equals timm's
``FilterResponseNormTlu2d`` (tested against it).

Note that the architectures here follow every norm with a ReLU, so z passes through
max(·, 0) as well; the paper's networks replace the BN + ReLU pair with FRN + TLU.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.zoo.registry import NORMS, Option

LEARNED_EPS_INIT = 1e-4


class FilterResponseNorm(nn.Module):
    """FRN (+ TLU) over (N, C, *spatial) features; ν² is the mean over the spatial dims
    (for vector features (N, C), x² itself)."""

    def __init__(self, num_channels: int, eps: float = 1e-6, learned_eps: bool = False, tlu: bool = True):
        super().__init__()
        self.num_channels, self.eps = num_channels, eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.tau = nn.Parameter(torch.zeros(num_channels)) if tlu else None
        self.eps_l = nn.Parameter(torch.full((1,), LEARNED_EPS_INIT)) if learned_eps else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        nu2 = x.pow(2).mean(dim=tuple(range(2, x.dim())), keepdim=True) if x.dim() > 2 else x.pow(2)
        eps = self.eps + self.eps_l.abs() if self.eps_l is not None else self.eps
        y = x * torch.rsqrt(nu2 + eps) * self.weight.view(shape) + self.bias.view(shape)
        return torch.maximum(y, self.tau.view(shape)) if self.tau is not None else y

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, learned_eps={self.eps_l is not None}, tlu={self.tau is not None}"


@NORMS.register(
    "frn",
    "Filter Response Normalization: x / sqrt(mean over (H, W) of x² + frn_eps) per sample and channel, affine, then "
    "the TLU max(y, τ) with a learned threshold (frn_tlu); no batch statistics, no mean subtraction.",
    paper="Singh & Krishnan 2020, arXiv:1911.09737",
    options=(
        Option("frn_eps", float, 1e-6, "ε added to the mean squared response ν²", gt=0),
        Option("frn_learned_eps", bool, False, "learn ε as frn_eps + |ε_l| (the paper's choice for small H·W)"),
        Option("frn_tlu", bool, True, "follow FRN with the Thresholded Linear Unit max(y, τ)"),
    ),
)
def frn(num_channels: int, dims: int, *, frn_eps: float, frn_learned_eps: bool, frn_tlu: bool) -> nn.Module:
    return FilterResponseNorm(num_channels, eps=frn_eps, learned_eps=frn_learned_eps, tlu=frn_tlu)

"""Normalized Convolution (Kim, Lee, Lee, Kang & Kim, "Normalized Convolutional Neural
Network", arXiv:2005.05274): a conv that standardizes each row of its im2col matrix, i.e.
each receptive-field patch, before the filters see it.

For the patch x_p ∈ Rᴺ at output position p (all input channels under the kernel, zero
padding included, N = C_in·k·k), per sample and position:

    μ_p = (1/N) Σ_j x_pj,     σ²_p = (1/N) Σ_j (x_pj − μ_p)²        (biased)
    x̂_p = (x_p − μ_p) / sqrt(σ²_p + ε),   ε = 1e-14
    y_ip = w_i · x̂_p + b_i

So the statistics are neither the batch's nor a whole layer's: each output value is
computed from a standardized copy of exactly the inputs it reads. The paper presents it as
a convolutional counterpart of Self-Normalizing Networks that needs no normalization layer,
batch independent (its case is micro-batch training), and also combines it with BN or GN.

This is the authors' layer, kimdongsuk1/NormalizedCNN ``NCNN.py`` (``NCONV.forward``:
``F.unfold``, the row mean, ``var(unbiased=False)``, ``sqrt(var + 1e-14)``, the weight
matrix product, the bias; weights ``kaiming_normal_`` with ``mode='fan_out'``). Its
constructor also declares a ``scale`` parameter that the forward pass never uses and
leaves the bias uninitialized; here the bias starts at 0 and there is no scale. (The
repository's earlier C++ draft, ``NCNN.cpp``, divides by the unbiased standard deviation
+ 1e-5 and multiplies by that scale; it does not compile, and the later Python layer is
the one followed.)

Computed without im2col: the unfolded matrix holds N values per output position (k² times
the input), while w_i·x̂_p = (w_i·x_p − μ_p Σ_j w_ij) / sqrt(σ²_p + ε) needs only the
plain convolution, and μ_p, σ²_p = E[x²]_p − μ²_p come from two convolutions of x and x²
with a ones kernel of one output channel (the approach of the cosine conv in
:mod:`bench.zoo.convs`). The statistics are taken in float32 or wider, outside autocast
(E[x²] − μ² in bfloat16 would lose the variance), and σ² is clamped at 0. With ε as small
as the authors', a patch of equal values (a flat image background) is 0/0 up to rounding
in either form: its x̂ is the rounding error over 1e-7, bounded by ‖x̂‖ ≤ √N.

The ``nc`` conv kind builds every conv layer this way; linear layers stay standard, as
the paper defines NC for convolution (the classifier sees pooled features, not patches).
It is a conv kind rather than a norm because it lives inside the convolution (it cannot
be a layer after it), and so it crosses with every norm: ``norm: none`` is the paper's
normalizer-free network, bn and gn its combinations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.zoo.convs import ConvKind
from bench.zoo.registry import CONVS, Option

NC_EPS = Option("nc_eps", float, 1e-14, "ε added to each patch's variance before the square root (the authors')",
                gt=0)


class NormalizedConv2d(nn.Conv2d):
    """Conv2d over standardized receptive-field patches (the module docstring has the
    definition); weights He-normal over the fan-out as the authors', bias at 0."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, eps: float = 1e-14):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        self.eps = eps

    def patch_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """μ_p and σ²_p of every patch, (B, 1, H_out, W_out) each."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            xs = x.to(dtype)
            ones = xs.new_full((1, self.in_channels, *self.kernel_size), 1.0 / self.weight[0].numel())
            mean = F.conv2d(xs, ones, None, self.stride, self.padding, self.dilation)
            mean_sq = F.conv2d(xs * xs, ones, None, self.stride, self.padding, self.dilation)
        return mean, (mean_sq - mean * mean).clamp_min(0)

    def forward(self, x: Tensor) -> Tensor:
        mean, var = self.patch_statistics(x)
        filter_sums = self.weight.sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
        y = (self._conv_forward(x, self.weight, None) - mean * filter_sums) * torch.rsqrt(var + self.eps)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps:g}"


@CONVS.register(
    "nc",
    "Normalized Convolution: each conv standardizes every receptive-field patch (its im2col row) by the patch's "
    "own mean and variance before the filters, (w·x − μΣw)/√(σ² + nc_eps); He fan-out init; linears standard.",
    paper="Kim et al. 2020, arXiv:2005.05274",
    options=(NC_EPS,),
)
def nc(*, nc_eps: float) -> ConvKind:
    return ConvKind(
        conv=lambda cin, cout, kernel_size, stride=1, padding=0, bias=True: NormalizedConv2d(
            cin, cout, kernel_size, stride=stride, padding=padding, bias=bias, eps=nc_eps
        ),
        linear=nn.Linear,
    )

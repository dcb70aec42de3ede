"""Dynamic Region-Aware Convolution, DRConv (Chen, Wang, Guo, Zhang & Sun, CVPR 2021,
"Dynamic Region-Aware Convolution", arXiv:2003.12243): the ``drconv`` conv kind.

A standard conv shares one filter bank over all positions; DRConv splits the positions of
each example into m regions by a learned guided mask and gives each region its own filter
bank, generated from the example. For input X (C channels) and output position p, with
X(p) the k×k patch the conv reads there:

    F = guide(X)                          the guided feature: m channels, a plain conv of X
    r(p) = argmax_j F_j(p)                the region of p (the guided mask M)
    W_r = Σ_n α_{r,n} B_n                 each region's filter bank, for this example
    α = 2·sigmoid(A·x̄ + a) / N            x̄ the spatial mean of X (C values); α is m × N
    Y(p) = W_{r(p)} · X(p) + b

B_1 … B_N are N learned filter banks of the layer's shape (O × C × k × k) and A, a the
routing layer (m·N outputs): the filter generator of the authors' code,
megvii-research/DRConv ``DRConv.py`` (``routing_fc``, ``2.0 * F.sigmoid(...) / num_W``,
N = ``num_W`` = 8, banks uniform in ±sqrt(6 / (C·k·k)), routing weights N(0, 0.01), biases
0). The paper describes the generator as an adaptive pool of X to k×k followed by two
1×1 convs (a sigmoid, then m groups); the released code, followed here, mixes per example
N learned kernels per region instead (as CondConv does for one filter).

The argmax has no gradient. The backward pass of the paper (its approximation of the
mask's gradient) and of the authors' CUDA operator (``Deformable_MatMul3/csrc/cuda/
Deformable_MatMul_cuda.cu.bak``, called with ``use_alpha=False``) treats the one-hot mask
as the softmax F̂ = softmax(F) over the regions:

    ∂L/∂W_r   from the positions of region r only (the forward's selection),
    ∂L/∂F̂_j(p) = ⟨∂L/∂Y(p), W_j · X(p)⟩   for every region j,
    ∂L/∂F_j(p) = F̂_j(p) (∂L/∂F̂_j(p) − Σ_i F̂_i(p) ∂L/∂F̂_i(p))   (the softmax's Jacobian).

Here this is a straight-through estimator: Y = Σ_j c_j · (W_j ∗ X) with
c = onehot(r) + (F̂ − stop_gradient(F̂)), whose value is the one-hot mask exactly and whose
gradient is the softmax's. So every region's output W_j ∗ X is computed at every position
(m × the plain conv's multiply-adds and output memory; the authors' kernel forwards only
the selected filter but evaluates all m in its backward for ∂L/∂F̂).

The guide is a conv with the layer's kernel, stride and padding and no bias (torch's
default initialization), so the mask lies on the output grid. In the authors' ShuffleNetV2
(``ShuffleNetV2_pytorch.py``, ``make_block``) DRConv replaces the two 1×1 convs of each
block, which share one 1×1 guide (``masknet``, no bias) computed on the block's input,
with m = ``groups_num`` = 8 (their 3×3 convs are depthwise); here every layer has a
guide of its own on its own input, with the layer's kernel (which for their 1×1 layers is
theirs). With m = 1 there is nothing to assign and no guide is built: the layer is a
dynamic conv with one generated filter bank per example.

Where: every sliding-window conv of the architecture (the package's rule,
:mod:`bench.zoo.spatial_convs`): the dense 3×3 convs carry the computation of cnn, resnet
and vgg; 1×1 convs (ResNet's projection shortcuts) and linear layers stay plain. With
``conv_from_stage: s``, a resnet has them in stages s… only (:mod:`bench.zoo.spatial_convs`).

Written here: no library ships DRConv (the authors' operator is a CUDA extension whose
CPU path returns zeros). The per-example filters run as one grouped conv (groups = batch
size, m·O filters per example), which computes every region's output from one read of the
input; timm's ``CondConv2d`` generates one filter per example, and through it the input
would be copied m times. The layer is an ``nn.Conv2d`` whose ``weight`` holds the N banks
(N·O × C × k × k, bank n in rows n·O … n·O + O − 1), so code that looks for the model's
convs (its first layer, conv initializations) finds it; the guide and routing weights are
parameters of the layer itself.

Defaults: m = ``drconv_regions`` = 8 and N = ``drconv_bases`` = 8, the authors'.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.zoo.convs import ConvKind
from bench.zoo.registry import CONVS, Option
from bench.zoo.spatial_convs import CONV_FROM_STAGE, sliding_window_kind

DRCONV_REGIONS = Option("drconv_regions", int, 8, "m: regions of the guided mask, each with its own generated filters",
                        ge=1)
DRCONV_BASES = Option("drconv_bases", int, 8, "N: learned kernels each region's filters are mixed from, per example",
                      ge=1)
ROUTING_STD = 0.01  # the authors' routing_fc weights: N(0, 0.01), bias 0


class RegionAwareConv2d(nn.Conv2d):
    """DRConv (the module docstring has the definition): ``weight`` holds the N filter
    banks, ``guide_weight`` the guided-feature conv (None for one region), ``router_weight``
    and ``router_bias`` the filter generator's linear layer."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int = 0, bias: bool = True, *, regions: int = 8, bases: int = 8):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.regions, self.bases = regions, bases
        like = self.weight
        self.weight = nn.Parameter(like.new_empty(bases * out_channels, in_channels, *self.kernel_size))
        guide = nn.Parameter(like.new_empty(regions, in_channels, *self.kernel_size)) if regions > 1 else None
        self.register_parameter("guide_weight", guide)
        self.router_weight = nn.Parameter(like.new_empty(regions * bases, in_channels))
        self.router_bias = nn.Parameter(like.new_empty(regions * bases))
        self.reset_generator()

    @torch.no_grad()
    def reset_generator(self) -> None:
        """The authors' initialization: banks uniform in ±sqrt(6 / (C·k·k)), routing N(0, 0.01)
        with zero bias, layer bias 0; the guide as torch initializes a conv."""
        bound = math.sqrt(6.0 / (self.in_channels * self.kernel_size[0] * self.kernel_size[1]))
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        if self.guide_weight is not None:
            nn.init.kaiming_uniform_(self.guide_weight, a=math.sqrt(5))
        nn.init.normal_(self.router_weight, std=ROUTING_STD)
        nn.init.zeros_(self.router_bias)

    def region_filters(self, x: Tensor) -> Tensor:
        """W_r for every example and region: (batch, m, O, C, k_h, k_w)."""
        coefficients = 2.0 * torch.sigmoid(F.linear(x.mean(dim=(2, 3)), self.router_weight, self.router_bias))
        coefficients = coefficients.view(x.shape[0], self.regions, self.bases) / self.bases
        banks = self.weight.view(self.bases, -1)
        return (coefficients @ banks).view(x.shape[0], self.regions, self.out_channels, self.in_channels,
                                           *self.kernel_size)

    def region_outputs(self, x: Tensor) -> Tensor:
        """W_j ∗ X for every example and region j: (batch, m, O, H_out, W_out)."""
        batch = x.shape[0]
        filters = self.region_filters(x).reshape(-1, self.in_channels, *self.kernel_size)
        out = F.conv2d(x.reshape(1, -1, *x.shape[2:]), filters, None, self.stride, self.padding, self.dilation,
                       groups=batch)
        return out.view(batch, self.regions, self.out_channels, *out.shape[2:])

    def guided_feature(self, x: Tensor) -> Tensor:
        """F: (batch, m, H_out, W_out)."""
        return F.conv2d(x, self.guide_weight, None, self.stride, self.padding, self.dilation)

    @staticmethod
    def region_weights(guided: Tensor) -> Tensor:
        """onehot(argmax F) + (softmax(F) − stop_gradient(softmax(F))): the mask in value
        (exactly: the bracket is 0, whereas (onehot + softmax) − softmax rounds), the
        softmax in gradient."""
        soft = torch.softmax(guided, dim=1)
        hard = F.one_hot(guided.argmax(dim=1), guided.shape[1]).permute(0, 3, 1, 2).to(soft.dtype)
        return hard + (soft - soft.detach())

    def forward(self, x: Tensor) -> Tensor:
        outputs = self.region_outputs(x)
        if self.guide_weight is None:
            y = outputs[:, 0]
        else:
            y = (self.region_weights(self.guided_feature(x)).unsqueeze(2) * outputs).sum(dim=1)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", regions={self.regions}, bases={self.bases}"


@CONVS.register(
    "drconv",
    "DRConv: each sliding-window conv applies at each position the filters of that position's region (argmax of a "
    "learned guide conv), generated per example; 1×1 convs and linears standard.",
    paper="Chen, Wang, Guo, Zhang & Sun 2021, CVPR, arXiv:2003.12243",
    options=(DRCONV_REGIONS, DRCONV_BASES, CONV_FROM_STAGE),
)
def drconv(*, drconv_regions: int, drconv_bases: int, conv_from_stage: int) -> ConvKind:
    def build(cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True) -> nn.Module:
        return RegionAwareConv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=bias,
                                 regions=drconv_regions, bases=drconv_bases)

    return sliding_window_kind("drconv", RegionAwareConv2d, build, conv_from_stage)

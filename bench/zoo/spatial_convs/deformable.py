"""Deformable convolution (Dai, Qi, Xiong, Li, Zhang, Hu & Wei, ICCV 2017, "Deformable
Convolutional Networks", arXiv:1703.06211) and its modulated form, DCNv2 (Zhu, Hu, Lin &
Dai, CVPR 2019, "Deformable ConvNets v2: More Deformable, Better Results",
arXiv:1811.11168): the ``deformable`` conv kind.

A k×k conv reads its input on the regular grid R = {p_k} around each output position p₀
(p_k ∈ {−1, 0, 1}² for k = 3). A deformable conv moves each of the K = k² sampling points
by a learned offset Δp_k(p₀), per output position and per example (DCNv1 §2.1, eq. 2), and
DCNv2 also weighs each sample by a learned modulation scalar Δm_k(p₀) (DCNv2 §3.1):

    y(p₀) = Σ_k w_k · Δm_k(p₀) · x(p₀ + p_k + Δp_k(p₀)) + b      (v1: Δm_k = 1)

x at a fractional location p is bilinear in the integer locations q of the map,
x(p) = Σ_q G(q, p) x(q), G(q, p) = g(q_x, p_x) · g(q_y, p_y), g(a, b) = max(0, 1 − |a − b|)
(DCNv1 eq. 3–4), with x = 0 outside the map (the plain conv's zero padding).

The offsets and modulation are predicted from the layer's own input by a plain conv with
the deformable conv's kernel, stride and padding, so they live on its output grid: 2K
channels of offsets (Δy, Δx for each kernel position in row-major order, the layout of
``torchvision.ops.deform_conv2d``) and, for v2, K channels more, Δm = 2·sigmoid(·) ∈ (0, 2).
The predictor starts at zero, weights and bias. The authors' DCNv1 code zero-initializes the
offset convs (msracver/Deformable-ConvNets, rfcn/symbols/resnet_v1_101_rfcn_dcn.py,
``init_weight_rfcn``); their DCNv2 operator example (same repository,
DCNv2_op/example_symbol.py, ``modulated_deformable_conv``) zero-initializes the
offset-and-mask conv and takes the mask as ``2 * sigmoid``. So both versions start as the
plain conv with the same weights (Δp = 0, Δm = 1). The DCNv2 paper's modulation is a
sigmoid alone (Δm ∈ [0, 1]), as in mmcv's ``ModulatedDeformConv2dPack`` (open-mmlab/mmcv,
mmcv/ops/modulated_deform_conv.py), which at the zero start is 0.5 and halves every
deformable layer's output; the authors' factor 2 is followed here.

The sampling is torchvision's operator, ``torchvision.ops.deform_conv2d`` (CPU and CUDA
kernels, bilinear, zero outside the map; run in float32 under autocast, its output in
float32): this module only predicts its offsets and mask. The layer is an ``nn.Conv2d``
(weight, bias, their initialization and attributes are the plain conv's, so a model built
with ``conv: deformable`` draws the same random weights as with ``conv: standard`` and
computes the same function at initialization), and its predictor is held as two
parameters of its own (``offset_weight``, ``offset_bias``) rather than a child conv, so
that an architecture's initialization of its conv layers (VGG's He init) leaves the zero
start alone.

Where: every sliding-window conv of the architecture (the package's rule,
:mod:`bench.zoo.spatial_convs`), the stem included; 1×1 convs and linear layers stay plain. The papers deform the later stages
of large detection backbones (DCNv1: the last three 3×3 convs of ResNet-101's conv5, 4
deformable groups in the authors' symbols; DCNv2: every 3×3 conv of ResNet-50's
conv3–conv5, 1 group in the authors' example); ``conv_from_stage: 2`` deforms all stages
of a resnet but the first, as DCNv2 (:mod:`bench.zoo.spatial_convs`). Each layer starts as
its plain conv. One
deformable group (one offset field for all input channels), which any input, the image
stem's too, admits.

Not followed: the authors train the predictor at a multiple of the learning rate
(``lr_mult=0.1`` in the DCNv2 example; DCNv1's β, 1 by default), which needs per-parameter
learning rates the optimizers here do not take; it trains at the trial's learning rate.

``deform_version`` (default 2, the later and stronger form): 1 is DCNv1 (offsets only),
2 is DCNv2 (offsets and modulation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from bench.zoo.convs import ConvKind
from bench.zoo.registry import CONVS, Option
from bench.zoo.spatial_convs import CONV_FROM_STAGE, sliding_window_kind

DEFORM_VERSION = Option("deform_version", int, 2, "1: DCNv1 (learned offsets); 2: DCNv2 (offsets and modulation)",
                        choices=(1, 2))


class DeformableConv2d(nn.Conv2d):
    """A conv whose sampling offsets (and, ``modulated``, modulation scalars 2·sigmoid(·))
    are predicted from its input by a zero-initialized conv of the same geometry (the module
    docstring has the definition); the sampling is ``torchvision.ops.deform_conv2d``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int = 0, bias: bool = True, *, modulated: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.modulated = modulated
        channels = (3 if modulated else 2) * self.points
        self.offset_weight = nn.Parameter(self.weight.new_zeros(channels, in_channels, *self.kernel_size))
        self.offset_bias = nn.Parameter(self.weight.new_zeros(channels))

    @property
    def points(self) -> int:
        """K = k_h·k_w sampling points per output position."""
        return self.kernel_size[0] * self.kernel_size[1]

    def offsets_and_mask(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Δp (N, 2K, H_out, W_out) as (Δy, Δx) per kernel position, and Δm (N, K, H_out,
        W_out) = 2·sigmoid(·) for DCNv2 (None for DCNv1)."""
        out = F.conv2d(x, self.offset_weight, self.offset_bias, self.stride, self.padding, self.dilation)
        if not self.modulated:
            return out, None
        offset, mask = out.split((2 * self.points, self.points), dim=1)
        return offset, 2.0 * torch.sigmoid(mask)

    def forward(self, x: Tensor) -> Tensor:
        offset, mask = self.offsets_and_mask(x)
        # The sampling runs in float32 (or wider) outside autocast: torchvision casts for
        # autocast on CUDA only, and its CPU kernel refuses a bfloat16 offset beside float32
        # weights; bilinear positions in bfloat16 would also be coarse (8 bits of mantissa).
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            return deform_conv2d(
                x.to(dtype), offset.to(dtype), self.weight.to(dtype), None if self.bias is None else self.bias.to(dtype),
                stride=self.stride, padding=self.padding, dilation=self.dilation,
                mask=None if mask is None else mask.to(dtype),
            )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", version={2 if self.modulated else 1}"


@CONVS.register(
    "deformable",
    "Deformable conv: sliding-window convs sample at learned offsets (v2: ×learned modulation), zero-initialized "
    "so each starts as its plain conv; 1×1 convs and linears standard.",
    paper="Dai et al. 2017, ICCV, arXiv:1703.06211; v2: Zhu, Hu, Lin & Dai 2019, CVPR, arXiv:1811.11168",
    options=(DEFORM_VERSION, CONV_FROM_STAGE),
)
def deformable(*, deform_version: int, conv_from_stage: int) -> ConvKind:
    def build(cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True) -> nn.Module:
        return DeformableConv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=bias,
                                modulated=deform_version == 2)

    return sliding_window_kind("deformable", DeformableConv2d, build, conv_from_stage)

"""The strip pooling module, SPM (Hou, Zhang, Cheng & Feng, CVPR 2020, "Strip Pooling:
Rethinking Spatial Pooling for Scene Parsing", arXiv:2003.13328): a spatial gate computed
from averages over whole rows and whole columns, so each position sees context along the
full height and width of the map at the cost of two 1-D convolutions.

For x ∈ R^{C×H×W}, as the authors' ``SPBlock`` computes it (houqb/SPNet, formerly
Andrew-Qibin/SPNet, ``models/resnet.py``; its ``Bottleneck`` multiplies its input by the
returned gate, ``out = out * self.spm(out)``):

    y^h_{c,i} = (1/W) Σ_j x_{c,i,j}                 horizontal strip pooling (H×1; ``pool1``)
    y^v_{c,j} = (1/H) Σ_i x_{c,i,j}                 vertical strip pooling (1×W; ``pool2``)
    u = N_h(Conv_{3×1}(y^h)),   v = N_v(Conv_{1×3}(y^v))      1-D convs along each strip, C → C
    s = σ(Conv_{1×1}(ReLU(u_{c,i} + v_{c,j})))      u and v expanded to H×W and summed
    z = x ⊙ s

The paper writes the fusion as z = Scale(x, σ(f(y^h + y^v))), f a 1×1 conv; the ReLU after
the sum and the norm layers N_h, N_v after the 1-D convs are the authors' code. Their norm
is the backbone's ``norm_layer`` (synchronized BatchNorm), so here it is the network's own
registry norm; the 1-D convs have no bias when a norm follows (their last revision,
"bias=False for Conv2d when using BatchNorm") and have one under ``norm=none``, like every
conv of the network; the 1×1 conv has a bias. The middle width is C (their
``midplanes = outplanes``). Every conv is built through the network's conv factory.

Hand-written: neither torch, torchvision nor timm has strip pooling; the row and column
means are ``Tensor.mean`` (the same numbers as the authors' ``AdaptiveAvgPool2d((None, 1))``
and ``((1, None))``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.zoo.convs import ConvFactory
from bench.zoo.norms import NormFactory


class StripPooling(nn.Module):
    """x ⊙ σ(Conv_{1×1}(ReLU(N(Conv_{3×1}(row means)) + N(Conv_{1×3}(column means))))), shape
    preserved; see the module docstring."""

    def __init__(self, channels: int, norm: NormFactory, conv: ConvFactory):
        super().__init__()
        bias = norm.name == "none"
        self.conv_h = conv.conv(channels, channels, (3, 1), padding=(1, 0), bias=bias)
        self.norm_h = norm(channels)
        self.conv_v = conv.conv(channels, channels, (1, 3), padding=(0, 1), bias=bias)
        self.norm_v = norm(channels)
        self.fuse = conv.conv(channels, channels, 1, bias=True)

    def gate(self, x: Tensor) -> Tensor:
        """s ∈ (0, 1)^{C×H×W}, the authors' ``SPBlock.forward``."""
        rows = self.norm_h(self.conv_h(x.mean(dim=3, keepdim=True)))  # (B, C, H, 1)
        columns = self.norm_v(self.conv_v(x.mean(dim=2, keepdim=True)))  # (B, C, 1, W)
        return torch.sigmoid(self.fuse(F.relu(rows + columns)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)

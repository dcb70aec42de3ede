"""CIFAR-style ResNet (He et al. 2016, section 4.2): a 3×3 stem, three stages of basic
blocks with widths (w, 2w, 4w), stride 2 between stages, global average pool, linear.
depth = 6n + 2 (8, 14, 20, 32, 44, 56, 110); a 1×1 conv + norm projects the shortcut
when the shape changes (option B).

With MimicNorm (``norm=mimic``) the network is the authors' (Kid-key/MimicNorm,
``ImageNet/models/resnet_nobn.py``, the ``*_cbn`` networks): each block's residual branch
is multiplied by a learnable scalar starting at 1.2² / k for the k-th block of the network
(counted from 1 across all stages, as their global ``blocknum``), and a projection shortcut
by one starting at 1.2 (their ``MyScaleLayer``); identity shortcuts have none. The
authors' CIFAR-100 file (``Cifar100/models/resnet_nobn.py``) has the same residual scalar
and had the shortcut one until its last commit, which comments it out. MimicNorm's other
changes (centred convs, biases, the last BatchNorm) are made for every architecture when
the model is built (``bench/zoo/norms/mimic.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.errors import ConfigError
from bench.zoo.registry import ARCHS
from bench.zoo.convs import ConvFactory
from bench.zoo.norms import NormFactory


MIMIC_RESIDUAL_GAIN = 1.2**2  # MimicNorm: block k's residual scalar starts at 1.2² / k
MIMIC_SHORTCUT_GAIN = 1.2  # MimicNorm: a projection shortcut's scalar starts at 1.2


class Scale(nn.Module):
    """x · s with s one learnable scalar (MimicNorm's residual and shortcut scalars)."""

    def __init__(self, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class BasicBlock(nn.Module):
    """conv-norm-ReLU-conv-norm plus the shortcut, then ReLU. ``index`` is the block's
    position in the network, from 1 (MimicNorm's residual scalar starts at 1.2² / index)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: NormFactory, conv: ConvFactory, index: int = 1):
        super().__init__()
        bias, mimic = norm.name == "none", norm.name == "mimic"
        self.conv1, self.norm1 = conv.conv(cin, cout, 3, stride=stride, padding=1, bias=bias), norm(cout)
        self.conv2, self.norm2 = conv.conv(cout, cout, 3, padding=1, bias=bias), norm(cout)
        self.residual_scale: nn.Module = Scale(MIMIC_RESIDUAL_GAIN / index) if mimic else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            projection = [conv.conv(cin, cout, 1, stride=stride, bias=bias), norm(cout)]
            self.shortcut = nn.Sequential(*projection, *([Scale(MIMIC_SHORTCUT_GAIN)] if mimic else []))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.residual_scale(self.norm2(self.conv2(out)))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, norm: NormFactory, conv: ConvFactory, width: int, blocks: int):
        super().__init__()
        stem = conv.conv(in_channels, width, 3, padding=1, bias=norm.name == "none")
        self.stem = nn.Sequential(stem, norm(width), nn.ReLU(inplace=True))
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(blocks):
                stages.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, norm, conv, len(stages) + 1))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), conv.linear(cin, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


@ARCHS.register(
    "resnet",
    "CIFAR-style ResNet, depth 6n+2 (default 8), widths (w, 2w, 4w) (default w=16).",
    paper="He et al. 2016, arXiv:1512.03385",
)
def build_resnet(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    norm: NormFactory,
    conv: ConvFactory = ConvFactory(),
    width: int = 16,
    depth: int = 8,
) -> nn.Module:
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(
            f"A CIFAR-style resnet has depth 6n+2 with n ≥ 1 blocks per stage; got depth={depth}. "
            "Valid depths: 8, 14, 20, 26, 32, 44, 56, 110 (any 6n+2)."
        )
    return ResNet(in_channels, num_classes, norm, conv, width, (depth - 2) // 6)

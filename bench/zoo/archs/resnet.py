"""CIFAR-style ResNet (He et al. 2016, section 4.2): a 3×3 stem, three stages of basic
blocks with widths (w, 2w, 4w), stride 2 between stages, then the classifier head
(``head``, :mod:`bench.zoo.archs.heads`; by default global average pool and linear).
depth = 6n + 2 (8, 14, 20, 32, 44, 56, 110); a 1×1 conv + norm projects the shortcut
when the shape changes (option B).

``resnet_block_attention=strip`` adds the strip pooling module
(:mod:`bench.zoo.archs.strip_pooling`, Hou et al. 2020) where the authors' ResNet has it
(houqb/SPNet, ``models/resnet.py``: ``_make_layer`` turns it on in the last block of every
stage and in every block of the last stage, ``planes == 512``; ``Bottleneck.forward``
applies it to the activation after the 3×3 conv's norm and ReLU, before the block's last
conv). In a basic block that activation is the one between its two 3×3 convs:
conv-norm-activation-SPM-conv-norm, plus the shortcut, then the activation. Their rule
never gives the first block of a stage one outside the last stage (the loop that turns it
on starts at the second block), so with one block per stage (depth 8) only the last stage
has it.

The network has stages for a conv kind that takes ``conv_from_stage`` (the spatial convs,
:mod:`bench.zoo.spatial_convs`): the stem belongs to stage 1, and stages before the chosen
one get plain convs.

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

from typing import Any

import torch
from torch import Tensor, nn

from bench.errors import ConfigError
from bench.zoo.archs.heads import HEAD_OPTIONS, head_layers
from bench.zoo.archs.strip_pooling import StripPooling
from bench.zoo.registry import ARCHS, Option
from bench.zoo.activations import ActivationFactory
from bench.zoo.convs import ConvFactory
from bench.zoo.norms import NormFactory


MIMIC_RESIDUAL_GAIN = 1.2**2  # MimicNorm: block k's residual scalar starts at 1.2² / k
MIMIC_SHORTCUT_GAIN = 1.2  # MimicNorm: a projection shortcut's scalar starts at 1.2
BLOCK_ATTENTIONS = ("none", "strip")
RESNET_BLOCK_ATTENTION = Option(
    "resnet_block_attention", str, "none", "a gate inside the residual blocks: none, or strip (the strip pooling "
    "module of Hou et al. 2020, arXiv:2003.13328, in the last block of every stage and every block of the last "
    "stage)", choices=BLOCK_ATTENTIONS,
)


class Scale(nn.Module):
    """x · s with s one learnable scalar (MimicNorm's residual and shortcut scalars)."""

    def __init__(self, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class BasicBlock(nn.Module):
    """conv-norm-act-conv-norm plus the shortcut, then act (``activation``: ReLU unless the
    config chooses another; one module each, FReLU's having weights). ``index`` is the block's
    position in the network, from 1 (MimicNorm's residual scalar starts at 1.2² / index).
    ``strip`` puts the strip pooling module between the first activation and the second conv."""

    def __init__(
        self, cin: int, cout: int, stride: int, norm: NormFactory, conv: ConvFactory, index: int = 1, strip: bool = False,
        *, activation: ActivationFactory,
    ):
        super().__init__()
        bias, mimic = norm.name == "none", norm.name == "mimic"
        self.conv1, self.norm1 = conv.conv(cin, cout, 3, stride=stride, padding=1, bias=bias), norm(cout)
        self.conv2, self.norm2 = conv.conv(cout, cout, 3, padding=1, bias=bias), norm(cout)
        self.attention: nn.Module = StripPooling(cout, norm, conv) if strip else nn.Identity()
        self.residual_scale: nn.Module = Scale(MIMIC_RESIDUAL_GAIN / index) if mimic else nn.Identity()
        self.act1, self.act2 = activation(cout), activation(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            projection = [conv.conv(cin, cout, 1, stride=stride, bias=bias), norm(cout)]
            self.shortcut = nn.Sequential(*projection, *([Scale(MIMIC_SHORTCUT_GAIN)] if mimic else []))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.residual_scale(self.norm2(self.conv2(self.attention(out))))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self, in_channels: int, num_classes: int, norm: NormFactory, conv: ConvFactory, width: int, blocks: int,
        attention: str = "none", *, activation: ActivationFactory, **heads: Any,
    ):
        super().__init__()
        self.conv_stages = 3  # what conv_from_stage counts (bench.zoo.spatial_convs)
        stem = conv.for_stage(1).conv(in_channels, width, 3, padding=1, bias=norm.name == "none")
        self.stem = nn.Sequential(stem, norm(width), activation(width))
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(blocks):
                strip = attention == "strip" and (i == 2 or 0 < j == blocks - 1)
                stages.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, norm, conv.for_stage(i + 1),
                                         len(stages) + 1, strip,
                                         activation=activation))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(*head_layers(cin, num_classes, conv, **heads))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


@ARCHS.register(
    "resnet",
    "CIFAR-style ResNet, depth 6n+2 (default 8), widths (w, 2w, 4w) (default w=16).",
    paper="He et al. 2016, arXiv:1512.03385",
    options=(RESNET_BLOCK_ATTENTION, *HEAD_OPTIONS),
)
def build_resnet(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    norm: NormFactory,
    conv: ConvFactory = ConvFactory(),
    activation: ActivationFactory = ActivationFactory("relu"),
    width: int = 16,
    depth: int = 8,
    resnet_block_attention: str = "none",
    head: str = "gap",
    head_rank: int = 20,
    head_drop_factor: float = 0.5,
) -> nn.Module:
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(
            f"A CIFAR-style resnet has depth 6n+2 with n ≥ 1 blocks per stage; got depth={depth}. "
            "Valid depths: 8, 14, 20, 26, 32, 44, 56, 110 (any 6n+2)."
        )
    if resnet_block_attention not in BLOCK_ATTENTIONS:
        raise ConfigError(f"resnet_block_attention must be one of {', '.join(BLOCK_ATTENTIONS)}; "
                          f"got {resnet_block_attention!r}.")
    return ResNet(
        in_channels, num_classes, norm, conv, width, (depth - 2) // 6, resnet_block_attention,
        activation=activation, head=head, head_rank=head_rank, head_drop_factor=head_drop_factor,
    )

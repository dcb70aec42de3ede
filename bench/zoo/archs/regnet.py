"""RegNet (Radosavovic, Kosaraju, Girshick, He & Dollár, CVPR 2020, "Designing Network Design
Spaces", arXiv:2003.13678) for small images, built with torchvision's RegNet.

A RegNet is a design point (d, w₀, w_a, w_m, g) of the paper's design space (§4, eqs. 2-4):
block j = 0 … d−1 has the linear width

    u_j = w₀ + w_a · j,

which is snapped to w₀ times an integer power of w_m and rounded to a multiple of 8,

    s_j = round(log(u_j / w₀) / log w_m),   w_j = 8 · round(w₀ · w_m^{s_j} / 8);

consecutive blocks of equal width form a stage (stride 2 at its first block), and each
stage's width is then made a multiple of its group width g (min(g, width), rounded to the
nearest multiple). Every block is a residual bottleneck with bottleneck ratio 1: 1×1 conv,
3×3 group conv of width/g groups (stride of the block), 1×1 conv, each followed by the norm
(ReLU after the first two), plus the input or a 1×1-conv + norm projection, then a ReLU;
RegNetY adds squeeze-and-excitation with ratio 0.25 of the block's input width. A stem
(3×3 conv, norm, ReLU; 32 channels) comes first, and global average pooling and a linear
classifier last. All of this is torchvision's (``torchvision.models.regnet``: the widths
and depths from ``BlockParams.from_init_params``, the network from ``RegNet``), which is
the authors' pycls (facebookresearch/pycls ``pycls/models/regnet.py``: ``generate_regnet``,
``adjust_ws_gs_comp``; ``pycls/models/anynet.py``) rewritten; the torchvision weights
initialization (conv weights N(0, 2 / fan-out), classifier N(0, 0.01²)) is the authors'.

Here: ``depth`` is d, ``width`` is w₀ (a positive multiple of 8), and ``regnet_wa``,
``regnet_wm``, ``regnet_group_width``, ``regnet_se_ratio`` the rest. The defaults are the
paper's smallest published model, RegNetX-200MF (d = 13, w₀ = 24, w_a = 36.44,
w_m = 2.49, g = 8: stage widths 24, 56, 152, 368 with 1, 1, 4, 7 blocks, 2.7 M parameters
on ImageNet; pycls ``configs/dds_baselines/regnetx/RegNetX-200MF_dds_8gpu.yaml`` and
``MODEL_ZOO.md``); ``regnet_se_ratio: 0.25`` at the same point is RegNetY-200MF. Smaller
networks follow by lowering w₀ and w_a together (the widths scale with them).

One rounding differs from the authors' code: where a stage width is an odd multiple of half
the group width, torchvision rounds it up to a multiple of g, pycls (Python's ``round``) to
the even multiple. RegNetX-200MF and -Y-200MF have no such tie; RegNetX-400MF has one (its
last stage is 400 wide here and in torchvision's ``regnet_x_400mf``, 384 in pycls).

Small images: the stem has stride 1, the authors' CIFAR stem (pycls ``ResStemCifar``: 3×3
conv, BN, ReLU at stride 1) with the ImageNet models' 32 channels, instead of ImageNet's
stride 2, so the four stride-2 stages of RegNetX-200MF see a 32-pixel image at 32, 16, 8
and 4 pixels and end at 2×2 (28 px: 14, 7, 4, 2); a stride-2 stem would leave the last
stage's 3×3 convs 1×1 maps.

The norm layers come from the harness's NormFactory (torchvision's ``norm_layer`` argument),
so every norm fits; with ``norm=none`` the convs get a bias (zero at first), as in the
other architectures. The activation is ReLU, or the config's ``activation``, passed as
torchvision's ``activation`` argument (stem, blocks, SE). torchvision calls that layer class
without the channel count, so only a pointwise activation fits (FReLU is refused); its
layers are the factory's (the ReLU in place, in SE too, where it acts on a fresh output).
torchvision builds its convs itself (its grouped 3×3 convs could not come from the
harness's conv constructors, which take no groups), so the weight reparametrizations
(``conv``) are refused with a :class:`~bench.errors.ConfigError`, and so is MimicNorm,
which brings centred convs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.regnet import BlockParams, RegNet
from torchvision.ops.misc import Conv2dNormActivation

from bench.errors import ConfigError
from bench.zoo.activations import ActivationFactory
from bench.zoo.archs import refuse_instance_norm_on_single_pixels
from bench.zoo.convs import ConvFactory
from bench.zoo.norms import NormFactory
from bench.zoo.norms.mimic import add_biases
from bench.zoo.registry import ARCHS, Option

STEM_WIDTH = 32  # the paper's stem (pycls STEM_W), torchvision's default
WIDTH_QUANTUM = 8  # block widths are multiples of 8 (eq. 4; torchvision's QUANT)

REGNET_OPTIONS = (
    Option("regnet_wa", float, 36.44, "RegNet slope w_a of the linear widths u_j = w_0 + w_a·j (w_0 = width)", ge=0),
    Option("regnet_wm", float, 2.49, "RegNet width multiplier w_m between stages: widths w_0·w_m^s, quantized to 8", gt=1),
    Option("regnet_group_width", int, 8, "RegNet group width g of the 3×3 group convs (width/g groups)", ge=1),
    Option("regnet_se_ratio", float, 0.0, "RegNetY squeeze-and-excitation ratio of the block's input width (0: RegNetX, "
           "no SE; the paper's RegNetY: 0.25)", ge=0, le=1),
)


def block_params(depth: int, w_0: int, w_a: float, w_m: float, group_width: int, se_ratio: float) -> BlockParams:
    """The stages of the design point (d, w₀, w_a, w_m, g): torchvision's ``BlockParams``,
    computed on the CPU whatever the default device (a model validated on the meta device
    still needs the numbers)."""
    with torch.device("cpu"):
        return BlockParams.from_init_params(
            depth=depth, w_0=w_0, w_a=w_a, w_m=w_m, group_width=group_width, se_ratio=se_ratio or None
        )


def small_image_stem(in_channels: int) -> Any:
    """torchvision's stem type for ``in_channels`` input channels at stride 1 (RegNet passes
    3 input channels, the ImageNet stem's; they are replaced here)."""

    def stem(_width_in: int, width_out: int, norm_layer: Any, activation_layer: Any) -> nn.Module:
        return Conv2dNormActivation(
            in_channels, width_out, kernel_size=3, stride=1, norm_layer=norm_layer, activation_layer=activation_layer
        )

    return stem


@ARCHS.register(
    "regnet",
    "RegNet (torchvision's) at a design point: d = depth blocks, w_0 = width, w_a = regnet_wa, w_m = regnet_wm, "
    "group width regnet_group_width, SE ratio regnet_se_ratio (0: RegNetX); default RegNetX-200MF; stem at "
    "stride 1 for small images; conv must be standard.",
    paper="Radosavovic et al. 2020, arXiv:2003.13678 (CVPR 2020)",
    options=REGNET_OPTIONS,
)
def build_regnet(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    norm: NormFactory,
    conv: ConvFactory = ConvFactory(),
    activation: ActivationFactory = ActivationFactory("relu"),
    width: int = 24,
    depth: int = 13,
    regnet_wa: float = 36.44,
    regnet_wm: float = 2.49,
    regnet_group_width: int = 8,
    regnet_se_ratio: float = 0.0,
) -> nn.Module:
    if conv.name != "standard":
        brought = f" (norm={norm.name} brings it)" if norm.name == "mimic" else ""
        raise ConfigError(
            f"arch=regnet got conv={conv.name!r}{brought}, but regnet is torchvision's RegNet, which builds its own "
            "convs, grouped 3×3 convs among them, and the conv reparametrizations cannot replace those. Use conv "
            "standard (and a norm other than mimic) with regnet, or compare convs on resnet, vgg or repvgg."
        )
    if width < WIDTH_QUANTUM or width % WIDTH_QUANTUM:
        raise ConfigError(
            f"arch=regnet takes width as its initial width w_0, and RegNet's widths are multiples of "
            f"{WIDTH_QUANTUM} from w_0 on, so width must be a positive multiple of {WIDTH_QUANTUM}; got "
            f"width={width}. RegNetX-200MF has w_0 = 24."
        )
    if depth < 1:
        raise ConfigError(f"arch=regnet takes depth as its number of blocks d ≥ 1; got depth={depth}.")
    if not activation.pointwise:
        raise ConfigError(
            f"arch=regnet got activation={activation.name!r}, but regnet is torchvision's RegNet, which builds its "
            "activations itself from a layer class, without their channel count, so only a pointwise activation "
            "(relu, gelu, silu) fits it. Compare FReLU on cnn, resnet, vgg or repvgg."
        )
    params = block_params(depth, width, regnet_wa, regnet_wm, regnet_group_width, regnet_se_ratio)
    refuse_instance_norm_on_single_pixels(norm, "regnet", image_size, strided_stages=len(params.depths))
    model = RegNet(
        params, num_classes=num_classes, stem_width=STEM_WIDTH, stem_type=small_image_stem(in_channels),
        norm_layer=norm, activation=lambda inplace=None: activation(0),  # pointwise: no channel count needed
    )
    if norm.name == "none":
        add_biases(model)
    return model

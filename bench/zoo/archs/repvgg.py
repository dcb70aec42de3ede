"""RepVGG (Ding, Zhang, Ma, Han, Ding & Sun, CVPR 2021, "RepVGG: Making VGG-style ConvNets
Great Again", arXiv:2101.03697) for small images.

A RepVGG block trains as three parallel branches on its input x, summed, then a ReLU (the
paper's; ``activation`` chooses another, which stays after the fused conv):

    y = ReLU( N₃(W₃ ∗ x) + N₁(W₁ ∗ x) + N₀(x) )

a 3×3 conv W₃ with its norm N₃, a 1×1 conv W₁ with its norm N₁ (same stride; padding 0, so
its outputs sit on the 3×3 conv's centres), and, when the block keeps the shape (stride 1,
C_in = C_out), the identity with a norm N₀ of its own. At inference a norm with running
statistics is a per-channel affine, N(z) = s ⊙ z + t with s = γ / √(σ² + ε) and
t = β − μ s, so each branch is a conv with bias, and the three add up to one 3×3 conv
(the paper's structural re-parameterization, §3.3):

    K = s₃ W₃ + pad₁(s₁ W₁) + s₀ I,   b = t₃ + t₁ + t₀

pad₁ puts the 1×1 kernel at the centre of a zero 3×3 kernel and I is the identity as a
3×3 kernel (1 at the centre of channel i's own filter, 0 elsewhere). A conv that has a
bias b_c adds s b_c to its branch's bias. :func:`deploy` returns the network with every
block replaced by that conv and its ReLU (activation): a plain stack of 3×3 convs
computing the same function as the trained network in eval mode. This is the authors' ``RepVGGBlock``
(``get_equivalent_kernel_bias``, ``_fuse_bn_tensor``, ``_pad_1x1_to_3x3_tensor``,
``switch_to_deploy``) in DingXiaoH/RepVGG ``repvgg.py`` (commit 82b28bb).

Written here rather than taken from timm (``timm.models.byobnet.RepVggBlock``), whose block
builds its convs and norms through timm's own layer factories, so it cannot take the
harness's norm and conv choices, and whose ``reparameterize`` folds only torch's BatchNorm.

Folding needs a norm that is a fixed per-channel affine at inference: BatchNorm and the
variants that infer with running statistics (bn, bn-ghost, bn-frozen, brn: μ and the stored
σ; mabn: no centring, σ² its running second moment), or none. A network built with another
norm (gn, ln, in, frn, bcn, bn-example-weighted, which normalize each example by its own
statistics at inference) trains and evaluates as built; :func:`deploy` refuses it with a
:class:`~bench.errors.ConfigError`. Likewise for the conv: a plain or weight-normalized
conv, or one whose effective kernel is a function of its weights alone
(``reparametrized_weight()``: ws, centered), folds; cos (divides by each patch's norm) and
sws (timm's layer, whose kernel is computed inside its forward) do not.

The network (the authors' ``RepVGG``): a first block (stage 0), then four stages whose first
block has stride 2, global average pooling and a linear classifier. ``depth`` counts the
3×3 layers as the paper names the series: 22 is RepVGG-A (1, 2, 4, 14, 1 blocks per stage),
28 is RepVGG-B (1, 4, 6, 16, 1). Stage widths are the authors' (min(64, 64a), 64a, 128a,
256a, 512b) with ``width`` in place of 64 (``int`` rounding as theirs); (a, b) =
(``repvgg_a``, ``repvgg_b``) = (0.75, 2.5) is A0, (1, 2.5) A1 and B0, (1.5, 2.75) A2, (2, 4)
B1, (2.5, 5) B2, (3, 5) B3. width = 64 is the paper's network (RepVGG-A0: 8.30 M parameters
after fusion). Small images: stage 0 has stride 1 instead of the paper's 2 (as CIFAR
ResNets keep the full resolution in their stem), so a 32-pixel image reaches stage 4 at
2×2 (28 → 28, 14, 7, 4, 2; 8 → 8, 4, 2, 1, 1) where the paper's five stride-2 stages would
leave 1×1. The default width 32 (stage widths 24, 24, 48, 96, 200 for A0) keeps every
layer divisible by GroupNorm's default 8 groups. The authors' grouped-conv variants (g2,
g4) and the SE blocks of RepVGG-D2se are not built. Weights start at torch's defaults, as in
the authors' code. ``norm=none`` gives every conv a bias (as the other architectures).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import ConfigError
from bench.zoo.activations import ActivationFactory
from bench.zoo.archs import refuse_instance_norm_on_single_pixels
from bench.zoo.convs import ConvFactory
from bench.zoo.norms import NormFactory
from bench.zoo.norms.batch import BatchRenorm, FrozenBatchNorm, GhostBatchNorm
from bench.zoo.norms.mabn import MovingAverageBatchNorm
from bench.zoo.registry import ARCHS, Option

# blocks per stage 1-4 (stage 0 is one block), by the number of 3×3 layers
LAYOUTS: dict[int, tuple[int, ...]] = {22: (2, 4, 14, 1), 28: (4, 6, 16, 1)}
SERIES = {22: "RepVGG-A", 28: "RepVGG-B"}
FOLDABLE_NORMS = "bn, bn-ghost, bn-frozen, brn, mabn or none"
RELU = ActivationFactory("relu")  # the paper's activation, after every block

REPVGG_A = Option("repvgg_a", float, 0.75, "RepVGG width multiplier a of stages 0-3: widths width·(a, a, 2a, 4a)", gt=0)
REPVGG_B = Option("repvgg_b", float, 2.5, "RepVGG width multiplier b of the last stage: 8·width·b channels", gt=0)


class RepVGGBlock(nn.Module):
    """The training-time block: act(N₃(3×3 conv) + N₁(1×1 conv) + N₀(x)), act ReLU unless
    ``activation`` is another, the identity branch only when stride is 1 and the channels
    do not change (the module docstring)."""

    def __init__(
        self, cin: int, cout: int, stride: int, norm: NormFactory, conv: ConvFactory, *,
        activation: ActivationFactory = RELU,
    ):
        super().__init__()
        bias = norm.name == "none"
        self.norm_name = norm.name
        self.dense = nn.Sequential(OrderedDict(
            conv=conv.conv(cin, cout, 3, stride=stride, padding=1, bias=bias), norm=norm(cout)))
        self.pointwise = nn.Sequential(OrderedDict(
            conv=conv.conv(cin, cout, 1, stride=stride, padding=0, bias=bias), norm=norm(cout)))
        self.identity: nn.Module | None = norm(cin) if stride == 1 and cin == cout else None
        self.act = activation(cout)

    def forward(self, x: Tensor) -> Tensor:
        out = self.dense(x) + self.pointwise(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(out)

    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """(K, b) of the one 3×3 conv this block's branches equal in eval mode (the
        authors' ``get_equivalent_kernel_bias``); differentiable in the weights."""
        kernel, bias = self._fold(self.dense.conv, self.dense.norm)
        k1, b1 = self._fold(self.pointwise.conv, self.pointwise.norm)
        kernel, bias = kernel + F.pad(k1, [1, 1, 1, 1]), bias + b1
        if self.identity is not None:
            cin = self.dense.conv.in_channels
            eye = torch.zeros_like(kernel)
            eye[:, :, 1, 1] = torch.eye(cin, dtype=kernel.dtype, device=kernel.device)
            scale, shift = self._norm_affine(self.identity, cin, kernel)
            kernel, bias = kernel + eye * scale.view(-1, 1, 1, 1), bias + shift
        return kernel, bias

    def fused(self) -> nn.Sequential:
        """This block as one 3×3 conv with bias and (a copy of) its activation, the authors'
        ``switch_to_deploy``: the activation follows the branches' sum, so any one fuses."""
        template = self.dense.conv
        with torch.no_grad():
            kernel, bias = self.equivalent_kernel_bias()
        layer = nn.Conv2d(template.in_channels, template.out_channels, 3, stride=template.stride, padding=1,
                          device=kernel.device, dtype=kernel.dtype)
        with torch.no_grad():
            layer.weight.copy_(kernel)
            layer.bias.copy_(bias)
        return nn.Sequential(OrderedDict(conv=layer, act=copy.deepcopy(self.act)))

    def _fold(self, conv: nn.Module, norm: nn.Module) -> tuple[Tensor, Tensor]:
        """The branch norm(conv(x)) as one conv: (s·W, s·b_conv + t)."""
        weight = _kernel(conv)
        scale, shift = self._norm_affine(norm, weight.shape[0], weight)
        bias = shift if conv.bias is None else shift + scale * conv.bias
        return weight * scale.view(-1, 1, 1, 1), bias

    def _norm_affine(self, norm: nn.Module, channels: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """(s, t) with norm(z) = s ⊙ z + t per channel in eval mode."""
        if isinstance(norm, nn.Identity):
            return like.new_ones(channels), like.new_zeros(channels)
        if type(norm) in (nn.BatchNorm2d, nn.SyncBatchNorm, GhostBatchNorm, FrozenBatchNorm) and norm.running_var is not None:
            mean, inv_std = norm.running_mean, torch.rsqrt(norm.running_var + norm.eps)
        elif type(norm) is BatchRenorm:  # its running σ already includes ε
            mean, inv_std = norm.running_mean, 1.0 / norm.running_std
        elif type(norm) is MovingAverageBatchNorm:  # no centring: x / √(ψ² + ε)
            mean, inv_std = torch.zeros_like(norm.running_var), torch.rsqrt(norm.running_var + norm.eps)
        else:
            raise ConfigError(
                f"RepVGG's fusion folds each branch's norm into its conv, which needs a norm that is a fixed "
                f"per-channel affine at inference (running statistics: {FOLDABLE_NORMS}); this network has "
                f"norm={self.norm_name} ({type(norm).__name__}), which normalizes each example by its own statistics, "
                "so its branches have no single equivalent conv. It trains and evaluates as built, unfused; build it "
                f"with one of {FOLDABLE_NORMS} to fuse it."
            )
        gamma = norm.weight if norm.weight is not None else torch.ones_like(inv_std)
        beta = norm.bias if norm.bias is not None else torch.zeros_like(inv_std)
        scale = gamma * inv_std
        return scale.to(like.dtype), (beta - mean * scale).to(like.dtype)


def _kernel(conv: nn.Module) -> Tensor:
    """The kernel a conv applies: its weight for a plain or weight-normalized conv (whose
    forward is ``nn.Conv2d``'s), ``reparametrized_weight()`` for a reparametrization that
    exposes it (ws, centered)."""
    if callable(getattr(conv, "reparametrized_weight", None)):
        return conv.reparametrized_weight()
    if isinstance(conv, nn.Conv2d) and type(conv).forward is nn.Conv2d.forward:
        return conv.weight
    raise ConfigError(
        f"RepVGG's fusion needs each branch to be a conv with one kernel, but this network's convs are "
        f"{type(conv).__name__}, whose output is not a fixed kernel applied to the input (conv=cos divides by each "
        "patch's norm; conv=sws computes its kernel inside its forward). The network trains and evaluates as built, "
        "unfused; build it with conv standard, ws, wn or centered to fuse it."
    )


class RepVGG(nn.Module):
    def __init__(
        self, in_channels: int, num_classes: int, norm: NormFactory, conv: ConvFactory, widths: tuple[int, ...],
        layout: tuple[int, ...], activation: ActivationFactory = RELU,
    ):
        super().__init__()
        self.stage0 = RepVGGBlock(in_channels, widths[0], 1, norm, conv, activation=activation)
        cin, stages = widths[0], []
        for cout, blocks in zip(widths[1:], layout):
            stage = [RepVGGBlock(cin if i == 0 else cout, cout, 2 if i == 0 else 1, norm, conv, activation=activation)
                     for i in range(blocks)]
            stages.append(nn.Sequential(*stage))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = conv.linear(cin, num_classes)

    def first_layer(self) -> nn.Module:
        """Stage 0's 3×3 conv (the input also feeds its 1×1 branch)."""
        return self.stage0.dense.conv

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.stages(self.stage0(x))))


def deploy(model: nn.Module) -> nn.Module:
    """A copy of ``model``, in eval mode, with every :class:`RepVGGBlock` (at any depth, so
    a wrapped network too) replaced by its fused 3×3 conv and activation: the same function as
    ``model`` in eval mode. ``model`` itself is unchanged. Raises
    :class:`~bench.errors.ConfigError` when a block's norm or conv cannot be folded."""
    fused = copy.deepcopy(model).eval()
    for parent in list(fused.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, RepVGGBlock):
                setattr(parent, name, child.fused())
    if isinstance(fused, RepVGGBlock):
        return fused.fused().eval()
    return fused


def stage_widths(width: int, a: float, b: float) -> tuple[int, ...]:
    """The authors' widths with ``width`` in place of 64: (min(w, wa), wa, 2wa, 4wa, 8wb), int-rounded."""
    return (min(width, int(width * a)), int(width * a), int(2 * width * a), int(4 * width * a), int(8 * width * b))


@ARCHS.register(
    "repvgg",
    "RepVGG: 3×3 conv + 1×1 conv + identity branches per block in training, fused into one 3×3 conv for "
    "inference (deploy()); depth 22 (RepVGG-A, default) or 28 (B); widths width·(a, a, 2a, 4a, 8b), a = repvgg_a, "
    "b = repvgg_b (A0: 0.75, 2.5), default width 32; stage 0 at stride 1 for small images.",
    paper="Ding et al. 2021, arXiv:2101.03697 (CVPR 2021)",
    options=(REPVGG_A, REPVGG_B),
    info={"deploy": "deploy"},  # a trial evaluates the fused network too (bench/trial/deploy.py)
)
def build_repvgg(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    norm: NormFactory,
    conv: ConvFactory = ConvFactory(),
    activation: ActivationFactory = RELU,
    width: int = 32,
    depth: int = 22,
    repvgg_a: float = 0.75,
    repvgg_b: float = 2.5,
) -> nn.Module:
    if depth not in LAYOUTS:
        raise ConfigError(
            f"arch=repvgg names its layout by its 3×3 layers, as the paper does; got depth={depth}. Valid depths: "
            f"{', '.join(f'{d} ({SERIES[d]})' for d in LAYOUTS)}."
        )
    widths = stage_widths(width, repvgg_a, repvgg_b)
    if min(widths) < 1:
        raise ConfigError(
            f"arch=repvgg with width={width}, repvgg_a={repvgg_a}, repvgg_b={repvgg_b} gives stage widths "
            f"{', '.join(map(str, widths))}: every stage needs at least one channel. Raise width or the multipliers."
        )
    refuse_instance_norm_on_single_pixels(norm, "repvgg", image_size, strided_stages=len(LAYOUTS[depth]))
    return RepVGG(in_channels, num_classes, norm, conv, widths, LAYOUTS[depth], activation)

"""Normalizer-free CIFAR-style ResNet (Brock, De & Smith 2021, "Characterizing signal
propagation to close the performance gap in unnormalized ResNets", arXiv:2101.08692).

The stage layout of :mod:`bench.zoo.archs.resnet` (a 3×3 stem, three stages of basic
blocks with widths (w, 2w, 4w), stride 2 between stages, depth = 6n + 2) without any norm
layer. Signal propagation is kept in check analytically instead:

- every conv uses Scaled Weight Standardization, Ŵ = g · γ · (W − μ) / (σ √N)
  (:func:`bench.zoo.convs.scaled_ws_conv`), with γ = γ_a on convs fed by the activation
  a and γ = 1 on the stem, so each conv preserves the variance of its input; γ_a =
  1 / sqrt(Var a(z)), z ~ N(0, 1), is the activation's gain
  (:meth:`bench.zoo.activations.ActivationFactory.gain`): sqrt(2 / (1 − 1/π)) for the
  default ReLU, computed for the other pointwise activations (GELU, SiLU); an activation
  that is not pointwise (FReLU, whose funnel holds a BatchNorm) has none and is refused;
- each block is pre-activation, h_{i+1} = h_i + α · f_i(h_i / β_i), with
  f_i = conv ∘ a ∘ conv ∘ a, so f_i maps a unit-variance input to a unit-variance
  output and β_i = sqrt(Var(h_i)) is known in advance: Var(h_0) = 1 after the stem and
  Var(h_{i+1}) = Var(h_i) + α²;
- a transition block (stride 2 or a width change) computes its shortcut, a 1×1 scaled-WS
  conv, from the same normalized activation a(h_i / β_i) as its residual branch, so
  its output variance resets to 1 + α².

As in the authors' NF-ResNet (deepmind-research nfnets/nf_resnet.py), the stream gets a
final γ_a·a before global average pooling, conv biases start at 0 and the classifier
at N(0, 0.01²) weights and zero bias. That reference also multiplies each residual
branch by a learnable scalar initialized at 0 (SkipInit); it is left out here, so that at
initialization the residual stream has the variance β_i² the bookkeeping above predicts.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from bench.errors import ConfigError
from bench.zoo.registry import ARCHS, Option
from bench.zoo.activations import ActivationFactory
from bench.zoo.convs import ConvFactory, scaled_ws_conv
from bench.zoo.norms import NormFactory


class NFBlock(nn.Module):
    """Pre-activation normalizer-free basic block: h + α · conv(a(conv(a(h / β)))), the
    shortcut a 1×1 scaled-WS conv of a(h / β) when the shape changes; the convs fed by
    the activation a carry its gain γ_a."""

    def __init__(self, cin: int, cout: int, stride: int, alpha: float, beta: float, activation: ActivationFactory):
        super().__init__()
        self.alpha, self.beta = alpha, beta
        gain = activation.gain()
        self.act1, self.act2 = activation(cin), activation(cout)
        self.conv1 = scaled_ws_conv(cin, cout, 3, stride=stride, padding=1, gamma=gain)
        self.conv2 = scaled_ws_conv(cout, cout, 3, padding=1, gamma=gain)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = scaled_ws_conv(cin, cout, 1, stride=stride, gamma=gain)

    @property
    def transition(self) -> bool:
        return self.shortcut is not None

    def forward(self, h: Tensor) -> Tensor:
        out = self.act1(h / self.beta)
        skip = self.shortcut(out) if self.shortcut is not None else h
        out = self.conv2(self.act2(self.conv1(out)))
        return skip + self.alpha * out

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta:.4f}"


class NFResNet(nn.Module):
    def __init__(
        self, in_channels: int, num_classes: int, width: int, blocks: int, alpha: float, activation: ActivationFactory
    ):
        super().__init__()
        self.stem = scaled_ws_conv(in_channels, width, 3, padding=1, gamma=1.0)
        stages: list[NFBlock] = []
        cin, expected_var = width, 1.0
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                block = NFBlock(cin, cout, stride, alpha, math.sqrt(expected_var), activation)
                if block.transition:
                    expected_var = 1.0
                expected_var += alpha**2
                stages.append(block)
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.act, self.gain = activation(cin), activation.gain()
        self.fc = nn.Linear(cin, num_classes)
        self.fc.is_classifier = True
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stages(self.stem(x))
        return self.fc(self.gain * self.act(h).mean(dim=(2, 3)))


@ARCHS.register(
    "nf-resnet",
    "Normalizer-free CIFAR ResNet: scaled-WS convs, h + α·f(h/β) blocks (nf_alpha, default 0.2); needs norm=none.",
    paper="Brock et al. 2021, arXiv:2101.08692",
    options=(Option("nf_alpha", float, 0.2, "residual branch scale α: h + α·f(h/β)", ge=0),),
)
def build_nf_resnet(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    norm: NormFactory,
    conv: ConvFactory = ConvFactory(),
    activation: ActivationFactory = ActivationFactory("relu"),
    width: int = 16,
    depth: int = 8,
    nf_alpha: float = 0.2,
) -> nn.Module:
    if norm.name != "none":
        raise ConfigError(
            f"nf-resnet got norm={norm.name!r}, but a normalizer-free network has no norm layers; use norm=none, "
            "or the resnet architecture to compare norms."
        )
    if conv.name != "standard":
        raise ConfigError(
            f"nf-resnet got conv={conv.name!r}, but nf-resnet uses scaled weight standardization in every conv by "
            "design; leave conv unset."
        )
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(
            f"A CIFAR-style nf-resnet has depth 6n+2 with n ≥ 1 blocks per stage; got depth={depth}. "
            "Valid depths: 8, 14, 20, 26, 32, 44, 56, 110 (any 6n+2)."
        )
    if not (nf_alpha > 0 and math.isfinite(nf_alpha)):
        raise ConfigError(
            f"nf_alpha scales every residual branch, h + α·f(h/β), so it must be a finite number > 0; got "
            f"nf_alpha={nf_alpha}. The paper uses α = 0.2."
        )
    if not activation.pointwise:
        raise ConfigError(
            f"nf-resnet got activation={activation.name!r}, but a normalizer-free network keeps its signal in check "
            "by scaling each activation a by its gain γ = 1/sqrt(Var a(z)) for unit-Gaussian z, which needs a "
            "pointwise activation. This one's output depends on more than its own input value (FReLU's on a learned "
            "neighbourhood and a BatchNorm, which has no place in a network without norm layers), so it has no such "
            "gain. Choose a pointwise activation: relu (the default), gelu or silu."
        )
    return NFResNet(in_channels, num_classes, width, (depth - 2) // 6, nf_alpha, activation)

"""Activations, by name (the ``activation`` choice).

Every entry builds a layer for a given number of channels, as a norm does, so an
architecture takes "the activation" as an :class:`ActivationFactory` and any activation
fits any architecture: ``activation(channels)`` after conv features (N, C, H, W),
``activation(features, dims=1)`` after vector features (N, C) (an MLP's hidden units, a
transformer's tokens, which the ViT flattens to (B·N, C) for it). A pointwise activation
(registry tag ``pointwise``) ignores both; a spatial one (tag ``spatial``) needs conv
features and refuses vectors.

The config's ``activation: null`` (the default) keeps each architecture's own, named by
the ``activation`` keyword default of its builder: ReLU in the cnn, mlp, resnet, nf-resnet
and vgg, GELU in the ViT's MLP. So every config without an ``activation`` builds the
model it built before activations were configurable, under the same trial id; setting
``activation`` replaces every activation between the architecture's layers, except the
ViT's LV-ViT conv stem (ReLU, part of that stem's design, as the tanh of its MLP head).

Entries, for an input x (elementwise unless said otherwise):

- ``relu``   y = max(x, 0) (Nair & Hinton 2010): ``nn.ReLU(inplace=True)``, as the
  architectures built it (in place: its input is a norm's or a sum's fresh output).
- ``gelu``   y = x·Φ(x), Φ the standard normal CDF (Hendrycks & Gimpel 2016), the exact
  (erf) form: ``nn.GELU()``, the ViT's.
- ``silu``   y = x·σ(x) = x / (1 + e^(−x)), σ the logistic sigmoid (Elfwing, Uchibe & Doya
  2018; Swish with β = 1 in Ramachandran, Zoph & Le 2017): ``nn.SiLU()``.
- ``frelu``  Funnel activation (Ma, Zhang & Sun 2020): y_{c,i,j} = max(x_{c,i,j},
  T(x_{c,i,j})), the funnel condition T(x_{c,i,j}) = x^ω_{c,i,j} · p^ω_c, a k×k window
  x^ω centred on (i, j) of channel c weighted by the window p^ω_c that channel c shares:
  a k×k depthwise conv (zero padding k//2, so the map keeps its size), which the authors'
  layer follows with a BatchNorm, so a unit activates on its own value or on its spatial
  neighbourhood's. As that layer (megvii-model/FunnelAct, ``resnet/frelu.py``, ``FReLU``:
  ``maximum(x, bn_frelu(conv_frelu(x)))``): the conv has a bias, the BatchNorm eps 1e-5 and
  momentum 0.1 (MegEngine's momentum 0.9 is the weight of the running statistics), both
  at their library's default init. The window size is ``frelu_kernel`` (k = 3, the
  authors' default; odd). The conv and the BatchNorm are part of the activation: plain
  ``nn.Conv2d`` and ``nn.BatchNorm2d``, whatever the study's ``conv`` and ``norm`` (not
  reparametrized, not counted as norm layers by ``train_only_norm``); an architecture
  that initializes all its convs (vgg) initializes the funnel's too, as the authors'
  ResNet does. Everywhere the harness's architectures apply an activation: the authors'
  ResNet-50 keeps ReLU in its stem and last stage (``resnet/resnet.py``). FReLU is defined
  on 2-D feature maps (the paper's "2D spatial condition") and has no form for vectors,
  so an architecture applying its activation to vector features refuses it.

Normalizer-free networks scale each activation g by its gain (Brock, De & Smith 2021,
arXiv:2101.08692): γ_g = 1 / sqrt(Var g(z)) for z ~ N(0, 1), so that γ_g·g(z) has unit
variance (:meth:`ActivationFactory.gain`). ReLU's is sqrt(2 / (1 − 1/π)) in closed form;
the others' are computed by quadrature of the entry's own module (no library gives it;
the authors' table, deepmind-research ``nfnets/base.py`` ``nonlinearities``, and timm's
copy of it, ``timm.models.nfnet._nonlin_gamma``, hold sampled estimates for a fixed list
of functions, GELU's for its tanh approximation).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bench.errors import ConfigError
from bench.zoo.convs import RELU_GAIN
from bench.zoo.registry import ACTIVATIONS, Option

FRELU_KERNEL = Option(
    "frelu_kernel", int, 3, "FReLU: side k of the funnel condition's k×k depthwise window (odd)", ge=1
)

# Gains known in closed form (the others are computed): ReLU's is Brock et al.'s.
CLOSED_FORM_GAINS = {"relu": RELU_GAIN}
QUADRATURE_HALF_WIDTH = 12.0  # N(0, 1) beyond ±12 weighs < 1e-32
QUADRATURE_POINTS = 2**16 + 1  # odd: z = 0 (ReLU's kink) is a node; error ~1e-9 on a kink


@dataclass(frozen=True)
class ActivationFactory:
    """An activation chosen by name with its declared options; call it with a channel
    count (and ``dims=1`` for vector features)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        entry = ACTIVATIONS.entry(self.name)  # an unknown name fails here, listing the valid ones
        defaults = {o.name: o.default for o in entry.options}
        unknown = sorted(set(self.options) - set(defaults))
        if unknown:
            raise ConfigError(f"The activation {self.name!r} takes no option {unknown[0]!r}; it takes: "
                              f"{', '.join(defaults) or 'none'}.")
        object.__setattr__(self, "options", {**defaults, **self.options})

    @property
    def pointwise(self) -> bool:
        """Whether each output depends on its own input value alone (tag ``pointwise``)."""
        return "pointwise" in ACTIVATIONS.entry(self.name).tags

    def __call__(self, num_channels: int, dims: int = 2) -> nn.Module:
        return ACTIVATIONS.get(self.name)(num_channels, dims, **self.options)

    def gain(self) -> float:
        """γ with Var(γ·g(z)) = 1 for z ~ N(0, 1), a pointwise activation's gain."""
        if not self.pointwise:
            raise ConfigError(
                f"activation={self.name} is not pointwise, so it has no gain γ = 1/std(g(z)) for unit-Gaussian "
                "inputs: its output depends on more than its own input value."
            )
        return CLOSED_FORM_GAINS.get(self.name) or _quadrature_gain(self.name, tuple(sorted(self.options.items())))


@functools.cache
def _quadrature_gain(name: str, options: tuple[tuple[str, Any], ...]) -> float:
    """1 / sqrt(Var g(z)), z ~ N(0, 1), by the trapezoid rule in float64 on [−12, 12] (on
    the CPU, also while a model is built on the meta device)."""
    with torch.device("cpu"):
        module = ActivationFactory(name, dict(options))(1, dims=1)
        z = torch.linspace(-QUADRATURE_HALF_WIDTH, QUADRATURE_HALF_WIDTH, QUADRATURE_POINTS, dtype=torch.float64)
        density = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        with torch.no_grad():
            g = module(z.clone())
        mean = torch.trapezoid(g * density, z)
        variance = torch.trapezoid((g - mean) ** 2 * density, z)
    return 1.0 / math.sqrt(variance.item())


@ACTIVATIONS.register(
    "relu", "ReLU: max(x, 0).", paper="Nair & Hinton 2010, ICML", tags=("pointwise",),
)
def relu(num_channels: int, dims: int) -> nn.Module:
    return nn.ReLU(inplace=True)


@ACTIVATIONS.register(
    "gelu", "GELU: x·Φ(x), Φ the standard normal CDF (exact erf form; the ViT's).",
    paper="Hendrycks & Gimpel 2016, arXiv:1606.08415", tags=("pointwise",),
)
def gelu(num_channels: int, dims: int) -> nn.Module:
    return nn.GELU()


@ACTIVATIONS.register(
    "silu", "SiLU / Swish-1: x·σ(x), σ the logistic sigmoid.",
    paper="Elfwing, Uchibe & Doya 2018, arXiv:1702.03118; Ramachandran, Zoph & Le 2017, arXiv:1710.05941",
    tags=("pointwise",),
)
def silu(num_channels: int, dims: int) -> nn.Module:
    return nn.SiLU()


class FReLU(nn.Module):
    """Funnel activation: max(x, BN(depthwise k×k conv(x))) per channel (see the module
    docstring; the authors' ``resnet/frelu.py``)."""

    def __init__(self, num_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(num_channels, num_channels, kernel_size, padding=kernel_size // 2, groups=num_channels)
        self.bn = nn.BatchNorm2d(num_channels)

    def funnel(self, x: Tensor) -> Tensor:
        """The funnel condition T(x)."""
        return self.bn(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        return torch.maximum(x, self.funnel(x))


@ACTIVATIONS.register(
    "frelu",
    "FReLU (funnel activation): max(x, T(x)), T a k×k depthwise conv + BatchNorm per channel (frelu_kernel, "
    "default 3); conv features only.",
    paper="Ma, Zhang & Sun 2020, ECCV, arXiv:2007.11824",
    options=(FRELU_KERNEL,),
    tags=("spatial",),
)
def frelu(num_channels: int, dims: int, *, frelu_kernel: int) -> nn.Module:
    if dims != 2:
        raise ConfigError(
            f"activation=frelu needs conv features: its funnel condition is a {frelu_kernel}×{frelu_kernel} "
            f"depthwise conv over each channel's H×W map, and this architecture applies its activation to vectors "
            f"of {num_channels} features (an MLP's hidden units, a transformer's tokens), which have no spatial "
            "neighbourhood; the paper defines FReLU for 2-D feature maps only. Use frelu with a convolutional "
            "architecture, or a pointwise activation (relu, gelu, silu) here."
        )
    if frelu_kernel % 2 == 0:
        raise ConfigError(
            f"frelu_kernel={frelu_kernel}: FReLU's funnel window is centred on each pixel (padding k//2 keeps the "
            "map's size), which needs an odd side. The authors use 3; try 1, 3, 5 or 7."
        )
    return FReLU(num_channels, frelu_kernel)

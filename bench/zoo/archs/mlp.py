"""A multilayer perceptron on flattened images: (linear → norm → activation, ReLU by
default) × depth, then a linear classifier. Norms and activations act on vector features
(``dims=1``)."""

from __future__ import annotations

from torch import nn

from bench.errors import ConfigError
from bench.zoo.registry import ARCHS
from bench.zoo.activations import ActivationFactory
from bench.zoo.convs import ConvFactory
from bench.zoo.norms import NormFactory


@ARCHS.register("mlp", "Multilayer perceptron: depth hidden layers of `width` units (defaults 2 × 256).")
def build_mlp(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    norm: NormFactory,
    conv: ConvFactory = ConvFactory(),
    activation: ActivationFactory = ActivationFactory("relu"),
    width: int = 256,
    depth: int = 2,
) -> nn.Module:
    if depth < 0:
        raise ConfigError(f"The mlp needs depth ≥ 0 hidden layers; got depth={depth}.")
    layers: list[nn.Module] = [nn.Flatten()]
    features = in_channels * image_size * image_size
    for _ in range(depth):
        layers += [conv.linear(features, width, bias=norm.name == "none"), norm(width, dims=1), activation(width, dims=1)]
        features = width
    layers.append(conv.linear(features, num_classes))
    return nn.Sequential(*layers)

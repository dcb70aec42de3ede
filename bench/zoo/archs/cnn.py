"""A small plain CNN: (conv → norm → activation, ReLU by default) × depth, 2×2 max-pool
after every second conv, then the classifier head (``head``, :mod:`bench.zoo.archs.heads`;
by default global average pool and linear). ``depth=4`` is the 4-conv CNN of the small-scale batch-size
experiments; channels double after each pooling. The convs between two poolings are a
stage (two per stage, the last one shorter when depth is odd): what ``conv_from_stage``
counts (:mod:`bench.zoo.spatial_convs`)."""

from __future__ import annotations

from torch import nn

from bench.errors import ConfigError
from bench.zoo.archs.heads import HEAD_OPTIONS, head_layers
from bench.zoo.registry import ARCHS
from bench.zoo.activations import ActivationFactory
from bench.zoo.convs import ConvFactory
from bench.zoo.norms import NormFactory


@ARCHS.register(
    "cnn", "Small plain CNN: depth conv layers (default 4), pooled every 2, width doubling.", options=HEAD_OPTIONS,
)
def build_cnn(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    norm: NormFactory,
    conv: ConvFactory = ConvFactory(),
    activation: ActivationFactory = ActivationFactory("relu"),
    width: int = 16,
    depth: int = 4,
    head: str = "gap",
    head_rank: int = 20,
    head_drop_factor: float = 0.5,
) -> nn.Module:
    if depth < 1:
        raise ConfigError(f"The cnn needs depth ≥ 1 conv layers; got depth={depth}.")
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    for i in range(depth):
        out = width * 2 ** (i // 2)
        layers += [conv.for_stage(i // 2 + 1).conv(channels, out, 3, padding=1, bias=norm.name == "none"), norm(out),
                   activation(out)]
        channels = out
        if i % 2 == 1 and size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
    layers += head_layers(channels, num_classes, conv, head=head, head_rank=head_rank, head_drop_factor=head_drop_factor)
    model = nn.Sequential(*layers)
    model.conv_stages = (depth + 1) // 2
    return model

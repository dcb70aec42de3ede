"""VGG (Simonyan & Zisserman 2015, arXiv:1409.1556) for small images: the conv layouts of
VGG-11/13/16/19 (configurations A, B, D, E), channels scaled by ``width``.

Five stages of 3×3 convs (padding 1), each conv followed by the registry norm and the
activation (ReLU unless the config chooses another), a 2×2 max-pool after each stage;
stage s has width · (1, 2, 4, 8, 8)[s] channels (width 64 gives the paper's 64…512).
``depth`` names the network as the paper does, by its weight layers: VGG-n has n − 3
convs (its three fully connected layers, sized for 224-pixel ImageNet images, are
replaced by global average pooling and one linear classifier, the usual CIFAR
adaptation; after five pools a 32-pixel image is 1×1 anyway). A pool is skipped once the
map is 1 pixel wide (small images: 28 → 14 → 7 → 3 → 1; 8 → 4 → 2 → 1).

``norm=none`` is the original VGG (convs with bias, no norm layers); any other norm
gives the BatchNorm-style VGG (convs without bias, then the norm). Conv weights start as
in torchvision's VGG: He-normal (fan-out, ReLU gain), biases at 0 (an FReLU's funnel
conv too, as the FReLU authors' ResNet initializes every conv), so the deep variants
without norm layers still pass a signal; the classifier starts at N(0, 0.01²). The
classifier head is the ``head`` option (:mod:`bench.zoo.archs.heads`), by default that
global average pool and linear; with the factorized head, its linear part starts at
N(0, 0.01²).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from bench.errors import ConfigError
from bench.zoo.archs.heads import HEAD_OPTIONS, classifier_linear, head_layers
from bench.zoo.registry import ARCHS
from bench.zoo.activations import ActivationFactory
from bench.zoo.convs import ConvFactory
from bench.zoo.norms import NormFactory

# convs per stage, by the number of weight layers (convs + the paper's 3 FC layers)
LAYOUTS: dict[int, tuple[int, ...]] = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
STAGE_MULTIPLIERS = (1, 2, 4, 8, 8)


class VGG(nn.Module):
    def __init__(
        self, in_channels: int, num_classes: int, image_size: int, norm: NormFactory, conv: ConvFactory, width: int,
        layout: tuple[int, ...], *, activation: ActivationFactory, **heads: Any,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size, bias = in_channels, image_size, norm.name == "none"
        for stage, (convs, mult) in enumerate(zip(layout, STAGE_MULTIPLIERS), 1):
            out = width * mult
            if size < 2 and norm.name == "in":
                raise ConfigError(
                    f"InstanceNorm normalizes each channel over its spatial positions, but on {image_size}-pixel "
                    f"images stage {stage} of this VGG sees 1×1 maps (one position: the output would be constant). "
                    "Use it on 32-pixel images, or choose bn, gn, ln or none."
                )
            for _ in range(convs):
                layers += [conv.conv(channels, out, 3, padding=1, bias=bias), norm(out), activation(out)]
                channels = out
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        *pool, self.classifier = head_layers(channels, num_classes, conv, **heads)
        self.pool = nn.Sequential(*pool)
        self.classifier.is_classifier = True
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and isinstance(m.weight, nn.Parameter):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        linear = classifier_linear(self.classifier)
        if isinstance(linear.weight, nn.Parameter):
            nn.init.normal_(linear.weight, std=0.01)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def first_layer(self) -> nn.Module:
        return self.features[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)))


@ARCHS.register(
    "vgg",
    "VGG-11/13/16/19 conv layouts (depth, default 11) for small images, channels width·(1, 2, 4, 8, 8) "
    "(default width 16), GAP + linear head (or another: head); norm=none is the original VGG.",
    paper="Simonyan & Zisserman 2015, arXiv:1409.1556",
    options=HEAD_OPTIONS,
)
def build_vgg(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    norm: NormFactory,
    conv: ConvFactory = ConvFactory(),
    activation: ActivationFactory = ActivationFactory("relu"),
    width: int = 16,
    depth: int = 11,
    head: str = "gap",
    head_rank: int = 20,
    head_drop_factor: float = 0.5,
) -> nn.Module:
    if depth not in LAYOUTS:
        raise ConfigError(
            f"arch=vgg names its layout by weight layers, as the paper does; got depth={depth}. "
            f"Valid depths: {', '.join(map(str, LAYOUTS))} (VGG-11, -13, -16, -19)."
        )
    return VGG(
        in_channels, num_classes, image_size, norm, conv, width, LAYOUTS[depth], activation=activation,
        head=head, head_rank=head_rank, head_drop_factor=head_drop_factor,
    )

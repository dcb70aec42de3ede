"""CIFAR-style ResNet (He et al. 2016, section 4.2): a 3×3 stem, three stages of basic
blocks with widths (w, 2w, 4w), stride 2 between stages, global average pool, linear.
depth = 6n + 2 (8, 14, 20, 32, 44, 56, 110); a 1×1 conv + norm projects the shortcut
when the shape changes (option B)."""

from __future__ import annotations

from torch import Tensor, nn

from bench.errors import ConfigError
from bench.zoo.registry import ARCHS
from bench.zoo.convs import ConvFactory
from bench.zoo.norms import NormFactory


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: NormFactory, conv: ConvFactory):
        super().__init__()
        bias = norm.name == "none"
        self.conv1, self.norm1 = conv.conv(cin, cout, 3, stride=stride, padding=1, bias=bias), norm(cout)
        self.conv2, self.norm2 = conv.conv(cout, cout, 3, padding=1, bias=bias), norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv.conv(cin, cout, 1, stride=stride, bias=bias), norm(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, norm: NormFactory, conv: ConvFactory, width: int, blocks: int):
        super().__init__()
        stem = conv.conv(in_channels, width, 3, padding=1, bias=norm.name == "none")
        self.stem = nn.Sequential(stem, norm(width), nn.ReLU(inplace=True))
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(blocks):
                stages.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, norm, conv))
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

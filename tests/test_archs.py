from __future__ import annotations

import pytest
import torch

from bench.errors import ConfigError
from bench.zoo.archs import ARCHS
from bench.zoo.norms import NormFactory


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet_depth_is_6n_plus_2():
    norm = NormFactory("bn")
    r8 = ARCHS.get("resnet")(in_channels=3, num_classes=10, image_size=32, norm=norm, width=16, depth=8)
    r20 = ARCHS.get("resnet")(in_channels=3, num_classes=10, image_size=32, norm=norm, width=16, depth=20)
    convs = [m for m in r20.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 19  # stem + 3 stages × 3 blocks × 2 convs; + final linear = 20 layers
    assert count(r20) > count(r8)
    # He et al.'s ResNet-20 has 0.27M parameters
    assert 0.26e6 < count(r20) < 0.29e6
    assert r20(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match="6n\\+2"):
        ARCHS.get("resnet")(in_channels=3, num_classes=10, image_size=32, norm=norm, depth=10)


def test_cnn_and_mlp_shapes():
    norm = NormFactory.of("gn", norm_groups=4)
    cnn = ARCHS.get("cnn")(in_channels=1, num_classes=10, image_size=28, norm=norm, width=16, depth=4)
    assert cnn(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    widths = [m.out_channels for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [16, 16, 32, 32]
    mlp = ARCHS.get("mlp")(in_channels=1, num_classes=10, image_size=8, norm=norm, width=32, depth=3)
    assert mlp(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_conv_bias_only_without_norm():
    with_norm = ARCHS.get("cnn")(in_channels=1, num_classes=10, image_size=8, norm=NormFactory("bn"))
    without = ARCHS.get("cnn")(in_channels=1, num_classes=10, image_size=8, norm=NormFactory("none"))
    assert all(m.bias is None for m in with_norm.modules() if isinstance(m, torch.nn.Conv2d))
    assert all(m.bias is not None for m in without.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("arch", ARCHS.names())
@pytest.mark.parametrize(("channels", "size"), [(1, 8), (1, 28), (3, 32)], ids=["digits", "fashion-mnist", "cifar"])
def test_every_architecture_maps_small_images_to_logits(arch, channels, size):
    """At its default width and depth, with bn (none where the architecture has no norm
    layers); shapes only, on the meta device."""
    for norm in ("bn", "none"):
        try:
            with torch.device("meta"):
                model = ARCHS.get(arch)(in_channels=channels, num_classes=10, image_size=size, norm=NormFactory(norm))
                logits = model(torch.empty(2, channels, size, size))
            break
        except ConfigError as exc:
            refused = exc
    else:
        pytest.fail(f"arch={arch} builds with neither bn nor none: {refused}")
    assert logits.shape == (2, 10)

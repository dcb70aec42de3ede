"""VGG for small images: the paper's conv layouts, width scaling, norms from the registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.errors import ConfigError
from bench.spec import TrialConfig
from bench.trial import preflight
from bench.zoo.archs import ARCHS, first_layer
from bench.zoo.norms import NormFactory, is_norm_module


def vgg(**kw) -> nn.Module:
    args = dict(in_channels=1, num_classes=10, image_size=28, norm=NormFactory("bn"), width=4, depth=11)
    return ARCHS.get("vgg")(**{**args, **kw})


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize(
    "depth,channels",
    [
        (11, [1, 2, 4, 4, 8, 8, 8, 8]),
        (13, [1, 1, 2, 2, 4, 4, 8, 8, 8, 8]),
        (16, [1, 1, 2, 2, 4, 4, 4, 8, 8, 8, 8, 8, 8]),
        (19, [1, 1, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8, 8, 8, 8, 8]),
    ],
)
def test_layouts_are_the_papers_scaled_by_width(depth, channels):
    model = vgg(depth=depth, width=4)
    layers = convs(model)
    assert len(layers) == depth - 3  # VGG-n: n − 3 convs + the paper's 3 FC layers
    assert [c.out_channels for c in layers] == [4 * m for m in channels]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in layers)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_width_64_gives_the_papers_channels():
    model = vgg(width=64, depth=16, in_channels=3, image_size=32)
    assert sorted({c.out_channels for c in convs(model)}) == [64, 128, 256, 512]


@pytest.mark.parametrize("size,channels,pools", [(32, 3, 5), (28, 1, 4), (8, 1, 3)])
def test_pools_stop_at_one_pixel(size, channels, pools):
    model = vgg(in_channels=channels, image_size=size)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == pools
    assert model(torch.randn(2, channels, size, size)).shape == (2, 10)


def test_parameter_count_without_norm():
    # VGG-11 at width 4, one input channel: stage channels 4, 8, 16, 32, 32; convs with bias
    def conv(cin: int, cout: int) -> int:
        return cin * cout * 9 + cout

    expected = (
        conv(1, 4) + conv(4, 8) + conv(8, 16) + conv(16, 16) + conv(16, 32) + 3 * conv(32, 32) + (32 * 10 + 10)
    )
    assert expected == 36538
    model = vgg(norm=NormFactory("none"))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_norm_none_is_the_original_vgg_and_other_norms_follow_every_conv():
    plain = vgg(norm=NormFactory("none"))
    assert all(c.bias is not None for c in convs(plain))
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in plain.modules())
    for name in ("bn", "gn", "ln"):
        model = vgg(norm=NormFactory.of(name, norm_groups=4))
        layers = list(model.features)
        assert all(c.bias is None for c in convs(model))
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.Conv2d):
                assert is_norm_module(layers[i + 1]) and isinstance(layers[i + 2], nn.ReLU)
        assert sum(p.numel() for m in model.modules() if is_norm_module(m) for p in m.parameters()) > 0


def test_torchvision_init():
    torch.manual_seed(0)
    model = vgg(width=16, norm=NormFactory("none"), depth=16)
    last = convs(model)[-1]
    fan_out = last.out_channels * 9
    assert last.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)
    assert torch.equal(last.bias, torch.zeros_like(last.bias))
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.2)


def test_first_layer_and_classifier():
    model = vgg()
    assert first_layer(model) is convs(model)[0]
    assert model.classifier.is_classifier


def test_bad_depth_and_bad_groups_are_config_errors():
    with pytest.raises(ConfigError, match="Valid depths: 11, 13, 16, 19"):
        vgg(depth=12)
    with pytest.raises(ConfigError, match="norm_groups=3"):
        vgg(norm=NormFactory.of("gn", norm_groups=3))


def test_instancenorm_on_one_pixel_maps_is_refused():
    with pytest.raises(ConfigError, match="stage 5 .* 1×1"):
        vgg(norm=NormFactory("in"), image_size=28)
    model = vgg(norm=NormFactory("in"), image_size=32, in_channels=3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_preflight_builds_on_the_meta_device():
    preflight(TrialConfig(dataset="fashion-mnist", arch="vgg", depth=16, width=8, norm="gn", norm_groups=4))
    with pytest.raises(ConfigError, match="Valid depths"):
        preflight(TrialConfig(dataset="fashion-mnist", arch="vgg", depth=8))

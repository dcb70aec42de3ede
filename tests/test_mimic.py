"""MimicNorm's networks against the authors' code (Kid-key/MimicNorm): conv and linear
biases everywhere, the ResNet's learnable residual and shortcut scalars with their initial
values, centred convs and the last BatchNorm; and every other norm's networks as before."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.spec import TrialConfig
from bench.trial.build import build_model
from bench.zoo.archs.resnet import Scale
from bench.zoo.convs import CenteredConv2d
from bench.zoo.datasets import dataset_source


def _build(**config) -> nn.Module:
    cfg = TrialConfig(**{"dataset": "cifar10", **config})
    return build_model(cfg, dataset_source(cfg.dataset))


# -- the authors' ResNet, transcribed ---------------------------------------------------
# ImageNet/models/resnet_nobn.py (BasicBlock, downsample, lastbn) with the CIFAR stem of
# Cifar100/models/resnet_nobn.py (3×3 conv with bias, ReLU), laid out as this project's
# CIFAR-style ResNet: three stages of widths (w, 2w, 4w), stride 2 between stages.


class AuthorsScale(nn.Module):  # MyScaleLayer
    def __init__(self, initvalue: float = 1.2):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1) * initvalue)

    def forward(self, x):
        return x * self.scale


class AuthorsBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int, blocknum: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=True)
        self.scalelayer = AuthorsScale(1.2**2 / blocknum)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=True), AuthorsScale())

    def forward(self, x):
        out = self.scalelayer(self.conv2(F.relu(self.conv1(x))))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class AuthorsResNet(nn.Module):
    def __init__(self, width: int, blocks: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=True)
        layers, cin, blocknum = [], width, 0
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(blocks):
                blocknum += 1
                layers.append(AuthorsBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, blocknum))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        self.lastbn = nn.BatchNorm1d(num_classes, affine=False)

    def forward(self, x):
        x = self.layers(F.relu(self.conv1(x)))
        return self.lastbn(self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1)))


@pytest.mark.parametrize("depth", [8, 14])
def test_mimicnorm_resnet_has_the_authors_parameters_in_their_order(depth):
    ours = _build(arch="resnet", norm="mimic", width=16, depth=depth)
    theirs = AuthorsResNet(16, (depth - 2) // 6, 10)
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    # the scalars, with their initial values: 1.2²/k for the k-th block, 1.2 on each projection
    blocks = (depth - 2) // 6 * 3
    residual = [m.scale.item() for n, m in ours.named_modules() if n.endswith("residual_scale")]
    assert residual == pytest.approx([1.44 / k for k in range(1, blocks + 1)])
    shortcut = [m.scale.item() for n, m in ours.named_modules() if isinstance(m, Scale) and ".shortcut." in n]
    assert shortcut == pytest.approx([1.2, 1.2])  # the two stage transitions; identity shortcuts have none
    assert all(p.requires_grad for p in ours.parameters())


def test_mimicnorm_resnet_parameter_names():
    names = {n: tuple(p.shape) for n, p in _build(arch="resnet", norm="mimic", width=16, depth=8).named_parameters()}
    assert names == {
        "0.stem.0.weight": (16, 3, 3, 3), "0.stem.0.bias": (16,),
        "0.stages.0.conv1.weight": (16, 16, 3, 3), "0.stages.0.conv1.bias": (16,),
        "0.stages.0.conv2.weight": (16, 16, 3, 3), "0.stages.0.conv2.bias": (16,),
        "0.stages.0.residual_scale.scale": (1,),
        "0.stages.1.conv1.weight": (32, 16, 3, 3), "0.stages.1.conv1.bias": (32,),
        "0.stages.1.conv2.weight": (32, 32, 3, 3), "0.stages.1.conv2.bias": (32,),
        "0.stages.1.residual_scale.scale": (1,),
        "0.stages.1.shortcut.0.weight": (32, 16, 1, 1), "0.stages.1.shortcut.0.bias": (32,),
        "0.stages.1.shortcut.2.scale": (1,),
        "0.stages.2.conv1.weight": (64, 32, 3, 3), "0.stages.2.conv1.bias": (64,),
        "0.stages.2.conv2.weight": (64, 64, 3, 3), "0.stages.2.conv2.bias": (64,),
        "0.stages.2.residual_scale.scale": (1,),
        "0.stages.2.shortcut.0.weight": (64, 32, 1, 1), "0.stages.2.shortcut.0.bias": (64,),
        "0.stages.2.shortcut.2.scale": (1,),
        "0.head.2.weight": (10, 64), "0.head.2.bias": (10,),
    }


def test_mimicnorm_resnet_computes_the_authors_forward_pass():
    """With the same parameters (the authors centre the stored conv weights, ``meanweigh``;
    ours centres them in the forward pass), the two networks give the same logits; every
    parameter is moved off its initial value first, so biases and scalars count."""
    torch.manual_seed(0)
    ours = _build(arch="resnet", norm="mimic", width=8, depth=14).double()
    theirs = AuthorsResNet(8, 2, 10).double()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
            module = ours.get_submodule(name.rsplit(".", 1)[0])
            if isinstance(module, CenteredConv2d) and name.endswith("weight"):
                q.copy_(module.reparametrized_weight())
            else:
                q.copy_(p)
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x))  # training mode: the last BN on batch statistics
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("arch", ["cnn", "vgg", "mlp", "resnet"])
def test_mimicnorm_gives_every_conv_and_linear_a_bias_starting_at_zero(arch):
    """The authors' networks (resnet_nobn.py, vgg_nobn.py) have bias=True on every conv
    and linear layer, initialized at 0; the convs are the centred ones."""
    model = _build(arch=arch, norm="mimic")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(m.bias is not None and m.bias.requires_grad for m in layers)
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert all(isinstance(m, CenteredConv2d) and not m.bias.any() for m in convs)
    hidden = [m for m in layers if isinstance(m, nn.Linear)][:-1]  # the classifier keeps its bias as built
    assert all(not m.bias.any() for m in hidden)
    assert isinstance(model[-1], nn.BatchNorm1d) and not model[-1].affine


def test_mimicnorm_biases_and_scalars_are_trained():
    model = _build(arch="resnet", norm="mimic", width=8, depth=8)
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    for name, p in model.named_parameters():
        if name.endswith(("bias", "scale")) and "head" not in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


# -- every other norm's networks are as before ------------------------------------------

# (parameters, parameter tensors) of each architecture's default size on CIFAR-10,
# as built before MimicNorm's networks took the authors' biases and scalars
BEFORE = {
    ("cnn", "bn"): (17082, 14), ("cnn", "none"): (16986, 10), ("cnn", "gn"): (17082, 14),
    ("mlp", "bn"): (855562, 8), ("mlp", "none"): (855050, 6), ("mlp", "gn"): (855562, 8),
    ("resnet", "bn"): (78042, 29), ("resnet", "none"): (77706, 20), ("resnet", "gn"): (78042, 29),
    ("vgg", "bn"): (579098, 26), ("vgg", "none"): (578410, 18), ("vgg", "gn"): (579098, 26),
}


@pytest.mark.parametrize(("arch", "norm"), sorted(BEFORE))
def test_other_norms_build_the_same_networks(arch, norm):
    extra = {"norm_groups": 4} if norm == "gn" else {}
    model = _build(arch=arch, norm=norm, **extra)
    params = list(model.parameters())
    assert (sum(p.numel() for p in params), len(params)) == BEFORE[(arch, norm)]
    assert not any(isinstance(m, Scale) for m in model.modules())
    if norm != "none":
        assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_mimicnorm_adds_exactly_the_biases_and_the_scalars():
    """MimicNorm's network is the norm-free one (same layers, a bias on each) plus, in the
    ResNet, one scalar per block and one per projection shortcut."""
    for arch, scalars in (("cnn", 0), ("mlp", 0), ("vgg", 0), ("resnet", 3 + 2)):
        mimic = sum(p.numel() for p in _build(arch=arch, norm="mimic").parameters())
        assert mimic == BEFORE[(arch, "none")][0] + scalars, arch

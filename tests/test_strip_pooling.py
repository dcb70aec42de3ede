"""The strip pooling module (Hou et al. 2020, arXiv:2003.13328) and its place in the ResNet.

The reference is the authors' module, ``SPBlock`` in houqb/SPNet (formerly
Andrew-Qibin/SPNet) ``models/resnet.py`` at its last revision (5e97da3), re-implemented
below in PyTorch from that file: ``pool1 = AdaptiveAvgPool2d((None, 1))`` → 3×1 conv
(no bias) → BN, ``pool2 = AdaptiveAvgPool2d((1, None))`` → 1×3 conv (no bias) → BN, both
``expand``-ed to H×W and summed, ReLU, 1×1 conv (bias), sigmoid; its ``Bottleneck.forward``
multiplies the activation by the result (``out = out * self.spm(out)``). Its placement rule
is ``ResNet._make_layer`` of the same file, also re-implemented below. The equations are
also checked in NumPy, position by position. That the default ResNet is unchanged (its
parameters and outputs against numbers from before the option existed) is pinned in
tests/test_heads.py with the other architectures' defaults.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.errors import ConfigError
from bench.spec import TrialConfig, trial_from_assignments
from bench.zoo.archs import ARCHS
from bench.zoo.archs.strip_pooling import StripPooling
from bench.zoo.convs import ConvFactory
from bench.zoo.norms import NormFactory


class AuthorsSPBlock(nn.Module):
    """houqb/SPNet ``models/resnet.py``, ``SPBlock`` (norm_layer = BatchNorm2d); returns the gate."""

    def __init__(self, inplanes: int, outplanes: int):
        super().__init__()
        midplanes = outplanes
        self.conv1 = nn.Conv2d(inplanes, midplanes, kernel_size=(3, 1), padding=(1, 0), bias=False)
        self.bn1 = nn.BatchNorm2d(midplanes)
        self.conv2 = nn.Conv2d(inplanes, midplanes, kernel_size=(1, 3), padding=(0, 1), bias=False)
        self.bn2 = nn.BatchNorm2d(midplanes)
        self.conv3 = nn.Conv2d(midplanes, outplanes, kernel_size=1, bias=True)
        self.pool1 = nn.AdaptiveAvgPool2d((None, 1))
        self.pool2 = nn.AdaptiveAvgPool2d((1, None))
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.size()
        x1 = self.bn1(self.conv1(self.pool1(x))).expand(-1, -1, h, w)
        x2 = self.bn2(self.conv2(self.pool2(x))).expand(-1, -1, h, w)
        return self.conv3(self.relu(x1 + x2)).sigmoid()


def authors_spm_flags(blocks_per_stage: list[int], planes: list[int], spm_on: bool = True) -> list[bool]:
    """``ResNet._make_layer`` of the authors' file: which blocks get an SPM, stage by stage."""
    flags = []
    for blocks, p in zip(blocks_per_stage, planes):
        on = spm_on if p == 512 else False
        flags.append(on)
        for i in range(1, blocks):
            if i >= blocks - 1 or p == 512:
                on = spm_on
            flags.append(on)
    return flags


def ours_and_theirs(channels: int = 4) -> tuple[StripPooling, AuthorsSPBlock]:
    torch.manual_seed(0)
    ours = StripPooling(channels, NormFactory("bn"), ConvFactory())
    theirs = AuthorsSPBlock(channels, channels)
    names = {"conv_h": "conv1", "norm_h": "bn1", "conv_v": "conv2", "norm_v": "bn2", "fuse": "conv3"}
    with torch.no_grad():
        for module in ours.parameters():  # random affine norms and biases, not only the init
            module.add_(torch.randn_like(module) * 0.3)
    state = {f"{names[k.split('.')[0]]}.{k.split('.', 1)[1]}": v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state)
    return ours, theirs


def test_module_matches_the_authors_spblock_in_training_and_evaluation():
    ours, theirs = ours_and_theirs()
    x = torch.randn(3, 4, 7, 5, requires_grad=True)
    x_theirs = x.detach().clone().requires_grad_(True)
    for step in range(3):  # training: batch statistics, running statistics updated alike
        out, ref = ours(x), x_theirs * theirs(x_theirs)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        grad = torch.randn_like(out)
        out.backward(grad)
        ref.backward(grad)
        torch.testing.assert_close(x.grad, x_theirs.grad, rtol=1e-5, atol=1e-6)
        x.grad = x_theirs.grad = None
    for name, buffer in ours.state_dict().items():
        if "running" in name:
            key = {"norm_h": "bn1", "norm_v": "bn2"}[name.split(".")[0]] + "." + name.split(".", 1)[1]
            torch.testing.assert_close(buffer, theirs.state_dict()[key])
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), x * theirs(x), rtol=1e-5, atol=1e-6)


def test_module_follows_the_equations_position_by_position():
    """norm=none: z_{c,i,j} = x_{c,i,j} · σ(b + Σ_d V_{c,d} ReLU(u_{d,i} + v_{d,j})), with u the
    3×1 conv of the row means over i−1…i+1 and v the 1×3 conv of the column means."""
    torch.manual_seed(1)
    spm = StripPooling(2, NormFactory("none"), ConvFactory()).double()
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        z = spm(x)[0].numpy()
    xs = x[0].numpy()
    c_, h_, w_ = xs.shape
    kh, bh = spm.conv_h.weight.detach().numpy()[:, :, :, 0], spm.conv_h.bias.detach().numpy()  # (C, C, 3)
    kv, bv = spm.conv_v.weight.detach().numpy()[:, :, 0, :], spm.conv_v.bias.detach().numpy()
    fw, fb = spm.fuse.weight.detach().numpy()[:, :, 0, 0], spm.fuse.bias.detach().numpy()
    rows = xs.mean(axis=2)  # y^h: (C, H)
    cols = xs.mean(axis=1)  # y^v: (C, W)
    u = np.array([[bh[c] + sum(kh[c, d, t] * rows[d, i + t - 1] for d in range(c_) for t in range(3) if 0 <= i + t - 1 < h_)
                   for i in range(h_)] for c in range(c_)])
    v = np.array([[bv[c] + sum(kv[c, d, t] * cols[d, j + t - 1] for d in range(c_) for t in range(3) if 0 <= j + t - 1 < w_)
                   for j in range(w_)] for c in range(c_)])
    expected = np.empty_like(xs)
    for c in range(c_):
        for i in range(h_):
            for j in range(w_):
                pre = fb[c] + sum(fw[c, d] * max(u[d, i] + v[d, j], 0.0) for d in range(c_))
                expected[c, i, j] = xs[c, i, j] / (1.0 + np.exp(-pre))
    np.testing.assert_allclose(z, expected, rtol=1e-12, atol=1e-12)


def test_convs_have_a_bias_only_without_norm_and_go_through_the_conv_factory():
    with_norm = StripPooling(4, NormFactory("bn"), ConvFactory("ws"))
    assert with_norm.conv_h.bias is None and with_norm.conv_v.bias is None and with_norm.fuse.bias is not None
    assert with_norm.conv_h.kernel_size == (3, 1) and with_norm.conv_v.kernel_size == (1, 3)
    assert type(with_norm.conv_h).__name__ == "WSConv2d"
    without = StripPooling(4, NormFactory("none"), ConvFactory())
    assert without.conv_h.bias is not None and without.conv_v.bias is not None


def resnet(depth: int = 8, attention: str = "strip", size: int = 32, channels: int = 3, norm: str = "bn") -> nn.Module:
    factory = NormFactory.of(norm, **({"norm_groups": 2} if norm == "gn" else {}))
    return ARCHS.get("resnet")(in_channels=channels, num_classes=10, image_size=size, norm=factory, width=4, depth=depth,
                               resnet_block_attention=attention)


@pytest.mark.parametrize("depth", [8, 14, 20])
def test_placement_is_the_authors_last_block_of_every_stage_and_all_of_the_last(depth):
    n = (depth - 2) // 6
    blocks = [m for m in resnet(depth).stages]
    ours = [isinstance(b.attention, StripPooling) for b in blocks]
    # their four stages have planes 64, 128, 256, 512; a CIFAR ResNet's three end with the last
    assert ours == authors_spm_flags([n, n, n], [256, 256, 512])
    assert ours == authors_spm_flags([n, n, n, n], [64, 128, 256, 512])[n:]  # the same rule, shifted
    assert sum(ours) == (n if n == 1 else n + 2)  # the first block of a stage only in the last stage


def test_the_module_sits_between_the_first_relu_and_the_second_conv():
    model = resnet(8).eval()
    block = model.stages[2]
    seen: dict[str, torch.Tensor] = {}
    block.attention.register_forward_hook(lambda m, args, out: seen.update(spm_in=args[0].clone(), spm_out=out))
    block.conv2.register_forward_hook(lambda m, args, out: seen.update(conv2_in=args[0]))
    block.norm1.register_forward_hook(lambda m, args, out: seen.update(norm1_out=out.clone()))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(seen["spm_in"], torch.relu(seen["norm1_out"]))
    assert seen["conv2_in"] is seen["spm_out"]
    assert seen["spm_out"].shape == seen["spm_in"].shape


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (8, 1)])
@pytest.mark.parametrize("norm", ["bn", "gn", "none"])
def test_shapes_and_gradients_at_28_32_and_8_pixels(size, channels, norm):
    model = resnet(14, size=size, channels=channels, norm=norm)
    x = torch.randn(4, channels, size, size)
    gates = []
    for block in model.stages:
        if isinstance(block.attention, StripPooling):
            block.attention.register_forward_hook(lambda m, args, out: gates.append((args[0].shape, out.shape)))
    out = model(x)
    assert out.shape == (4, 10)
    assert len(gates) == 4 and all(a == b for a, b in gates)
    out.square().mean().backward()
    spm = [b.attention for b in model.stages if isinstance(b.attention, StripPooling)]
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for m in spm for p in m.parameters())


def test_none_builds_the_default_resnet_and_keeps_its_trial_id():
    torch.manual_seed(0)
    default = ARCHS.get("resnet")(in_channels=3, num_classes=10, image_size=32, norm=NormFactory("bn"))
    torch.manual_seed(0)
    none = ARCHS.get("resnet")(in_channels=3, num_classes=10, image_size=32, norm=NormFactory("bn"),
                               resnet_block_attention="none")
    assert not any(isinstance(m, StripPooling) for m in default.modules())
    assert sum(p.numel() for p in default.parameters()) == 78042  # as before the option existed
    assert default.state_dict().keys() == none.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), none.state_dict().values()))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(default.eval()(x), none.eval()(x))
    assert TrialConfig(arch="resnet", resnet_block_attention="none").trial_id == TrialConfig(arch="resnet").trial_id
    assert TrialConfig(arch="resnet", resnet_block_attention="strip").trial_id != TrialConfig(arch="resnet").trial_id


@pytest.mark.parametrize("depth,widths", [(8, (16,)), (14, (4, 8, 16, 16))])
def test_strip_adds_the_modules_parameters(depth, widths):
    """Per SPM on C channels: two 1-D convs C·C·3 (no bias under bn), two BatchNorms 2C each, a
    1×1 conv C·C + C; at width 4: depth 8 has one, in the last stage (C = 16), depth 14 four."""
    extra = sum(2 * 3 * c * c + 2 * 2 * c + c * c + c for c in widths)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(resnet(depth)) - count(resnet(depth, attention="none")) == extra


def test_mistakes_are_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="resnet_block_attention must be one of none, strip"):
        TrialConfig(arch="resnet", resnet_block_attention="se")
    with pytest.raises(ConfigError, match="`resnet_block_attention` does nothing for arch=cnn: it is read only with arch=resnet"):
        trial_from_assignments({"arch": "cnn", "resnet_block_attention": "strip"})
    with pytest.raises(ConfigError, match="resnet_block_attention must be one of"):
        resnet(8, attention="se")

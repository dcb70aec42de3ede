"""Normalized Convolution against the authors' layer and the paper's definition.

The reference is the authors' ``NCONV.forward`` from kimdongsuk1/NormalizedCNN ``NCNN.py``
(lines 28-56 of its last version), re-implemented below in torch as written: ``F.unfold``
of the input, each row centred by its mean and divided by ``sqrt(var(unbiased=False) +
1e-14)``, multiplied by the flattened weight, plus the bias, reshaped to the output map.
Two slips of that file are not copied: its ``super(LCONV, self)`` names a class that no
longer exists, and its ``.view`` after ``transpose`` needs ``.reshape``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.errors import ConfigError
from bench.spec import TrialConfig
from bench.trial import build_model, run_trial
from bench.zoo.archs import ARCHS
from bench.zoo.convs import ConvFactory
from bench.zoo.datasets import dataset_source
from bench.zoo.norms import NormFactory
from bench.zoo.normalized_conv import NormalizedConv2d
from bench.zoo.registry import CONVS

T = torch.float64


def authors_nconv(x, weight, bias, kernel_size, padding, stride, dilation=1, eps=1e-14):
    """NCONV.forward of NCNN.py (center=True, scale=True)."""
    h1, w1 = x.size(2), x.size(3)
    x = F.unfold(x, (kernel_size, kernel_size), dilation=dilation, padding=padding, stride=stride)
    x = x.transpose(1, 2)
    mean = x.mean(dim=-1, keepdim=True)
    x = x - mean
    var = x.var(dim=-1, unbiased=False, keepdim=True)
    x = x / torch.sqrt(var + eps)
    x = x.matmul(weight.view(weight.size(0), -1).t())
    if bias is not None:
        x = x + bias
    x = x.transpose(1, 2)
    h = math.floor((h1 + 2 * padding - dilation * (kernel_size - 1) - 1) / stride + 1)
    w = math.floor((w1 + 2 * padding - dilation * (kernel_size - 1) - 1) / stride + 1)
    return x.reshape(-1, weight.size(0), h, w)


def layer(cin=3, cout=5, k=3, stride=1, padding=1, bias=True, dtype=T, seed=0):
    torch.manual_seed(seed)
    conv = NormalizedConv2d(cin, cout, k, stride=stride, padding=padding, bias=bias).to(dtype)
    if bias:
        with torch.no_grad():
            conv.bias.normal_()
    return conv


def inputs(n=2, c=3, size=7, dtype=T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, size, size, generator=g) * 2 + 0.5).to(dtype)


@pytest.mark.parametrize(
    "k,stride,padding,bias", [(3, 1, 1, True), (3, 2, 1, False), (3, 1, 0, True), (1, 1, 0, True), (5, 2, 2, True)],
    ids=["3x3", "3x3-stride2-nobias", "3x3-valid", "1x1", "5x5-stride2"],
)
def test_forward_and_gradients_equal_the_authors_unfold_layer(k, stride, padding, bias):
    conv = layer(k=k, stride=stride, padding=padding, bias=bias)
    x = inputs().requires_grad_()
    ours = conv(x)
    theirs = authors_nconv(x, conv.weight, conv.bias, k, padding, stride)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(ours)
    grads = torch.autograd.grad(ours, [x, conv.weight], g)
    expected = torch.autograd.grad(theirs, [x, conv.weight], g)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_each_output_is_the_filter_on_the_standardized_patch():
    """The paper's definition at one position, by hand: the patch under the kernel
    (zero padding included), minus its mean, over its biased standard deviation."""
    conv = layer()
    x = inputs()
    y = conv(x)
    padded = F.pad(x, (1, 1, 1, 1))
    for b, i, j in [(0, 0, 0), (1, 3, 4), (0, 6, 6)]:
        patch = padded[b, :, i:i + 3, j:j + 3].reshape(-1)
        standardized = (patch - patch.mean()) / torch.sqrt(patch.var(unbiased=False) + 1e-14)
        expected = conv.weight.reshape(5, -1) @ standardized + conv.bias
        torch.testing.assert_close(y[b, :, i, j], expected, rtol=1e-10, atol=1e-10)


def test_outputs_depend_on_each_sample_alone_and_not_on_its_scale_or_offset():
    """No batch statistics: a sample's output is the same in any batch; each patch is
    standardized, so a positive scale and an offset of the input change nothing where no
    zero padding enters the patch."""
    conv = layer(padding=0)
    x = inputs(n=4)
    torch.testing.assert_close(conv(x)[2:3], conv(x[2:3]), rtol=0, atol=1e-12)
    torch.testing.assert_close(conv(3.0 * x - 7.0), conv(x), rtol=1e-9, atol=1e-9)


def test_float32_and_bfloat16_autocast_stay_close_to_float64():
    conv64 = layer()
    conv32 = layer(dtype=torch.float32)
    x = inputs()
    reference = conv64(x)
    torch.testing.assert_close(conv32(x.float()).double(), reference, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mean, var = conv32.patch_statistics(x.float().bfloat16())
        out = conv32(x.float())
    assert mean.dtype == var.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference, rtol=0.05, atol=0.1)


def test_a_flat_patch_gives_a_bounded_output_and_a_zero_patch_zero():
    """With ε = 1e-14 a patch of equal values is 0/0 up to rounding; ‖x̂‖ ≤ √N bounds it."""
    conv = layer(dtype=torch.float32, bias=False, padding=0)
    flat = torch.full((1, 3, 5, 5), -0.4242)
    y = conv(flat)
    bound = conv.weight.reshape(5, -1).norm(dim=1).view(1, -1, 1, 1) * math.sqrt(27)
    assert torch.isfinite(y).all() and (y.abs() <= bound + 1e-6).all()
    assert torch.equal(conv(torch.zeros(1, 3, 5, 5)), torch.zeros(1, 5, 3, 3))


def test_initialization_is_the_authors_he_normal_over_the_fan_out_with_zero_bias():
    torch.manual_seed(0)
    conv = NormalizedConv2d(64, 128, 3, padding=1)
    std = math.sqrt(2.0 / (128 * 9))
    assert conv.weight.std().item() == pytest.approx(std, rel=0.02)
    assert torch.equal(conv.bias, torch.zeros(128))


def test_the_conv_kind_builds_nc_convs_with_its_eps_and_standard_linears():
    kind = ConvFactory("nc", (("nc_eps", 1e-6),)).kind
    conv, linear = kind.conv(3, 4, 3, stride=2, padding=1, bias=False), kind.linear(4, 2)
    assert isinstance(conv, NormalizedConv2d) and conv.eps == 1e-6 and conv.bias is None and conv.stride == (2, 2)
    assert type(linear) is torch.nn.Linear
    entry = CONVS.entry("nc")
    assert "arXiv:2005.05274" in entry.paper and entry.option_names == ("nc_eps",)


@pytest.mark.parametrize("arch", ["cnn", "resnet", "vgg"])
@pytest.mark.parametrize("norm", ["none", "bn", "gn"])
def test_nc_trains_in_every_conv_architecture_with_and_without_a_norm(arch, norm):
    torch.manual_seed(0)
    model = ARCHS.get(arch)(in_channels=1, num_classes=4, image_size=8, norm=NormFactory.of(norm, norm_groups=4),
                            conv=ConvFactory("nc"), width=8)
    assert any(isinstance(m, NormalizedConv2d) for m in model.modules())
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_the_option_is_read_only_with_conv_nc_and_checked():
    assert TrialConfig(conv="ws", nc_eps=1e-5).trial_id == TrialConfig(conv="ws").trial_id
    assert TrialConfig(conv="nc", nc_eps=1e-5).trial_id != TrialConfig(conv="nc").trial_id
    with pytest.raises(ConfigError, match="nc_eps must be a number > 0"):
        TrialConfig(conv="nc", nc_eps=0.0)


def test_a_trial_with_nc_and_no_norm_completes():
    config = TrialConfig(dataset="synthetic", arch="cnn", width=8, depth=2, conv="nc", norm="none", lr=0.02,
                         lr_scaling="none", epochs=2, batch_size=32)
    model = build_model(config, dataset_source("synthetic"))
    assert sum(isinstance(m, NormalizedConv2d) for m in model.modules()) == 2
    result = run_trial(config)
    assert result.status == "completed", result.error
    assert all(math.isfinite(e["train_loss"]) for e in result.epochs)

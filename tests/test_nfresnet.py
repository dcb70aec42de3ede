"""The normalizer-free ResNet (signal propagation at initialization, structure, errors)
and adaptive gradient clipping."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from timm.layers import ScaledStdConv2d
from torch import nn

from bench.errors import ConfigError
from bench.zoo.optimizers.agc import classifier, classifier_parameters, clip_gradients
from bench.zoo.archs import ARCHS
from bench.zoo.archs.nfresnet import NFBlock
from bench.zoo.convs import RELU_GAIN, ConvFactory
from bench.zoo.norms import NormFactory


def build(**kw) -> nn.Module:
    args = {"in_channels": 3, "num_classes": 10, "image_size": 32, "norm": NormFactory("none"), **kw}
    return ARCHS.get("nf-resnet")(**args)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- NF-ResNet --------------------------------------------------------------------------


def test_output_shape_and_parameter_count():
    r8, r20 = build(depth=8), build(depth=20)
    assert r20(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert count(r20) > count(r8)
    # ResNet-20's 0.27M conv/linear weights, plus a bias and a gain per conv channel and
    # the two 1×1 projection shortcuts
    resnet20 = ARCHS.get("resnet")(in_channels=3, num_classes=10, image_size=32, norm=NormFactory("none"), depth=20)
    assert 0 < count(r20) - count(resnet20) < 0.02 * count(resnet20)
    assert 0.26e6 < count(r20) < 0.29e6


def test_every_conv_is_scaled_ws_and_there_are_no_norm_layers():
    model = build(depth=14)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, ScaledStdConv2d) for m in convs)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) for m in model.modules())
    # γ: 1 on the stem (its input is the image), the ReLU gain on every conv fed by a ReLU
    assert model.stem.scale == pytest.approx(1 / math.sqrt(3 * 9))
    for block in model.stages:
        assert block.conv1.scale == pytest.approx(RELU_GAIN / math.sqrt(block.conv1.in_channels * 9))
        assert block.conv2.scale == pytest.approx(RELU_GAIN / math.sqrt(block.conv2.in_channels * 9))
    assert [b.transition for b in model.stages] == [False, False, True, False, True, False]


def test_beta_is_the_analytic_residual_std():
    """Var(h) = 1 after the stem, + α² after each block, and 1 + α² after a transition."""
    a2 = 0.2**2
    model = build(depth=14)
    assert [b.beta**2 for b in model.stages] == pytest.approx([1, 1 + a2, 1 + 2 * a2, 1 + a2, 1 + 2 * a2, 1 + a2])
    model = build(depth=20, nf_alpha=0.5)
    assert [b.beta**2 for b in model.stages] == pytest.approx([1, 1.25, 1.5, 1.75, 1.25, 1.5, 1.75, 1.25, 1.5])


def test_residual_stream_variance_at_init_matches_beta_squared():
    """Signal propagation at initialization on an N(0, 1) batch: the measured variance of
    the residual stream entering each block (channel variance over N, H, W, averaged over
    channels) is β_i². α = 1 makes every bookkeeping mistake large: forgetting the reset
    at transitions, the growth by α², or the square root in β all put some block at a
    ratio ≤ 0.5 or ≥ 1.9. The analysis ignores zero padding (a 3×3 conv keeps ~92% of the
    variance on a 16×16 map) and the correlation between a filter's inputs, which pull
    the measurement down a little; across seeds it stays in [0.8, 1.05], hence the 25%
    tolerance."""
    torch.manual_seed(0)
    model = build(depth=14, nf_alpha=1.0, image_size=64).double()
    measured: list[tuple[float, float]] = []

    def record(block: NFBlock, args: tuple[torch.Tensor, ...]) -> None:
        measured.append((args[0].var(dim=(0, 2, 3)).mean().item(), block.beta**2))

    for block in model.stages:
        block.register_forward_pre_hook(record)
    x = torch.randn(16, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        model(x)
    assert [b for _, b in measured] == pytest.approx([1, 2, 3, 2, 3, 2])
    for var, beta2 in measured:
        assert var == pytest.approx(beta2, rel=0.25)


def test_trains_with_adaptive_gradient_clipping():
    torch.manual_seed(0)
    model = build(depth=8, width=8, image_size=8, in_channels=1, num_classes=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        clip_gradients(model, 0.05)
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_refuses_norm_layers_and_other_convs():
    with pytest.raises(ConfigError, match="normalizer-free network has no norm layers; use norm=none"):
        build(norm=NormFactory("bn"))
    with pytest.raises(ConfigError, match="scaled weight standardization in every conv by design; leave conv unset"):
        build(conv=ConvFactory("ws"))
    with pytest.raises(ConfigError, match=r"6n\+2"):
        build(depth=10)
    with pytest.raises(ConfigError, match="nf_alpha"):
        build(nf_alpha=0.0)


# -- adaptive gradient clipping ---------------------------------------------------------


def _mlp(conv: str = "standard") -> nn.Module:
    return ARCHS.get("mlp")(
        in_channels=1, num_classes=3, image_size=4, norm=NormFactory("none"), conv=ConvFactory(conv), width=8, depth=2
    ).double()


def _set_grads(model: nn.Module, scale: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * scale
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_small_gradients_are_untouched():
    model = _mlp()
    before = _set_grads(model, 1e-8)
    clip_gradients(model, 0.01)
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, before[name]), name


def test_large_gradients_are_scaled_to_lambda_times_the_unit_weight_norm():
    model = _mlp()
    lam = 0.01
    hidden = model[1]  # first hidden linear
    with torch.no_grad():
        hidden.weight[2].zero_()  # a unit with zero weights: its bound uses ε
    before = _set_grads(model, 10.0)
    clip_gradients(model, lam)
    g0, w = before["1.weight"], hidden.weight.detach()
    w_norm = w.norm(dim=1, keepdim=True).clamp(min=1e-3)
    expected = g0 * (lam * w_norm / g0.norm(dim=1, keepdim=True))  # hand computation, row by row
    torch.testing.assert_close(hidden.weight.grad, expected)
    torch.testing.assert_close(hidden.weight.grad.norm(dim=1), lam * w_norm.flatten())
    assert hidden.weight.grad[2].norm().item() == pytest.approx(lam * 1e-3)
    # a bias is one unit: clipped against its whole norm
    b, gb = hidden.bias.detach(), before["1.bias"]
    torch.testing.assert_close(hidden.bias.grad, gb * lam * b.norm() / gb.norm())


def test_conv_filters_are_clipped_unit_wise():
    model = ARCHS.get("cnn")(in_channels=2, num_classes=3, image_size=4, norm=NormFactory("none"), width=4, depth=2).double()
    before = _set_grads(model, 10.0)
    clip_gradients(model, 0.02)
    conv = model[0]
    expected_norms = 0.02 * conv.weight.detach().flatten(1).norm(dim=1).clamp(min=1e-3)
    torch.testing.assert_close(conv.weight.grad.flatten(1).norm(dim=1), expected_norms)
    # each filter's gradient is scaled as a whole, by its own factor
    factor = expected_norms / before["0.weight"].flatten(1).norm(dim=1)
    torch.testing.assert_close(conv.weight.grad, before["0.weight"] * factor.view(-1, 1, 1, 1))


@pytest.mark.parametrize("conv", ["standard", "wn", "cos"])
def test_the_classifier_is_not_clipped(conv):
    model = _mlp(conv)
    head = model[-1]
    assert classifier(model) is head
    names = {name for name, p in model.named_parameters() if any(p is q for q in classifier_parameters(model))}
    if conv == "wn":
        i = len(model) - 1
        assert names == {f"{i}.bias", f"{i}.parametrizations.weight.original0", f"{i}.parametrizations.weight.original1"}
    before = _set_grads(model, 10.0)
    clip_gradients(model, 0.01)
    for name, p in model.named_parameters():
        if name in names:
            assert torch.equal(p.grad, before[name]), name
        else:
            assert not torch.equal(p.grad, before[name]), name


def test_a_marked_classifier_takes_precedence():
    model = build(depth=8)
    assert classifier(model) is model.fc
    inner = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    inner[0].is_classifier = True
    assert classifier(inner) is inner[0]
    assert classifier(nn.Sequential(nn.Conv2d(1, 1, 1))) is None


def test_clip_must_be_positive():
    with pytest.raises(ConfigError, match="agc_clip=0"):
        clip_gradients(_mlp(), 0.0)

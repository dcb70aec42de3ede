"""Each weight reparametrization against its paper's definition, and every one in every
architecture."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from timm.layers import ScaledStdConv2d
from torch import nn

from bench.errors import ConfigError
from bench.zoo.archs import ARCHS
from bench.zoo.convs import (
    CONVS,
    COS_EPS,
    RELU_GAIN,
    SWS_EPS,
    WS_EPS,
    CenteredConv2d,
    ConvFactory,
    CosineConv2d,
    CosineLinear,
    WSConv2d,
    is_weight_normed,
    weight_norm_data_init,
)
from bench.zoo.norms import NormFactory


def per_unit(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1)


def test_registry_names_descriptions_and_papers():
    assert set(CONVS.names()) == {"standard", "ws", "wn", "cos", "centered", "sws", "nc", "meprop", "resprop",
                                  "deformable", "drconv"}
    for entry in CONVS.entries():
        assert entry.description
        assert entry.name == "standard" or "arXiv:" in entry.paper or "doi:" in entry.paper


# The kinds with a sparse backward are trained in these architectures by
# tests/test_sparse_backprop.py, built as the trainer builds them (their ``prepare``: the
# classifier keeps its full gradient) and at a sparsity these 8-channel models train through.
SPARSE_BACKWARD = ("meprop", "resprop")


@pytest.mark.parametrize("norm", ["bn", "none"])
@pytest.mark.parametrize("arch", ["cnn", "resnet", "mlp"])
@pytest.mark.parametrize("conv", [name for name in CONVS.names() if name not in SPARSE_BACKWARD])
def test_every_conv_builds_into_every_architecture_and_trains(conv, arch, norm):
    torch.manual_seed(0)
    model = ARCHS.get(arch)(
        in_channels=1, num_classes=4, image_size=8, norm=NormFactory(norm), conv=ConvFactory(conv), width=8
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    model.eval()
    assert model(x[:1]).shape == (1, 4)


def test_unknown_conv_lists_valid_names():
    valid = "centered, cos, deformable, drconv, meprop, nc, resprop, standard, sws, wn, ws"
    with pytest.raises(ConfigError, match=f"Valid conv names: {valid}"):
        ConvFactory("weightnorm")


# -- Weight Standardization -------------------------------------------------------------


def test_ws_weights_have_zero_mean_and_unit_variance_per_output_channel():
    conv = WSConv2d(6, 5, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.mul_(7.0).add_(torch.randn(5, 1, 1, 1, dtype=torch.float64))
    w = per_unit(conv.reparametrized_weight())
    torch.testing.assert_close(w.mean(dim=1), torch.zeros(5, dtype=torch.float64))
    # Ŵ = (W − μ)/(σ + ε): unbiased std σ/(σ + ε), so 1 within ε/σ
    sigma = per_unit(conv.weight).std(dim=1)
    torch.testing.assert_close(w.std(dim=1), sigma / (sigma + WS_EPS))
    assert torch.allclose(w.std(dim=1), torch.ones(5, dtype=torch.float64), atol=2 * WS_EPS / sigma.min().item())


def test_ws_forward_matches_the_authors_formula():
    conv = WSConv2d(3, 4, 3, stride=2, padding=1).double()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    w = conv.weight
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    std = w.view(4, -1).std(dim=1).view(-1, 1, 1, 1)  # torch's default: unbiased, as in the authors' code
    expected = F.conv2d(x, (w - mean) / (std + 1e-5), conv.bias, stride=2, padding=1)
    torch.testing.assert_close(conv(x), expected)


def test_ws_standardizes_convs_only():
    kind = ConvFactory("ws")
    assert isinstance(kind.conv(4, 8, 3), WSConv2d)
    assert type(kind.linear(4, 8)) is nn.Linear


def test_ws_refuses_single_weight_filters():
    with pytest.raises(ConfigError, match="at least 2 weights"):
        ConvFactory("ws").conv(1, 4, 1)


# -- Weight Normalization ---------------------------------------------------------------


@pytest.mark.parametrize("layer", ["conv", "linear"])
def test_weight_norm_effective_weight_is_g_times_unit_direction(layer):
    kind = ConvFactory("wn")
    module = (kind.conv(3, 5, 3) if layer == "conv" else kind.linear(7, 5)).double()
    assert is_weight_normed(module)
    pw = module.parametrizations.weight
    with torch.no_grad():
        pw.original0.copy_(torch.rand_like(pw.original0) + 0.5)
        pw.original1.mul_(3.0)
    g, v = pw.original0, pw.original1
    w = module.weight
    torch.testing.assert_close(per_unit(w).norm(dim=1), g.flatten())
    torch.testing.assert_close(w, g * v / per_unit(v).norm(dim=1).view_as(g))


def test_weight_norm_starts_at_the_default_initialization():
    torch.manual_seed(3)
    plain = nn.Conv2d(3, 5, 3)
    torch.manual_seed(3)
    normed = ConvFactory("wn").conv(3, 5, 3)
    torch.testing.assert_close(normed.weight, plain.weight)


def _wn_preactivations(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
    """(layer, output) of every weight-normed layer, in forward order."""
    seen: list[tuple[nn.Module, torch.Tensor]] = []
    layers = [m for m in model.modules() if is_weight_normed(m)]
    handles = [m.register_forward_hook(lambda mod, a, out: seen.append((mod, out.detach().clone()))) for m in layers]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


def _unit_stats(module: nn.Module, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    channel = 1 if isinstance(module, nn.Conv2d) else t.dim() - 1
    dims = [d for d in range(t.dim()) if d != channel]
    var, mean = torch.var_mean(t, dim=dims, correction=0)
    return mean, var


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet"])
def test_data_dependent_init_standardizes_every_unit_on_the_init_batch(arch):
    torch.manual_seed(0)
    model = ARCHS.get(arch)(
        in_channels=3, num_classes=5, image_size=8, norm=NormFactory("none"), conv=ConvFactory("wn"), width=8
    ).double()
    x = torch.randn(64, 3, 8, 8, dtype=torch.float64) * 2 + 0.5
    weight_norm_data_init(model, x)
    outputs = _wn_preactivations(model, x)
    assert len(outputs) == sum(1 for m in model.modules() if is_weight_normed(m))
    for i, (module, t) in enumerate(outputs):
        mean, var = _unit_stats(module, t)
        tol = 1e-10 if i == 0 else 1e-6  # the first layer exactly; later ones up to float error
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=tol, rtol=0)
        torch.testing.assert_close(var, torch.ones_like(var), atol=tol, rtol=0)


def test_data_dependent_init_sets_g_and_b_from_the_unit_statistics():
    torch.manual_seed(0)
    layer = ConvFactory("wn").linear(6, 4).double()
    x = torch.randn(32, 6, dtype=torch.float64) * 3 - 1
    v = layer.parametrizations.weight.original1.detach().clone()
    weight_norm_data_init(layer, x)
    t = x @ (v / v.norm(dim=1, keepdim=True)).T
    sigma = t.var(dim=0, unbiased=False).add(1e-10).sqrt()
    torch.testing.assert_close(layer.parametrizations.weight.original0.flatten(), 1 / sigma)
    torch.testing.assert_close(layer.bias, -t.mean(dim=0) / sigma)
    torch.testing.assert_close(layer.parametrizations.weight.original1, v)  # v untouched


def test_after_the_data_dependent_init_sgd_turns_each_direction_g_over_norm_v_squared_times_faster():
    """Why the data-initialized network takes far larger SGD steps than a plain one with
    the same weights (Salimans & Kingma 2016, §2.2): ∇_v L = (g/‖v‖)·M_w·∇_w L with
    M_w = I − w wᵀ/‖w‖², and ∇_g L = ∇_w L · v/‖v‖, so one SGD step of rate η moves the
    effective weight by −η·((g/‖v‖)²·M_w + v̂ v̂ᵀ)·∇_w L (to first order), where a plain
    layer moves by −η·∇_w L. The init sets g = 1/σ[t] and leaves v, hence ‖v‖, as it was:
    a unit whose pre-activation varies little on the batch gets a large multiplier
    (5 to 80 per layer in the norm-zoo CNN on Fashion-MNIST, whose first SGD step takes
    the loss from 2.05 to 94). Adam, the authors' optimizer, divides each parameter's
    step by its gradient's magnitude instead."""
    torch.manual_seed(0)
    layer = ConvFactory("wn").linear(6, 4).double()
    x = torch.randn(64, 6, dtype=torch.float64) * 0.1 + 1.0  # large mean, small spread
    v = layer.parametrizations.weight.original1.detach().clone()
    weight_norm_data_init(layer, x)
    g = layer.parametrizations.weight.original0.detach().flatten()
    factor = (g / v.norm(dim=1)) ** 2
    w_hat = v / v.norm(dim=1, keepdim=True)
    assert factor.min() > 100  # σ[t] ≈ 0.1 here, ‖v‖ ≈ 0.58 (torch's default init)

    plain = nn.Linear(6, 4).double()
    with torch.no_grad():
        plain.weight.copy_(layer.weight)
        plain.bias.copy_(layer.bias)
    target = torch.randn(64, 4, dtype=torch.float64)
    lr = 1e-9
    steps = []
    for module in (layer, plain):
        before = module.weight.detach().clone()
        F.mse_loss(module(x), target).backward()
        grad_w = plain.weight.grad if module is plain else None
        torch.optim.SGD(module.parameters(), lr=lr).step()
        steps.append((module.weight.detach() - before, grad_w))
    (wn_step, _), (plain_step, grad_w) = steps
    torch.testing.assert_close(plain_step, -lr * grad_w)
    along = (grad_w * w_hat).sum(dim=1, keepdim=True) * w_hat  # v̂ v̂ᵀ ∇_w L per unit
    expected = -lr * (factor.view(-1, 1) * (grad_w - along) + along)
    torch.testing.assert_close(wn_step, expected, rtol=1e-4, atol=1e-4 * lr)


@pytest.mark.parametrize("start_training", [True, False])
def test_data_dependent_init_keeps_batchnorm_statistics_and_the_mode(start_training):
    torch.manual_seed(0)
    model = ARCHS.get("resnet")(
        in_channels=3, num_classes=5, image_size=8, norm=NormFactory("bn"), conv=ConvFactory("wn"), width=8
    ).double()
    model.train(start_training)
    before = {name: b.clone() for name, b in model.named_buffers()}
    x = torch.randn(32, 3, 8, 8, dtype=torch.float64)
    weight_norm_data_init(model, x)
    for name, b in model.named_buffers():
        assert torch.equal(b, before[name]), name
    assert all(m.training == start_training for m in model.modules())
    # convs before a BatchNorm have no bias: only g is set, to unit variance per channel
    model.train()
    for module, t in _wn_preactivations(model, x):
        _, var = _unit_stats(module, t)
        torch.testing.assert_close(var, torch.ones_like(var), atol=1e-6, rtol=0)


def test_data_dependent_init_needs_weight_normed_layers():
    model = ARCHS.get("mlp")(in_channels=1, num_classes=3, image_size=4, norm=NormFactory("none"))
    with pytest.raises(ConfigError, match="conv=wn"):
        weight_norm_data_init(model, torch.randn(4, 1, 4, 4))


# -- Cosine Normalization ---------------------------------------------------------------


def test_cosine_conv_equals_cosine_of_filter_and_each_patch():
    torch.manual_seed(0)
    conv = CosineConv2d(3, 4, 3, stride=2, padding=1).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    patches = F.unfold(x, 3, padding=1, stride=2)  # (N, C·k·k, L)
    w = per_unit(conv.weight)  # (out, C·k·k)
    dot = torch.einsum("ok,nkl->nol", w, patches)
    x_sq, w_sq = patches.pow(2).sum(dim=1, keepdim=True), w.pow(2).sum(dim=1).view(1, -1, 1)
    norms = torch.sqrt((x_sq + COS_EPS) * (w_sq + COS_EPS))
    expected = (dot / norms).view(2, 4, 3, 3)
    out = conv(x)
    torch.testing.assert_close(out, expected)
    assert out.abs().max() <= 1
    # the ε is negligible against these norms: the output is the cosine itself
    cosine = dot / (patches.norm(dim=1, keepdim=True) * w.norm(dim=1).view(1, -1, 1))
    torch.testing.assert_close(out, cosine.view(2, 4, 3, 3), rtol=1e-5, atol=1e-6)


def test_cosine_conv_is_bounded_and_reaches_one_on_its_own_filter():
    conv = CosineConv2d(2, 3, 3).double()
    x = conv.weight[1:2].detach().clone() * 5.0  # a 3×3 input equal to filter 1, scaled
    out = conv(x).flatten()
    w_sq, x_sq = conv.weight[1].pow(2).sum().item(), x.pow(2).sum().item()
    assert out[1].item() == pytest.approx(math.sqrt(w_sq * x_sq / ((w_sq + COS_EPS) * (x_sq + COS_EPS))), rel=1e-12)
    assert out[1].item() == pytest.approx(1.0, abs=1e-5)
    big = torch.randn(4, 2, 6, 6, dtype=torch.float64) * 1e3
    assert conv(big).abs().max() <= 1


def test_cosine_layers_have_no_bias_and_zero_patches_give_zero_with_finite_gradients():
    kind = ConvFactory("cos")
    conv, lin = kind.conv(2, 3, 3, padding=1, bias=True), kind.linear(4, 3, bias=True)
    assert isinstance(conv, CosineConv2d) and conv.bias is None
    assert isinstance(lin, CosineLinear) and lin.bias is None
    x = torch.zeros(1, 2, 4, 4, requires_grad=True)
    out = conv(x)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(conv.weight.grad).all()


def test_cosine_linear_is_the_cosine_per_output_row():
    lin = CosineLinear(6, 4).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    expected = F.cosine_similarity(x.unsqueeze(1), lin.weight.unsqueeze(0), dim=-1)
    torch.testing.assert_close(lin(x), expected, rtol=1e-5, atol=1e-6)
    assert lin(x * 100).abs().max() <= 1


# -- weight centring (MimicNorm) --------------------------------------------------------


def test_centered_weights_have_zero_mean_per_output_channel():
    conv = ConvFactory("centered").conv(4, 6, 3, padding=1).double()
    assert isinstance(conv, CenteredConv2d)
    with torch.no_grad():
        conv.weight.add_(torch.randn(6, 1, 1, 1, dtype=torch.float64))
    w = conv.reparametrized_weight()
    torch.testing.assert_close(per_unit(w).mean(dim=1), torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(w, conv.weight - conv.weight.mean(dim=(1, 2, 3), keepdim=True))
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(conv(x), F.conv2d(x, w, conv.bias, padding=1))
    assert type(ConvFactory("centered").linear(4, 3)) is nn.Linear


def test_centering_in_the_forward_pass_follows_the_authors_projected_sgd():
    """The authors project the stored weights (W ← W − mean) at init and after every
    step; with SGD, momentum and weight decay the reparametrized layer's effective weights
    follow the same trajectory."""
    torch.manual_seed(0)
    ours = CenteredConv2d(3, 4, 3, padding=1).double()
    theirs = nn.Conv2d(3, 4, 3, padding=1).double()
    with torch.no_grad():
        theirs.weight.copy_(ours.weight - ours.weight.mean(dim=(1, 2, 3), keepdim=True))
        theirs.bias.copy_(ours.bias)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3) for m in (ours, theirs)]
    for _ in range(5):
        x = torch.randn(8, 3, 6, 6, dtype=torch.float64)
        target = torch.randn(8, 4, 6, 6, dtype=torch.float64)
        for m, opt in zip((ours, theirs), opts):
            loss = (m(x) - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():  # the authors' meanweigh()
            theirs.weight.sub_(theirs.weight.mean(dim=(1, 2, 3), keepdim=True))
    torch.testing.assert_close(ours.reparametrized_weight(), theirs.weight)
    torch.testing.assert_close(ours.bias, theirs.bias)


# -- Scaled Weight Standardization ------------------------------------------------------


def test_relu_gain_gives_unit_variance():
    # Var(ReLU(z)) = 1/2 − 1/(2π) for z ~ N(0, 1)
    assert RELU_GAIN**2 * (0.5 - 0.5 / math.pi) == pytest.approx(1.0)
    z = torch.randn(2_000_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert (RELU_GAIN * F.relu(z)).var().item() == pytest.approx(1.0, abs=5e-3)


def test_sws_weights_equal_the_formula():
    conv = ConvFactory("sws").conv(5, 6, 3, stride=1, padding=1).double()
    assert isinstance(conv, ScaledStdConv2d)
    assert type(ConvFactory("sws").linear(4, 3)) is nn.Linear
    assert torch.equal(conv.gain, torch.ones_like(conv.gain))  # learnable gain starts at 1
    with torch.no_grad():
        conv.gain.copy_(torch.rand_like(conv.gain) + 0.5)
        conv.weight.mul_(4.0).add_(1.0)
    w = conv.weight
    fan_in = 5 * 3 * 3
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
    expected_w = conv.gain * RELU_GAIN * (w - mean) / (torch.sqrt(var + SWS_EPS) * math.sqrt(fan_in))
    x = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(conv(x), F.conv2d(x, expected_w, conv.bias, padding=1))
    # with gain 1 the standardized filter has squared norm γ²: a ReLU input of unit variance keeps it
    unit = (w - mean) / (torch.sqrt(var + SWS_EPS) * math.sqrt(fan_in))
    torch.testing.assert_close(per_unit(unit).pow(2).sum(dim=1), torch.ones(6, dtype=torch.float64), atol=1e-5, rtol=0)

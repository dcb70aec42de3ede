"""Each normalization against its paper's definition, and every norm in every architecture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.errors import ConfigError
from bench.zoo.archs import ARCHS
from bench.zoo.norms import NORMS, NormFactory
from bench.zoo.norms.basic import LayerNorm2d

EPS = 1e-5


def manual_norm(x: torch.Tensor, dims: tuple[int, ...], unbiased: bool = False) -> torch.Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=unbiased)
    return (x - mean) / torch.sqrt(var + EPS)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(6, 8, 5, 5, dtype=torch.float64) * 3 + 1


def test_batchnorm_training_uses_batch_statistics_over_n_h_w(x):
    bn = NormFactory("bn")(8).double().train()
    torch.testing.assert_close(bn(x), manual_norm(x, (0, 2, 3)))


def test_batchnorm_eval_uses_running_mean_and_unbiased_variance(x):
    bn = NormFactory.of("bn", norm_momentum=1.0)(8).double().train()
    bn(x)  # momentum 1: running stats = this batch's
    m = x.numel() / x.shape[1]
    biased = x.var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(bn.running_var, biased * m / (m - 1))
    torch.testing.assert_close(bn.running_mean, x.mean(dim=(0, 2, 3)))
    bn.eval()
    expected = (x - x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + EPS)
    torch.testing.assert_close(bn(x), expected)


def test_layernorm_normalizes_each_sample_over_c_h_w(x):
    torch.testing.assert_close(NormFactory("ln")(8).double()(x), manual_norm(x, (1, 2, 3)))


def test_instancenorm_normalizes_each_sample_and_channel_over_h_w(x):
    torch.testing.assert_close(NormFactory("in")(8).double()(x), manual_norm(x, (2, 3)))


@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_groupnorm_normalizes_each_group_over_c_per_g_h_w(x, groups):
    n, c, h, w = x.shape
    expected = manual_norm(x.view(n, groups, c // groups, h, w), (2, 3, 4)).view_as(x)
    torch.testing.assert_close(NormFactory.of("gn", norm_groups=groups)(8).double()(x), expected)


def _with_affine(layer: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g))
    return layer


def test_groupnorm_with_one_group_equals_layernorm_forward_and_backward(x):
    gn = _with_affine(NormFactory.of("gn", norm_groups=1)(8).double())
    ln = _with_affine(NormFactory("ln")(8).double())
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.testing.assert_close(gn(a), ln(b))
    (gn(a) ** 3).sum().backward()
    (ln(b) ** 3).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    torch.testing.assert_close(gn.weight.grad, ln.weight.grad)


def test_groupnorm_with_one_channel_per_group_equals_instancenorm(x):
    gn = _with_affine(NormFactory.of("gn", norm_groups=8)(8).double())
    inn = _with_affine(NormFactory("in")(8).double())
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.testing.assert_close(gn(a), inn(b))
    (gn(a) ** 3).sum().backward()
    (inn(b) ** 3).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_layernorm2d_affine_is_per_channel(x):
    ln = LayerNorm2d(8).double()
    with torch.no_grad():
        ln.weight.copy_(torch.arange(8.0))
        ln.bias.fill_(0.5)
    expected = manual_norm(x, (1, 2, 3)) * torch.arange(8.0, dtype=torch.float64).view(1, -1, 1, 1) + 0.5
    torch.testing.assert_close(ln(x), expected)


def test_vector_features_for_mlp():
    v = torch.randn(16, 12, dtype=torch.float64)
    torch.testing.assert_close(NormFactory("bn")(12, dims=1).double()(v), manual_norm(v, (0,)))
    torch.testing.assert_close(NormFactory("ln")(12, dims=1).double()(v), manual_norm(v, (1,)))
    gn = NormFactory.of("gn", norm_groups=3)(12, dims=1).double()
    torch.testing.assert_close(gn(v), manual_norm(v.view(16, 3, 4), (2,)).view_as(v))


def test_groupnorm_groups_must_divide_channels():
    with pytest.raises(ConfigError, match=r"norm_groups=5 .* 16 channels.*1, 2, 4, 8, 16"):
        NormFactory.of("gn", norm_groups=5)(16)


def test_instancenorm_refuses_vector_features():
    with pytest.raises(ConfigError, match="conv features"):
        NormFactory("in")(16, dims=1)


def test_unknown_norm_lists_valid_names():
    with pytest.raises(ConfigError, match=r"Valid norm names: .*\bbn, .*\bgn, in, ln, .*\bnone\b"):
        NormFactory("batchnorm")


def test_every_norm_has_description_and_none_is_identity(x):
    for entry in NORMS.entries():
        assert entry.description
    assert torch.equal(NormFactory("none")(8)(x), x)


@pytest.mark.parametrize("arch", ARCHS.names())
@pytest.mark.parametrize("norm", NORMS.names())
def test_every_norm_builds_into_every_architecture_and_trains(arch, norm):
    if arch == "mlp" and norm == "in":
        pytest.skip("InstanceNorm needs spatial features (refused with a ConfigError, tested above)")
    if arch == "nf-resnet" and norm != "none":
        pytest.skip("a normalizer-free network refuses norm layers (tested in test_nfresnet.py)")
    if (arch, norm) in {("vit", "in"), ("vit", "mimic"), ("vgg", "in"), ("regnet", "in")}:
        pytest.skip("refused with a ConfigError (tested in test_vit.py / test_vgg.py / test_regnet.py)")
    # the deep stage-wise networks (17+ layers): 28-pixel images, widths their stages split into
    # 4 groups, a smaller step; 5 steps of 8 images need not lower their loss with every norm
    # (their training is checked in test_repvgg.py / test_regnet.py), only stay finite
    deep = arch in ("regnet", "repvgg")
    size, width, lr = (28, 16, 0.01) if deep else (8, 8, 0.05)
    torch.manual_seed(0)
    model = ARCHS.get(arch)(in_channels=1, num_classes=4, image_size=size, norm=NormFactory.of(norm, norm_groups=4),
                            width=width)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    x, y = torch.randn(8, 1, size, size), torch.randint(0, 4, (8,))
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert deep or losses[-1] < losses[0]
    model.eval()
    assert model(x[:1]).shape == (1, 4)


@pytest.mark.parametrize("norm", ["bn", "ln", "in", "gn"])
def test_without_affine_there_are_no_parameters_and_the_output_is_the_plain_normalization(x, norm):
    layer = NormFactory.of(norm, norm_affine=False, norm_groups=2)(8).double()
    assert list(layer.parameters()) == []
    dims = {"bn": (0, 2, 3), "ln": (1, 2, 3), "in": (2, 3)}
    if norm in dims:
        torch.testing.assert_close(layer(x), manual_norm(x, dims[norm]))


def test_groupnorm_by_channels_per_group(x):
    by_size = NormFactory.of("gn", norm_group_size=2)(8).double()
    by_count = NormFactory.of("gn", norm_groups=4)(8).double()
    assert by_size.num_groups == 4
    torch.testing.assert_close(by_size(x), by_count(x))
    with pytest.raises(ConfigError, match="norm_group_size=3"):
        NormFactory.of("gn", norm_group_size=3)(8)

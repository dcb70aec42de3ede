"""DRConv (``conv: drconv``) against its paper's equations and the authors' operator.

- The forward pass (Chen et al. 2021, arXiv:2003.12243, §3): each output position p uses
  the filters of its region r(p) = argmax_j F_j(p) of the guided feature F, and each
  region's filters are generated per example; with one region the layer is a dynamic conv
  with one generated filter bank per example. Written out here with one ``F.conv2d`` per
  example and region.
- The backward pass (the paper's approximation of the argmax's gradient): the filters get
  gradient from their region's positions only, and F the softmax Jacobian applied to
  ⟨∂L/∂Y, W_j X⟩ for every region j. Computed by hand with ``torch.nn.grad.conv2d_weight``.
- The authors' implementation, megvii-research/DRConv: ``DRConv.py`` (``DRConv.forward``:
  the routing layer, ``2·sigmoid / num_W``, the per-example filters, ``F.unfold``),
  ``ShuffleNetV2_pytorch.py`` (``make_block``: ``Alpha = softmax(masknet(x))``,
  ``mask = argmax(Alpha)``) and the CUDA kernels of ``Deformable_MatMul3``
  (``csrc/cuda/Deformable_MatMul_cuda.cu.bak``: ``Deformable_MatMul_FForward``,
  ``_0FBackward``, ``_1FBackward`` with ``use_alpha == 0``), re-implemented below in
  PyTorch (the authors' operator has no CPU path) and compared output and every gradient.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_weight

from bench.errors import ConfigError
from bench.spec import TrialConfig
from bench.trial import build_model
from bench.zoo.archs import ARCHS
from bench.zoo.convs import ConvFactory
from bench.zoo.datasets import DatasetSource
from bench.zoo.norms import NormFactory
from bench.zoo.spatial_convs.region_aware import RegionAwareConv2d

SOURCE = DatasetSource("probe", in_channels=1, image_size=8, num_classes=10, load=None, needs_files=False, train_size=64)


def layer(cin=3, cout=4, k=3, stride=1, padding=1, regions=3, bases=2, seed=0) -> RegionAwareConv2d:
    torch.manual_seed(seed)
    conv = RegionAwareConv2d(cin, cout, k, stride=stride, padding=padding, regions=regions, bases=bases).double()
    with torch.no_grad():  # routing coefficients that differ between examples and regions
        conv.router_weight.normal_(std=0.5)
        conv.router_bias.normal_(std=0.5)
        conv.bias.normal_()
    return conv


def generated_filters(conv: RegionAwareConv2d, x: torch.Tensor) -> torch.Tensor:
    """W_{b,r} = Σ_n α_{b,r,n} B_n, α_b = 2·sigmoid(A x̄_b + a) / N: (batch, m, O, C, k, k)."""
    alpha = 2 * torch.sigmoid(x.mean(dim=(2, 3)) @ conv.router_weight.T + conv.router_bias) / conv.bases
    alpha = alpha.view(x.shape[0], conv.regions, conv.bases)
    banks = conv.weight.view(conv.bases, conv.out_channels, conv.in_channels, *conv.kernel_size)
    return torch.einsum("brn,nocij->brocij", alpha, banks)


def region_outputs(conv: RegionAwareConv2d, x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """W_{b,r} ∗ X_b, one conv per example and region: (batch, m, O, H_out, W_out)."""
    return torch.stack([
        torch.stack([F.conv2d(x[b : b + 1], filters[b, r], None, conv.stride, conv.padding)[0]
                     for r in range(conv.regions)])
        for b in range(x.shape[0])
    ])


# -- the forward pass --------------------------------------------------------------------


def test_one_region_is_a_dynamic_conv_with_one_generated_filter_bank_per_example():
    conv = layer(regions=1, bases=3)
    assert conv.guide_weight is None
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    filters = generated_filters(conv, x)
    expected = torch.cat([F.conv2d(x[b : b + 1], filters[b, 0], conv.bias, 1, 1) for b in range(3)])
    torch.testing.assert_close(conv(x), expected)
    assert not torch.allclose(filters[0], filters[1])  # the filters are the example's


@pytest.mark.parametrize("stride", [1, 2])
def test_each_position_applies_the_filters_of_its_argmax_region(stride):
    conv = layer(stride=stride)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    outputs = region_outputs(conv, x, generated_filters(conv, x))
    guided = F.conv2d(x, conv.guide_weight, None, stride, 1)
    region = guided.argmax(dim=1)  # (batch, H_out, W_out)
    assert region.unique().numel() == conv.regions  # every region is used somewhere
    expected = torch.gather(outputs, 1, region[:, None, None].expand(-1, 1, conv.out_channels, -1, -1))[:, 0]
    torch.testing.assert_close(conv(x), expected + conv.bias.view(1, -1, 1, 1))


def test_the_region_weights_are_the_one_hot_mask_in_value_and_the_softmax_in_gradient():
    guided = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    weights = RegionAwareConv2d.region_weights(guided)
    assert torch.equal(weights.detach(), F.one_hot(guided.argmax(1), 4).permute(0, 3, 1, 2).double())
    upstream = torch.randn_like(weights)
    weights.backward(upstream)
    soft = torch.softmax(guided.detach(), dim=1)
    expected = soft * (upstream - (soft * upstream).sum(dim=1, keepdim=True))  # softmax Jacobian
    torch.testing.assert_close(guided.grad, expected)


# -- the backward pass -------------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2])
def test_gradients_follow_the_papers_rule(stride):
    conv = layer(stride=stride)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    y = conv(x)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    with torch.no_grad():
        filters = generated_filters(conv, x)
        outputs = region_outputs(conv, x, filters)  # W_j ∗ X for every j
        guided = F.conv2d(x, conv.guide_weight, None, stride, 1)
        soft, region = torch.softmax(guided, dim=1), guided.argmax(dim=1)
        # ∂L/∂F̂_j(p) = ⟨∂L/∂Y(p), W_j X(p)⟩, then the softmax's Jacobian
        along = (upstream[:, None] * outputs).sum(dim=2)
        d_guided = soft * (along - (soft * along).sum(dim=1, keepdim=True))
        d_guide_weight = conv2d_weight(x, conv.guide_weight.shape, d_guided, stride, 1)
        # ∂L/∂W_{b,r} from the positions of region r only; ∂L/∂B_n = Σ_{b,r} α_{b,r,n} ∂L/∂W_{b,r}
        alpha = 2 * torch.sigmoid(x.mean(dim=(2, 3)) @ conv.router_weight.T + conv.router_bias) / conv.bases
        alpha = alpha.view(2, conv.regions, conv.bases)
        d_banks = torch.zeros(conv.bases, *filters.shape[2:], dtype=x.dtype)
        for b in range(2):
            for r in range(conv.regions):
                masked = upstream[b : b + 1] * (region[b] == r)
                d_filter = conv2d_weight(x[b : b + 1], filters.shape[2:], masked, stride, 1)
                d_banks += alpha[b, r].view(-1, 1, 1, 1, 1) * d_filter
    torch.testing.assert_close(conv.guide_weight.grad, d_guide_weight)
    torch.testing.assert_close(conv.weight.grad, d_banks.reshape(conv.weight.shape))
    torch.testing.assert_close(conv.bias.grad, upstream.sum(dim=(0, 2, 3)))


# -- the authors' operator ---------------------------------------------------------------


class AuthorsMatMul(torch.autograd.Function):
    """``Deformable_MatMul3`` with a mask and filters per example (mask_num = batch_W =
    batch), in PyTorch from its CUDA kernels. mat0 (B, I, H, W) is the unfolded input,
    mat1 (B, O, I, m) the per-example filters, mask (B, H, W) the regions, alpha
    (B, m, H, W) the softmax of the guided feature.

    Forward: out[b, o, p] = Σ_i mat0[b, i, p] · mat1[b, o, i, mask[b, p]].
    Backward (use_alpha == 0): grad_mat0[b, i, p] = Σ_o g[b, o, p] · mat1[b, o, i, mask[b, p]];
    grad_mat1[b, o, i, mask[b, p]] += g[b, o, p] · mat0[b, i, p];
    grad_alpha[b, j, p] += g[b, o, p] · mat0[b, i, p] · mat1[b, o, i, j] for every j."""

    @staticmethod
    def forward(ctx, mat0, mat1, mask, alpha):
        ctx.save_for_backward(mat0, mat1, mask, alpha)
        return torch.einsum("bip,boip->bop", mat0.flatten(2), AuthorsMatMul.selected(mat1, mask)).view(
            mat0.shape[0], mat1.shape[1], *mat0.shape[2:])

    @staticmethod
    def selected(mat1, mask):
        """mat1[b, o, i, mask[b, p]]: (B, O, I, H·W)."""
        index = mask.flatten(1)[:, None, None].expand(-1, *mat1.shape[1:3], -1)
        return torch.gather(mat1, 3, index)

    @staticmethod
    def backward(ctx, grad):
        mat0, mat1, mask, alpha = ctx.saved_tensors
        g, x = grad.flatten(2), mat0.flatten(2)
        one_hot = F.one_hot(mask.flatten(1), mat1.shape[3]).to(x.dtype)
        grad_mat0 = torch.einsum("bop,boip->bip", g, AuthorsMatMul.selected(mat1, mask)).view_as(mat0)
        grad_mat1 = torch.einsum("bop,bip,bpj->boij", g, x, one_hot)
        grad_alpha = torch.einsum("bop,bip,boij->bjp", g, x, mat1).view_as(alpha)
        return grad_mat0, grad_mat1, None, grad_alpha


def authors_drconv(inputs, guide_weight, banks, bias, routing_weight, routing_bias, *, out_channels, kernel_size,
                   stride, padding, num_w):
    """``DRConv.forward`` with its mask and Alpha made as ``make_block`` makes them (here
    from a guide with the layer's geometry, so no interpolation is needed); ``banks`` is
    the authors' ``weight``, (O·C·k·k, num_W)."""
    batch, channels, height, width = inputs.shape
    out_height = math.floor((height + 2 * padding - (kernel_size - 1) - 1) / stride + 1)
    out_width = math.floor((width + 2 * padding - (kernel_size - 1) - 1) / stride + 1)
    alpha = F.softmax(F.conv2d(inputs, guide_weight, None, stride, padding), dim=1)
    mask = torch.argmax(alpha, dim=1)
    groups_num = alpha.shape[1]
    x_se = inputs.reshape(batch, channels, -1).mean(dim=-1, keepdim=False)
    x_se = 2.0 * torch.sigmoid(F.linear(x_se, routing_weight, routing_bias)) / num_w
    weight = F.linear(x_se.reshape(-1, num_w), banks)
    weight = weight.reshape(batch, groups_num, out_channels, channels * kernel_size * kernel_size).permute(0, 2, 3, 1)
    if not (kernel_size == 1 and stride == 1 and padding == 0):
        inputs = F.unfold(inputs, kernel_size, dilation=1, padding=padding, stride=stride)
        inputs = inputs.reshape(inputs.shape[0], inputs.shape[1], out_height, out_width)
    out = AuthorsMatMul.apply(inputs, weight, mask, alpha)
    return out + bias.reshape(1, -1, 1, 1)


@pytest.mark.parametrize(("k", "stride", "padding"), [(1, 1, 0), (3, 1, 1), (3, 2, 1)])
def test_output_and_every_gradient_equal_the_authors_operator(k, stride, padding):
    conv = layer(cin=3, cout=4, k=k, stride=stride, padding=padding, regions=3, bases=2)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    params = {
        "guide_weight": conv.guide_weight, "bias": conv.bias, "routing_weight": conv.router_weight,
        "routing_bias": conv.router_bias, "banks": conv.weight.view(conv.bases, -1).T,
    }
    ref = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    upstream = torch.randn(2, 4, *conv(x).shape[2:], dtype=torch.float64)
    y = conv(x)
    y_ref = authors_drconv(x_ref, ref["guide_weight"], ref["banks"], ref["bias"], ref["routing_weight"],
                           ref["routing_bias"], out_channels=4, kernel_size=k, stride=stride, padding=padding, num_w=2)
    torch.testing.assert_close(y, y_ref)
    (y * upstream).sum().backward()
    (y_ref * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(conv.guide_weight.grad, ref["guide_weight"].grad)
    torch.testing.assert_close(conv.bias.grad, ref["bias"].grad)
    torch.testing.assert_close(conv.router_weight.grad, ref["routing_weight"].grad)
    torch.testing.assert_close(conv.router_bias.grad, ref["routing_bias"].grad)
    torch.testing.assert_close(conv.weight.grad, ref["banks"].grad.T.reshape(conv.weight.shape))


def test_initialization_is_the_authors():
    torch.manual_seed(0)
    conv = RegionAwareConv2d(16, 32, 3, padding=1)
    assert (conv.regions, conv.bases) == (8, 8) and conv.weight.shape == (8 * 32, 16, 3, 3)
    bound = math.sqrt(6 / (16 * 9))
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.95 * bound
    assert not conv.bias.any() and not conv.router_bias.any()
    assert abs(conv.router_weight.std().item() - 0.01) < 0.002
    # at the start every coefficient is ≈ 2·sigmoid(0)/N = 1/N: each region's filters ≈ the banks' mean
    x = torch.randn(2, 16, 5, 5)
    banks = conv.weight.view(8, 32, 16, 3, 3)
    torch.testing.assert_close(conv.region_filters(x), banks.mean(dim=0).expand(2, 8, -1, -1, -1, -1),
                               atol=0.02 * bound, rtol=0)


def test_it_trains_under_bfloat16_autocast():
    torch.manual_seed(0)
    conv = RegionAwareConv2d(3, 4, 3, padding=1, regions=3, bases=2)
    x = torch.randn(2, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.float().square().sum().backward()
    assert y.shape == (2, 4, 6, 6) and torch.isfinite(y).all()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in conv.parameters())


# -- the kind in the harness -------------------------------------------------------------


def test_the_kind_replaces_sliding_window_convs_only():
    kind = ConvFactory("drconv", (("drconv_regions", 4), ("drconv_bases", 2)))
    conv = kind.conv(4, 8, 3, stride=2, padding=1)
    assert isinstance(conv, RegionAwareConv2d) and (conv.regions, conv.bases) == (4, 2)
    assert isinstance(kind.conv(4, 8, (1, 3), padding=(0, 1)), RegionAwareConv2d)
    for plain in (kind.conv(4, 8, 1), kind.conv(4, 8, 1, stride=2), kind.conv(4, 8, 4, stride=4)):
        assert type(plain) is nn.Conv2d
    assert type(kind.linear(4, 8)) is nn.Linear


@pytest.mark.parametrize(("arch", "depth"), [("cnn", 4), ("resnet", 8)])
@pytest.mark.parametrize("size", [28, 32, 8])
def test_shapes_and_gradients_in_cnn_and_resnet(arch, depth, size):
    torch.manual_seed(0)
    model = ARCHS.get(arch)(in_channels=3, num_classes=10, image_size=size, norm=NormFactory("bn"),
                            conv=ConvFactory("drconv", (("drconv_regions", 2), ("drconv_bases", 2))), width=4,
                            depth=depth)
    sliding = [m for m in model.modules() if isinstance(m, RegionAwareConv2d)]
    assert len(sliding) == (4 if arch == "cnn" else 1 + 3 * 2)  # every 3×3 conv, the stem included
    y = model(torch.randn(2, 3, size, size))
    assert y.shape == (2, 10)
    y.sum().backward()
    assert all(m.guide_weight.grad.abs().sum() > 0 for m in sliding)


@pytest.mark.parametrize("arch", ["mlp", "vit"])
def test_architectures_without_a_sliding_window_conv_are_refused(arch):
    with pytest.raises(ConfigError, match="conv=drconv replaces the model's sliding-window convolutions") as err:
        build_model(TrialConfig(dataset="synthetic", arch=arch, conv="drconv"), SOURCE)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("changes", "message"), [
    ({"arch": "regnet"}, "regnet"),
    ({"norm": "mimic"}, "brings its own conv"),
    ({"drconv_regions": 0}, "drconv_regions must be an integer ≥ 1"),
    ({"drconv_bases": 0}, "drconv_bases must be an integer ≥ 1"),
])
def test_incompatible_choices_are_refused_before_anything_runs(changes, message):
    with pytest.raises(ConfigError, match=message):
        build_model(TrialConfig(**{"dataset": "synthetic", "arch": "cnn", "conv": "drconv", **changes}), SOURCE)

"""Deformable convolution (``conv: deformable``) against its papers, torchvision's operator
and the authors' initialization.

- The sampling is DCNv1 §2.1 eq. 2–4 / DCNv2 §3.1 (Dai et al. 2017, arXiv:1703.06211; Zhu et
  al. 2019, arXiv:1811.11168): y(p₀) = Σ_k w_k Δm_k x(p₀ + p_k + Δp_k) with x bilinear,
  G(q, p) = max(0, 1 − |q_x − p_x|) max(0, 1 − |q_y − p_y|), 0 outside the map: checked
  against that sum written out in NumPy for fractional offsets, and, for integer offsets,
  against a plain conv of the shifted, zero-padded input, the exact shift
  ``torchvision.ops.deform_conv2d`` defines (channel 2k is Δy, 2k + 1 is Δx).
- The start: offset predictor at zero (msracver/Deformable-ConvNets,
  rfcn/symbols/resnet_v1_101_rfcn_dcn.py ``init_weight_rfcn``), modulation 2·sigmoid(0) = 1
  (DCNv2_op/example_symbol.py ``modulated_deformable_conv``): the layer equals
  ``nn.Conv2d`` with the same weights, and a network equals the standard network of the same
  seed.
- Gradients reach the offset and modulation predictor (``torch.autograd.gradcheck``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError
from bench.spec import TrialConfig, trial_from_assignments
from bench.trial import build_model
from bench.zoo.archs import ARCHS
from bench.zoo.convs import ConvFactory
from bench.zoo.datasets import DatasetSource
from bench.zoo.norms import NormFactory
from bench.zoo.spatial_convs.deformable import DeformableConv2d

SOURCE = DatasetSource("probe", in_channels=1, image_size=8, num_classes=10, load=None, needs_files=False, train_size=64)


def layer(cin=2, cout=3, k=3, stride=1, padding=1, modulated=True, seed=0) -> DeformableConv2d:
    torch.manual_seed(seed)
    return DeformableConv2d(cin, cout, k, stride=stride, padding=padding, modulated=modulated).double()


def plain_twin(conv: DeformableConv2d) -> nn.Conv2d:
    twin = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding)
    twin.load_state_dict({"weight": conv.weight, "bias": conv.bias})
    return twin.double()


# -- the start: the plain conv ------------------------------------------------------------


@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("stride", [1, 2])
def test_at_zero_offsets_and_unit_modulation_it_is_the_plain_conv(modulated, stride):
    conv = layer(stride=stride, modulated=modulated)
    assert not conv.offset_weight.any() and not conv.offset_bias.any()
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    offset, mask = conv.offsets_and_mask(x)
    assert offset.shape == (2, 18, *conv(x).shape[2:]) and not offset.any()
    if modulated:
        assert mask.shape == (2, 9, *offset.shape[2:])
        torch.testing.assert_close(mask, torch.ones_like(mask))  # 2·sigmoid(0), the authors' factor 2
    else:
        assert mask is None
    torch.testing.assert_close(conv(x), plain_twin(conv)(x))


@pytest.mark.parametrize(("arch", "depth"), [("cnn", 4), ("resnet", 8)])
@pytest.mark.parametrize("size", [28, 32, 8])
def test_a_deformable_network_starts_as_the_standard_network_of_its_seed(arch, depth, size):
    models = {}
    for name in ("standard", "deformable"):
        torch.manual_seed(0)
        models[name] = ARCHS.get(arch)(in_channels=3, num_classes=10, image_size=size, norm=NormFactory("bn"),
                                       conv=ConvFactory(name), width=4, depth=depth)
    standard, deformable = models["standard"], models["deformable"]
    plain = dict(standard.named_parameters())
    for name, p in deformable.named_parameters():
        if name.endswith(("offset_weight", "offset_bias")):
            assert not p.any(), name
        else:
            assert torch.equal(p, plain[name]), name
    sliding = [m for m in standard.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert sum(isinstance(m, DeformableConv2d) for m in deformable.modules()) == len(sliding)
    x = torch.randn(2, 3, size, size)
    y = deformable(x)
    assert y.shape == (2, 10)
    torch.testing.assert_close(y, standard(x), atol=1e-4, rtol=1e-4)


def test_vgg_init_leaves_the_offset_predictor_at_zero():
    """VGG re-initializes every conv layer (He, fan-out); the predictor is not a child conv."""
    torch.manual_seed(0)
    model = ARCHS.get("vgg")(in_channels=1, num_classes=10, image_size=8, norm=NormFactory("bn"),
                             conv=ConvFactory("deformable"), width=4)
    layers = [m for m in model.modules() if isinstance(m, DeformableConv2d)]
    assert layers and all(not m.offset_weight.any() and not m.offset_bias.any() for m in layers)


# -- the sampling ------------------------------------------------------------------------


@pytest.mark.parametrize(("dy", "dx"), [(1, 0), (0, -2), (2, 1)])
@pytest.mark.parametrize("stride", [1, 2])
def test_an_integer_offset_shifts_the_sampling_grid(dy, dx, stride):
    """Δp = (dy, dx) at every kernel point reads x(p₀ + p_k + Δp), zero outside the image:
    the plain conv of the input shifted by (dy, dx) inside a zero border."""
    conv = layer(stride=stride, modulated=False)
    with torch.no_grad():
        conv.offset_bias.view(9, 2).copy_(torch.tensor([dy, dx], dtype=torch.float64))
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    border = 1 + 2  # the conv's padding + the largest shift
    padded = F.pad(x, (border,) * 4)
    top, left = border - 1 + dy, border - 1 + dx
    expected = F.conv2d(padded[:, :, top:, left:], conv.weight, conv.bias, stride=stride)
    out = conv(x)
    torch.testing.assert_close(out, expected[:, :, : out.shape[2], : out.shape[3]])


def test_the_modulation_scales_each_kernel_point_by_two_sigmoid():
    conv = layer(modulated=True)
    logits = torch.linspace(-2, 2, 9, dtype=torch.float64)
    with torch.no_grad():
        conv.offset_bias[18:].copy_(logits)
    scaled = plain_twin(conv)
    with torch.no_grad():
        scaled.weight.mul_((2 * torch.sigmoid(logits)).view(1, 1, 3, 3))
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(conv(x), scaled(x))


def bilinear(image: np.ndarray, y: float, x: float) -> np.ndarray:
    """x(p) = Σ_q G(q, p) x(q), G(q, p) = max(0, 1 − |q_y − p_y|) · max(0, 1 − |q_x − p_x|),
    over the integer locations q inside the map (DCNv1 eq. 3–4)."""
    out = np.zeros(image.shape[0])
    for qy in (math.floor(y), math.floor(y) + 1):
        for qx in (math.floor(x), math.floor(x) + 1):
            if 0 <= qy < image.shape[1] and 0 <= qx < image.shape[2]:
                out += max(0.0, 1 - abs(qy - y)) * max(0.0, 1 - abs(qx - x)) * image[:, qy, qx]
    return out


def papers_deformable_conv(x, offset, mask, weight, bias, stride, padding):
    """DCNv2 §3.1 (DCNv1 eq. 2 with Δm = 1), written out: for every output position p₀ and
    kernel point k = (i, j), sample x at p₀·stride − padding + (i, j) + (Δy_k, Δx_k)."""
    batch, _, height, width = offset.shape
    out_channels, _, kh, kw = weight.shape
    y = np.zeros((batch, out_channels, height, width))
    for b in range(batch):
        for oy in range(height):
            for ox in range(width):
                acc = bias.copy()
                for i in range(kh):
                    for j in range(kw):
                        k = i * kw + j
                        py = oy * stride - padding + i + offset[b, 2 * k, oy, ox]
                        px = ox * stride - padding + j + offset[b, 2 * k + 1, oy, ox]
                        modulation = 1.0 if mask is None else mask[b, k, oy, ox]
                        acc += modulation * weight[:, :, i, j] @ bilinear(x[b], py, px)
                y[b, :, oy, ox] = acc
    return y


@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("stride", [1, 2])
def test_fractional_offsets_follow_the_papers_bilinear_sampling(modulated, stride):
    conv = layer(stride=stride, modulated=modulated)
    with torch.no_grad():  # offsets of about ±1.5 pixels that vary with the input and position
        conv.offset_weight.normal_(std=0.3)
        conv.offset_bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64)
    offset, mask = conv.offsets_and_mask(x)
    torch.testing.assert_close(offset, F.conv2d(x, conv.offset_weight, conv.offset_bias, stride, 1)[:, :18])
    assert (offset.frac().abs() > 1e-2).double().mean() > 0.9  # sampling points off the integer grid
    expected = papers_deformable_conv(
        x.numpy(), offset.detach().numpy(), None if mask is None else mask.detach().numpy(),
        conv.weight.detach().numpy(), conv.bias.detach().numpy(), stride, 1,
    )
    np.testing.assert_allclose(conv(x).detach().numpy(), expected, rtol=1e-10, atol=1e-10)


def test_under_bfloat16_autocast_the_sampling_runs_in_float32():
    """torchvision casts for autocast on CUDA only; its CPU kernel would refuse the bfloat16
    offsets beside float32 weights. At the zero start the offsets are exactly 0 and the
    modulation exactly 1 in any precision, so the output is the float32 one."""
    torch.manual_seed(0)
    conv = DeformableConv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, conv(x))


# -- gradients ---------------------------------------------------------------------------


@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "v2"])
def test_gradients_reach_the_offset_predictor(modulated):
    conv = layer(cin=1, cout=1, modulated=modulated)
    with torch.no_grad():  # fractional sampling points, where bilinear interpolation is smooth
        conv.offset_weight.normal_(std=0.05)
        conv.offset_bias.uniform_(0.2, 0.8)
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    names = ("weight", "bias", "offset_weight", "offset_bias")
    params = tuple(getattr(conv, n).detach().clone().requires_grad_() for n in names)

    def forward(inputs, *values):
        return torch.func.functional_call(conv, dict(zip(names, values)), (inputs,))

    assert torch.autograd.gradcheck(forward, (x, *params), fast_mode=True)


def test_one_training_step_moves_the_offsets_off_zero():
    torch.manual_seed(0)
    model = ARCHS.get("cnn")(in_channels=1, num_classes=4, image_size=8, norm=NormFactory("bn"),
                             conv=ConvFactory("deformable"), width=4, depth=2)
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 4
    F.cross_entropy(model(x), y).backward()
    layers = [m for m in model.modules() if isinstance(m, DeformableConv2d)]
    assert len(layers) == 2
    for m in layers:
        assert m.offset_weight.grad.abs().sum() > 0 and m.offset_bias.grad.abs().sum() > 0


# -- the kind in the harness -------------------------------------------------------------


def test_the_kind_replaces_sliding_window_convs_only():
    kind = ConvFactory("deformable", (("deform_version", 1),))
    assert isinstance(kind.conv(4, 8, 3, padding=1), DeformableConv2d)
    assert isinstance(kind.conv(4, 8, 3, stride=2, padding=1), DeformableConv2d)
    assert isinstance(kind.conv(4, 8, (3, 1), padding=(1, 0)), DeformableConv2d)
    assert not kind.conv(4, 8, 3).modulated
    assert ConvFactory("deformable").conv(4, 8, 3).modulated  # the default: DCNv2
    for plain in (kind.conv(4, 8, 1), kind.conv(4, 8, 1, stride=2), kind.conv(4, 8, 4, stride=4)):
        assert type(plain) is nn.Conv2d
    assert type(kind.linear(4, 8)) is nn.Linear


@pytest.mark.parametrize("arch", ["mlp", "vit"])
def test_architectures_without_a_sliding_window_conv_are_refused(arch):
    config = TrialConfig(dataset="synthetic", arch=arch, conv="deformable")
    with pytest.raises(ConfigError, match="replaces the model's sliding-window convolutions") as err:
        build_model(config, SOURCE)
    assert "\n" not in str(err.value)


def test_a_vit_with_its_conv_stem_is_deformable_there():
    model = build_model(TrialConfig(dataset="synthetic", arch="vit", conv="deformable", vit_conv_stem=True), SOURCE)
    assert any(isinstance(m, DeformableConv2d) for m in model.modules())


@pytest.mark.parametrize("from_stage", [1, 2, 3])
def test_conv_from_stage_deforms_that_stage_and_the_later_ones_only(from_stage):
    # depth 14: two blocks per stage, blocks 0-1 in stage 1, 2-3 in stage 2, 4-5 in stage 3; the stem is stage 1's
    config = TrialConfig(dataset="synthetic", arch="resnet", depth=14, conv="deformable",
                         conv_from_stage=from_stage)
    torch.manual_seed(0)
    model = build_model(config, SOURCE)
    deformed = {name for name, m in model.named_modules() if isinstance(m, DeformableConv2d)}
    expected = {f"stages.{b}.conv{c}" for b in range(2 * (from_stage - 1), 6) for c in (1, 2)}
    assert deformed == expected | ({"stem.0"} if from_stage == 1 else set())
    torch.manual_seed(0)
    standard = build_model(TrialConfig(dataset="synthetic", arch="resnet", depth=14), SOURCE)
    x = torch.randn(2, 1, 8, 8)
    model.eval(), standard.eval()
    torch.testing.assert_close(model(x), standard(x), atol=1e-5, rtol=1e-5)  # same seed, same function at the start


def test_conv_from_stage_enters_the_trial_id_only_when_set():
    base = TrialConfig(arch="resnet", conv="deformable")
    assert TrialConfig(arch="resnet", conv="deformable", conv_from_stage=1).trial_id == base.trial_id
    assert TrialConfig(arch="resnet", conv="deformable", conv_from_stage=2).trial_id != base.trial_id
    with pytest.raises(ConfigError, match="`conv_from_stage` does nothing for conv=standard"):
        trial_from_assignments({"arch": "resnet", "conv_from_stage": 2})


@pytest.mark.parametrize(("changes", "message"), [
    ({"arch": "resnet", "conv_from_stage": 4}, "conv_from_stage=4 builds deformable convs from that stage of the "
                                                "network on, but this model has 3 stages"),
    ({"arch": "cnn", "depth": 2, "conv_from_stage": 2}, "this model has 1 stage[.]"),
    ({"arch": "vgg", "conv_from_stage": 2}, "this model has no stages that conv_from_stage counts"),
    ({"arch": "vit", "vit_conv_stem": True, "conv_from_stage": 2}, "has no stages"),
])
def test_a_stage_the_model_does_not_have_is_refused_before_anything_runs(changes, message):
    with pytest.raises(ConfigError, match=message) as err:
        build_model(TrialConfig(**{"dataset": "synthetic", "conv": "deformable", **changes}), SOURCE)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("changes", "message"), [
    ({"arch": "nf-resnet", "norm": "none"}, "scaled weight standardization"),
    ({"norm": "mimic"}, "brings its own conv"),
    ({"deform_version": 3}, "deform_version must be one of 1, 2"),
])
def test_incompatible_choices_are_refused_before_anything_runs(changes, message):
    with pytest.raises(ConfigError, match=message):
        build_model(TrialConfig(**{"dataset": "synthetic", "arch": "cnn", "conv": "deformable", **changes}), SOURCE)

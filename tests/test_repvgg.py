"""RepVGG: the fused (deploy) network against the trained multi-branch one, the fusion
equations against the authors' code and timm's, the layouts and parameter counts.

The authors' fusion is ``RepVGGBlock.get_equivalent_kernel_bias`` / ``_fuse_bn_tensor`` /
``_pad_1x1_to_3x3_tensor`` in DingXiaoH/RepVGG ``repvgg.py`` (commit 82b28bb), re-implemented
below in NumPy from that file: per branch, t = γ / sqrt(running_var + ε), kernel · t and
β − running_mean · t; the identity branch as a 3×3 kernel with 1 at the centre of input
channel i % (C_in / groups) for output channel i; the 1×1 kernel zero-padded by 1 on each
side; the three kernels and biases summed. timm's ``RepVggBlock.reparameterize``
(``timm/models/byobnet.py``, adapted by timm from the authors' block) is the second,
independent implementation; timm's ``repvgg_a0`` the reference for the ImageNet-sized
network's parameter counts, before and after fusion (``timm.utils.model.reparameterize_model``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from timm.models.byobnet import RepVggBlock
from timm.utils.model import reparameterize_model
from torch import nn

from bench.errors import ConfigError
from bench.spec import DEFAULTS, TrialConfig
from bench.trial import build_model, preflight
from bench.zoo.archs import ARCHS
from bench.zoo.archs.repvgg import RepVGGBlock, deploy, stage_widths
from bench.zoo.convs import ConvFactory
from bench.zoo.datasets import dataset_source
from bench.zoo.norms import NormFactory, is_norm_module


BN = NormFactory("bn")


def repvgg(norm: NormFactory = BN, **kw) -> nn.Module:
    args = dict(in_channels=1, num_classes=10, image_size=8, norm=norm, width=8)
    return ARCHS.get("repvgg")(**{**args, **kw})


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_a_few_steps(model: nn.Module, dtype: torch.dtype, steps: int = 3, size: int = 8) -> torch.Tensor:
    """SGD with momentum on random data, so weights, γ, β and running statistics move away
    from their initial values; returns a fresh batch to compare outputs on."""
    g = torch.Generator().manual_seed(0)
    model.to(dtype).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        x = torch.randn(8, 1, size, size, generator=g, dtype=dtype) * 2 + 0.5
        y = torch.randint(0, 10, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.randn(8, 1, size, size, generator=g, dtype=dtype) * 2 + 0.5


def assert_fused_equals_trained(model: nn.Module, x: torch.Tensor, rtol: float) -> nn.Module:
    model.eval()
    with torch.no_grad():
        expected = model(x)
        fused = deploy(model)
        actual = fused(x)
    scale = expected.abs().max().item()
    assert scale > 0
    assert (actual - expected).abs().max().item() <= rtol * scale
    return fused


NORMS = [
    NormFactory("bn"),
    NormFactory.of("bn-ghost", norm_virtual_batch=4),
    NormFactory("bn-frozen"),
    NormFactory.of("brn", renorm_start=0, renorm_rmax_at=2, renorm_dmax_at=2),
    NormFactory.of("mabn", mabn_buffer=2, mabn_warmup=0, mabn_renorm_start=1),
    NormFactory("none"),
    NormFactory.of("bn", norm_affine=False),
]


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.name + ("-noaffine" if not n.options.get("norm_affine", 1) else ""))
def test_fused_network_computes_the_trained_function_in_float64(norm):
    torch.manual_seed(0)
    model = repvgg(norm)
    x = train_a_few_steps(model, torch.float64)
    stats = [b for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var", "running_std"))]
    if norm.name in ("bn", "bn-ghost", "brn", "mabn"):  # the running statistics moved
        assert any(not torch.allclose(b, torch.zeros_like(b)) and not torch.allclose(b, torch.ones_like(b)) for b in stats)
    assert_fused_equals_trained(model, x, rtol=1e-10)


@pytest.mark.parametrize("conv", ["ws", "wn", "centered"])
def test_fused_network_folds_the_effective_kernel_of_reparametrized_convs(conv):
    torch.manual_seed(1)
    model = repvgg(conv=ConvFactory(conv), in_channels=3)
    g = torch.Generator().manual_seed(3)
    model.double()
    x = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    model.train()
    model(x)  # BatchNorm statistics of one batch
    assert_fused_equals_trained(model, x, rtol=1e-10)


def test_fused_network_in_float32_on_28_pixel_images():
    torch.manual_seed(2)
    model = repvgg(image_size=28)
    x = train_a_few_steps(model, torch.float32, size=28)
    assert_fused_equals_trained(model, x, rtol=1e-4)


def test_a_mimicnorm_network_fuses_with_its_conv_biases_and_last_batchnorm():
    """norm=mimic: centred convs, a bias on every conv (added when the model is built), the
    identity branch without a norm, the last BatchNorm after the classifier (left as is)."""
    config = TrialConfig(dataset="synthetic", arch="repvgg", norm="mimic", width=8)
    torch.manual_seed(3)
    model = build_model(config, dataset_source("synthetic"))
    x = train_a_few_steps(model, torch.float64)
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    fused = assert_fused_equals_trained(model, x, rtol=1e-10)
    assert isinstance(fused[1], nn.BatchNorm1d)


class AuthorsFusion:
    """``get_equivalent_kernel_bias`` and ``_fuse_bn_tensor`` of DingXiaoH/RepVGG ``repvgg.py``
    in NumPy: each branch a (kernel, BN) pair, the identity branch a BN alone."""

    def __init__(self, in_channels: int, groups: int = 1):
        self.in_channels, self.groups = in_channels, groups

    def fuse_bn(self, kernel, bn):
        if bn is None:
            return 0, 0
        if kernel is None:  # the identity branch
            input_dim = self.in_channels // self.groups
            kernel = np.zeros((self.in_channels, input_dim, 3, 3))
            for i in range(self.in_channels):
                kernel[i, i % input_dim, 1, 1] = 1
        mean, var, gamma, beta, eps = bn
        std = np.sqrt(var + eps)
        t = (gamma / std).reshape(-1, 1, 1, 1)
        return kernel * t, beta - mean * gamma / std

    def equivalent_kernel_bias(self, k3, bn3, k1, bn1, bn_id):
        kernel3, bias3 = self.fuse_bn(k3, bn3)
        kernel1, bias1 = self.fuse_bn(k1, bn1)
        kernel_id, bias_id = self.fuse_bn(None, bn_id) if bn_id is not None else (0, 0)
        padded = np.pad(kernel1, ((0, 0), (0, 0), (1, 1), (1, 1)))
        return kernel3 + padded + kernel_id, bias3 + bias1 + bias_id


def randomize_norms(block: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g, dtype=m.running_mean.dtype))
            m.running_var.copy_(torch.rand(c, generator=g, dtype=m.running_var.dtype) + 0.2)
            with torch.no_grad():
                m.weight.copy_(torch.randn(c, generator=g, dtype=m.weight.dtype))
                m.bias.copy_(torch.randn(c, generator=g, dtype=m.bias.dtype))


def bn_numpy(bn: nn.BatchNorm2d):
    return tuple(t.detach().numpy() for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias)) + (bn.eps,)


@pytest.mark.parametrize(("cin", "cout", "stride"), [(6, 6, 1), (4, 6, 2), (4, 6, 1)], ids=["identity", "stride-2", "widening"])
def test_fusion_equations_match_the_authors_code(cin, cout, stride):
    torch.manual_seed(4)
    block = RepVGGBlock(cin, cout, stride, NormFactory("bn"), ConvFactory()).double()
    randomize_norms(block, seed=5)
    assert (block.identity is not None) == (cin == cout and stride == 1)
    kernel, bias = block.equivalent_kernel_bias()
    authors = AuthorsFusion(cin).equivalent_kernel_bias(
        block.dense.conv.weight.detach().numpy(), bn_numpy(block.dense.norm),
        block.pointwise.conv.weight.detach().numpy(), bn_numpy(block.pointwise.norm),
        bn_numpy(block.identity) if block.identity is not None else None,
    )
    np.testing.assert_allclose(kernel.detach().numpy(), authors[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bias.detach().numpy(), authors[1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("cin", "cout", "stride"), [(6, 6, 1), (4, 6, 2)], ids=["identity", "stride-2"])
def test_fusion_matches_timms_reparameterize(cin, cout, stride):
    torch.manual_seed(6)
    ours = RepVGGBlock(cin, cout, stride, NormFactory("bn"), ConvFactory()).double()
    randomize_norms(ours, seed=7)
    theirs = RepVggBlock(cin, cout, stride=stride).double()
    names = {"dense.conv": "conv_kxk.conv", "dense.norm": "conv_kxk.bn", "pointwise.conv": "conv_1x1.conv",
             "pointwise.norm": "conv_1x1.bn", "identity": "identity"}
    state = {}
    for key, value in ours.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        state[f"{names[prefix]}.{leaf}"] = value
    theirs.load_state_dict(state)
    x = torch.randn(2, cin, 7, 7, dtype=torch.float64)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), rtol=0, atol=1e-12)
        theirs.reparameterize()
        fused = ours.fused()
    torch.testing.assert_close(fused.conv.weight, theirs.reparam_conv.weight, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fused.conv.bias, theirs.reparam_conv.bias, rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), theirs(x), rtol=1e-12, atol=1e-12)


def test_the_fused_network_is_a_plain_stack_of_3x3_convs():
    model = repvgg(depth=28)
    fused = deploy(model)
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 28 and all(c.kernel_size == (3, 3) and c.bias is not None for c in convs)
    assert not any(is_norm_module(m) for m in fused.modules())
    assert not any(isinstance(m, RepVGGBlock) for m in fused.modules())
    assert not fused.training and model.training  # the original is unchanged
    assert any(isinstance(m, RepVGGBlock) for m in model.modules())


def block_parameters(cin: int, cout: int, identity: bool, norm_params: int = 2) -> tuple[int, int]:
    """(training, fused) parameters of one block with BatchNorm (γ, β per channel)."""
    train = 9 * cin * cout + cin * cout + 2 * norm_params * cout + (norm_params * cin if identity else 0)
    return train, 9 * cin * cout + cout


def test_layouts_widths_and_parameter_counts():
    model = repvgg(width=8, repvgg_a=0.75, repvgg_b=2.5)  # widths 6, 6, 12, 24, 160
    assert stage_widths(8, 0.75, 2.5) == (6, 6, 12, 24, 160)
    assert [len(s) for s in model.stages] == [2, 4, 14, 1]
    blocks = [model.stage0, *[b for s in model.stages for b in s]]
    assert len(blocks) == 22
    expected_train = expected_fused = 10 * 160 + 10  # the classifier
    for b in blocks:
        cin, cout = b.dense.conv.in_channels, b.dense.conv.out_channels
        train, fused = block_parameters(cin, cout, b.identity is not None)
        expected_train, expected_fused = expected_train + train, expected_fused + fused
    assert sum(b.identity is not None for b in blocks) == 1 + 3 + 13  # every block but each stage's first
    assert count(model) == expected_train
    assert count(deploy(model)) == expected_fused
    b_model = repvgg(depth=28)
    assert [len(s) for s in b_model.stages] == [4, 6, 16, 1]


def test_imagenet_sized_network_has_the_parameters_of_timms_and_the_papers():
    """width 64 is the paper's network. RepVGG-A0 against timm's repvgg_a0, before and after
    fusion; the paper's Table 4 gives the fused counts truncated to 0.01 M (A0 8.30 M,
    B2 80.31 M)."""
    with torch.device("meta"):
        a0 = repvgg(in_channels=3, num_classes=1000, image_size=224, width=64)
        b2 = repvgg(in_channels=3, num_classes=1000, image_size=224, width=64, depth=28, repvgg_a=2.5, repvgg_b=5.0)
        timm_a0 = timm.create_model("repvgg_a0")
        assert count(a0) == count(timm_a0) == 9_108_968
        fused_a0 = count(deploy(a0))
        assert fused_a0 == count(reparameterize_model(timm_a0, inplace=True)) == 8_309_384
        assert math.floor(fused_a0 / 1e4) / 100 == 8.30
        assert math.floor(count(deploy(b2)) / 1e4) / 100 == 80.31


def test_networks_whose_norm_or_conv_cannot_be_folded_train_but_refuse_to_fuse():
    for norm in (NormFactory.of("gn", norm_groups=2), NormFactory("ln"), NormFactory("bn-example-weighted")):
        model = repvgg(norm)
        model(torch.randn(4, 1, 8, 8)).sum().backward()  # trains unfused
        with pytest.raises(ConfigError, match=f"fixed per-channel affine.*norm={norm.name} "):
            deploy(model)
    model = repvgg(conv=ConvFactory("cos"))
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    with pytest.raises(ConfigError, match="CosineConv2d.*conv standard, ws, wn or centered"):
        deploy(model)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(depth=20), r"depth=20\. Valid depths: 22 \(RepVGG-A\), 28 \(RepVGG-B\)"),
        (dict(width=1, repvgg_a=0.5), "at least one channel"),
        (dict(norm=NormFactory("in")), "8-pixel images .* 1×1 maps"),
    ],
)
def test_refusals_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        repvgg(**kw)


def test_small_images_keep_their_resolution_in_stage_zero():
    model = repvgg(image_size=32, in_channels=3)
    seen = {}
    model.stage0.register_forward_hook(lambda m, i, o: seen.update(stage0=o.shape[-1]))
    model.stages[-1].register_forward_hook(lambda m, i, o: seen.update(last=o.shape[-1]))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert seen == {"stage0": 32, "last": 2}
    repvgg(norm=NormFactory("in"), image_size=28)  # 28 → 2×2 at the last stage: InstanceNorm has positions


def test_builder_defaults_are_the_config_defaults_and_options_enter_the_id():
    import inspect

    params = inspect.signature(ARCHS.get("repvgg")).parameters
    for name in ARCHS.entry("repvgg").option_names:
        assert params[name].default == DEFAULTS[name], name
    assert TrialConfig(arch="cnn", repvgg_a=1.0).trial_id == TrialConfig(arch="cnn").trial_id
    assert TrialConfig(arch="repvgg", repvgg_a=1.0).trial_id != TrialConfig(arch="repvgg").trial_id
    preflight(TrialConfig(dataset="fashion-mnist", arch="repvgg", norm="gn", batch_size=8))
    with pytest.raises(ConfigError, match="depth=8"):
        preflight(TrialConfig(dataset="fashion-mnist", arch="repvgg", depth=8, batch_size=8))


def _tiny_trial(**kw):
    from bench.trial import run_trial

    config = TrialConfig(dataset="synthetic", arch="repvgg", width=4, epochs=1, batch_size=32, lr=0.05, **kw)
    result = run_trial(config, device="cpu")
    assert result.status == "completed", result.error
    return result


def test_a_trial_evaluates_the_fused_network_beside_the_trained_one():
    """The paper's claim, checked on every run's own weights: the fused network scores as the trained one."""
    summary = _tiny_trial().summary
    assert summary["deployed_val_acc"] == summary["final_val_acc"]
    assert summary["deployed_val_loss"] == pytest.approx(summary["final_val_loss"], rel=1e-5)
    assert 0 <= summary["deployed_logit_error"] < 1e-4  # float32 rounding, not a folding error


def test_a_trial_whose_network_cannot_fuse_records_no_deployed_metrics_and_other_archs_none():
    from bench.metrics import RUN_METRICS

    deployed = {name for name, m in RUN_METRICS.items() if m.needs_deploy}
    assert deployed == {"deployed_val_acc", "deployed_val_loss", "deployed_logit_error"}
    assert not deployed & set(_tiny_trial(norm="gn", norm_groups=1).summary)
    from bench.trial import run_trial

    plain = run_trial(TrialConfig(dataset="synthetic", arch="cnn", width=4, epochs=1, batch_size=32), device="cpu")
    assert plain.status == "completed" and not deployed & set(plain.summary)

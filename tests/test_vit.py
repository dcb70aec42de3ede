"""The Vision Transformer: shapes, exact parameter counts, and each option doing what it says."""

from __future__ import annotations

import inspect

import pytest
import torch
from timm.layers import build_sincos2d_pos_embed
from torch import nn

from bench.zoo.datasets import DATASETS, dataset_source
from bench.errors import ConfigError
from bench.spec import DEFAULTS, TrialConfig
from bench.trial import build_model, build_optimizer, preflight
from bench.zoo.activations import ActivationFactory
from bench.zoo.archs import ARCHS, first_layer
from bench.zoo.archs.vit import Block, ConvStem, TokenNorm
from bench.zoo.convs import ConvFactory, is_weight_normed
from bench.zoo.norms import NormFactory, is_norm_module

LN = NormFactory("ln")


def vit(**kw) -> nn.Module:
    args = dict(in_channels=1, num_classes=10, image_size=8, norm=LN, width=16, depth=2, patch_size=4, vit_heads=2)
    return ARCHS.get("vit")(**{**args, **kw})


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def block_params(width: int, hidden: int, norm_params: int) -> int:
    qkv = width * 3 * width + 3 * width
    proj = width * width + width
    mlp = width * hidden + hidden + hidden * width + width
    return 2 * norm_params + qkv + proj + mlp


@pytest.mark.parametrize("size,channels,patch", [(8, 1, 4), (28, 1, 7), (28, 1, 4), (32, 3, 4), (32, 3, 8)])
def test_output_shape_for_small_images(size, channels, patch):
    model = vit(in_channels=channels, image_size=size, patch_size=patch)
    assert model(torch.randn(3, channels, size, size)).shape == (3, 10)


def test_parameter_count_with_class_token_and_learned_positions():
    # 8×8 image, 4×4 patches → 4 patch tokens + 1 class token; width 16, MLP 32 hidden units
    w, classes, tokens = 16, 10, 4 + 1
    patch = 1 * 4 * 4 * w + w
    ln = 2 * w
    expected = patch + w + tokens * w + 2 * block_params(w, 2 * w, ln) + ln + (w * classes + classes)
    assert expected == 5018
    assert count(vit()) == expected


def test_parameter_count_with_pooling_sincos_and_mlp_head():
    # 28×28, 7×7 patches → 16 tokens; no class token, fixed positions (no parameters),
    # MLP ratio 4, depth 3, a tanh hidden layer in the head, 3 heads of 8 dims
    w, classes = 24, 10
    model = vit(image_size=28, patch_size=7, width=w, depth=3, vit_heads=3, vit_mlp_ratio=4.0, vit_pos_embed="sincos",
                vit_cls_token=False, vit_mlp_head=True)
    patch = 1 * 7 * 7 * w + w
    ln = 2 * w
    head = (w * w + w) + (w * classes + classes)
    assert count(model) == patch + 3 * block_params(w, 4 * w, ln) + ln + head


def test_parameter_count_with_batchnorm_over_tokens_and_no_norm():
    w = 16
    base = 1 * 4 * 4 * w + w + w + 5 * w + 2 * block_params(w, 2 * w, 0) + (w * 10 + 10)
    assert count(vit(norm=NormFactory("none"))) == base
    bn = vit(norm=NormFactory("bn"))
    assert count(bn) == base + 5 * 2 * w  # γ, β of 5 norms (2 per block, 1 final)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 5


def test_conv_stem_parameter_count_and_token_grid():
    # stem: 3 convs of width/2 = 8 channels (no bias, followed by LayerNorm2d), then a 2×2 stride-2 projection
    w, h = 16, 8
    model = vit(vit_conv_stem=True)
    stem = (1 * 9 * h + 2 * h) + 2 * (h * 9 * h + 2 * h) + (h * 2 * 2 * w + w)
    assert count(model.patch_embed) == stem
    assert isinstance(model.patch_embed, ConvStem)
    assert model.patch_embed(torch.randn(2, 1, 8, 8)).shape == (2, w, 2, 2)  # still (8/4)² tokens
    strides = [m.stride for m in model.patch_embed.modules() if isinstance(m, nn.Conv2d)]
    assert strides == [(2, 2), (1, 1), (1, 1), (2, 2)]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_sincos_position_embedding_is_fixed():
    model = vit(image_size=16, vit_pos_embed="sincos")
    names = dict(model.named_parameters())
    assert "pos_embed" not in names
    assert not model.pos_embed.requires_grad
    table = model.pos_embed[0]
    assert torch.equal(table[0], torch.zeros(16))  # the class token's position
    assert torch.equal(table[1:], build_sincos2d_pos_embed([4, 4], dim=16))
    # a learned embedding is a parameter
    assert "pos_embed" in dict(vit().named_parameters())


def test_class_token_or_mean_pooling():
    x = torch.randn(4, 1, 8, 8)

    def tokens(model: nn.Module) -> torch.Tensor:
        t = model.patch_embed(x).flatten(2).transpose(1, 2)
        if model.cls_token is not None:
            t = torch.cat([model.cls_token.expand(4, -1, -1), t], dim=1)
        return model.norm(model.blocks(t + model.pos_embed))

    with_cls, pooled = vit().eval(), vit(vit_cls_token=False).eval()
    assert with_cls.pos_embed.shape == (1, 5, 16) and pooled.pos_embed.shape == (1, 4, 16)
    assert pooled.cls_token is None
    torch.testing.assert_close(with_cls(x), with_cls.head(tokens(with_cls)[:, 0]))
    torch.testing.assert_close(pooled(x), pooled.head(tokens(pooled).mean(dim=1)))


def test_residual_scale_multiplies_both_branches():
    torch.manual_seed(0)
    block = Block(16, 2, 32, LN, ConvFactory(), ActivationFactory("gelu"), alpha=0.3, drop=0.0)
    x = torch.randn(2, 5, 16)
    h = x + 0.3 * block.attn(block.norm1(x))
    torch.testing.assert_close(block(x), h + 0.3 * block.mlp(block.norm2(h)))
    model = vit(vit_residual_scale=0.5)
    assert all(b.alpha == 0.5 for b in model.blocks)


def test_drop_path_rates_rise_linearly_and_are_inactive_in_eval():
    torch.manual_seed(0)
    model = vit(depth=3, drop_path=0.5)
    assert isinstance(model.blocks[0].drop_path, nn.Identity)
    assert [b.drop_path.drop_prob for b in model.blocks[1:]] == [0.25, 0.5]
    plain = vit(depth=3)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(8, 1, 8, 8)
    model.eval(), plain.eval()
    assert torch.equal(model(x), plain(x))
    model.train(), plain.train()
    assert not torch.equal(model(x), plain(x))  # some residual branches dropped in training


def test_frozen_patch_projection_receives_no_update():
    config = TrialConfig(dataset="synthetic", arch="vit", norm="ln", width=16, depth=1, patch_size=4, vit_heads=2,
                         vit_freeze_patch=True, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.01)
    torch.manual_seed(0)
    model = build_model(config, dataset_source("synthetic"))
    assert first_layer(model) is model.patch_embed
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(config, model, 10)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    after = model.state_dict()
    assert torch.equal(after["patch_embed.weight"], before["patch_embed.weight"])
    assert torch.equal(after["patch_embed.bias"], before["patch_embed.bias"])
    changed = [k for k in after if not k.startswith("patch_embed") and not torch.equal(after[k], before[k])]
    assert set(changed) == set(before) - {"patch_embed.weight", "patch_embed.bias"}


def test_frozen_conv_stem_and_first_layer():
    model = vit(vit_conv_stem=True, vit_freeze_patch=True)
    assert first_layer(model) is model.patch_embed.convs[0]
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("patch_embed"))


def test_batch_norms_see_tokens_of_whole_images():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 16)
    bn = TokenNorm(NormFactory.of("bn", norm_affine=False), 16).train()
    flat = x.reshape(-1, 16)
    expected = (flat - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(bn(x), expected.reshape(4, 5, 16))
    # Ghost BatchNorm: virtual batches of 2 whole images (10 tokens), not of 2 tokens
    ghost = TokenNorm(NormFactory.of("bn-ghost", norm_virtual_batch=2, norm_affine=False), 16).train()
    halves = [TokenNorm(NormFactory.of("bn", norm_affine=False), 16).train()(part) for part in x.split(2)]
    torch.testing.assert_close(ghost(x), torch.cat(halves), rtol=1e-4, atol=1e-5)
    # LayerNorm: each token on its own
    ln = TokenNorm(NormFactory("ln"), 16)
    torch.testing.assert_close(ln(x), nn.functional.layer_norm(x, (16,)))


@pytest.mark.parametrize("norm", ["ln", "bn", "gn", "none", "bn-ghost", "bn-frozen", "brn", "bcn"])
def test_every_token_norm_builds_and_runs(norm):
    model = vit(norm=NormFactory.of(norm, norm_groups=4), width=16)
    model.train()
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    norms = [m for m in model.modules() if is_norm_module(m)]
    assert len(norms) == 5  # two per block, one final (identities for none)
    assert (sum(p.numel() for m in norms for p in m.parameters()) == 0) == (norm == "none")


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(norm=NormFactory("in")), "InstanceNorm"),
        (dict(norm=NormFactory("mimic")), "norm='mimic'"),
        (dict(vit_heads=3), "Valid vit_heads for width 16: 1, 2, 4, 8, 16"),
        (dict(patch_size=3), "Valid patch sizes for 8-pixel images: 1, 2, 4, 8"),
        (dict(width=18, vit_heads=2, vit_pos_embed="sincos"), "multiple of 4"),
        (dict(patch_size=1, vit_conv_stem=True), "must be even"),
        (dict(depth=0), "depth ≥ 1"),
        (dict(vit_pos_embed="rope"), "learned, sincos"),
    ],
)
def test_refusals_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        vit(**kw)


def test_builder_defaults_are_the_config_defaults():
    params = inspect.signature(ARCHS.get("vit")).parameters
    for name in ARCHS.entry("vit").option_names:
        assert params[name].default == DEFAULTS[name], name


def test_vit_options_are_inert_for_other_archs_and_in_the_id_for_vit():
    assert TrialConfig(arch="cnn", vit_heads=8, drop_path=0.1).trial_id == TrialConfig(arch="cnn").trial_id
    assert TrialConfig(arch="vit", vit_heads=8).trial_id != TrialConfig(arch="vit").trial_id
    with pytest.raises(ConfigError, match="drop_path"):
        TrialConfig(arch="vit", drop_path=1.0)
    with pytest.raises(ConfigError, match="vit_pos_embed"):
        TrialConfig(arch="vit", vit_pos_embed="rope")


def test_preflight_builds_on_the_meta_device_and_catches_bad_sizes():
    base = dict(dataset="fashion-mnist", arch="vit", norm="ln", width=32, depth=2, batch_size=8)
    preflight(TrialConfig(**base, patch_size=7, vit_pos_embed="sincos", vit_conv_stem=False))
    preflight(TrialConfig(**base, patch_size=4, vit_conv_stem=True, vit_freeze_patch=True, drop_path=0.1))
    with pytest.raises(ConfigError, match="patch_size=5"):
        preflight(TrialConfig(**base, patch_size=5))


def test_weight_reparametrizations_reach_the_attention_and_mlp():
    model = vit(conv=ConvFactory("wn"))
    block = model.blocks[0]
    assert all(is_weight_normed(m) for m in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2, model.head))
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_linears_start_with_timms_vit_init():
    torch.manual_seed(0)
    fc1 = vit(width=64, vit_heads=4).blocks[0].mlp.fc1
    assert fc1.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(fc1.bias, torch.zeros_like(fc1.bias))


@pytest.mark.parametrize("arch", ARCHS.names())
def test_first_layer_sees_the_input_for_every_arch(arch):
    norm = NormFactory("none")
    model = ARCHS.get(arch)(in_channels=3, num_classes=10, image_size=8, norm=norm)
    layer = first_layer(model)
    assert isinstance(layer, (nn.Conv2d, nn.Linear))
    assert layer.weight.shape[1] in (3, 3 * 8 * 8)
    wrapped = nn.Sequential(model, nn.BatchNorm1d(10))
    assert first_layer(wrapped) is layer

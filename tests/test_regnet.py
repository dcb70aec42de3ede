"""RegNet: the stages built equal torchvision's ``BlockParams`` and the paper's design rule,
the parameter counts equal torchvision's and the authors', the small-image stem, the
registry's norms inside torchvision's network, and the refusals.

The paper's rule (Radosavovic et al. 2020, §3.3, eqs. 2-4, and App. D's group-width
compatibility) is re-implemented below in NumPy from the authors' pycls
(facebookresearch/pycls ``pycls/models/regnet.py``: ``generate_regnet``,
``get_stages_from_blocks``, ``adjust_ws_gs_comp``, ``quantize_float``): linear widths
u_j = w₀ + w_a·j, exponents s_j = round(log(u_j / w₀) / log w_m), widths
w₀·w_m^{s_j} rounded to a multiple of 8, stages of equal width, then each stage width
rounded to a multiple of min(g, width), NumPy's and Python's ``round`` rounding ties to even.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import RegNet_X_400MF_Weights, RegNet_Y_400MF_Weights
from torchvision.models.regnet import ResBottleneckBlock

from bench.errors import ConfigError
from bench.spec import DEFAULTS, TrialConfig
from bench.trial import build_model, preflight
from bench.zoo.archs import ARCHS
from bench.zoo.archs.regnet import STEM_WIDTH, block_params
from bench.zoo.datasets import dataset_source
from bench.zoo.norms import NormFactory, is_norm_module

BN = NormFactory("bn")


def regnet(norm: NormFactory = BN, **kw) -> nn.Module:
    args = dict(in_channels=1, num_classes=10, image_size=8, norm=norm, width=8, depth=3, regnet_wa=8.0)
    return ARCHS.get("regnet")(**{**args, **kw})


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def paper_stages(d: int, w_0: int, w_a: float, w_m: float, g: int, q: int = 8) -> tuple[list[int], list[int], list[int]]:
    """(stage widths, stage depths, group widths) by the authors' pycls rule."""
    u = np.arange(d) * w_a + w_0
    s = np.round(np.log(u / w_0) / np.log(w_m))
    widths = (np.round(w_0 * np.power(w_m, s) / q) * q).astype(int).tolist()
    starts = [j for j in range(d) if j == 0 or widths[j] != widths[j - 1]]
    stage_widths = [widths[j] for j in starts]
    stage_depths = np.diff(starts + [d]).tolist()
    groups = [min(g, w) for w in stage_widths]
    stage_widths = [int(np.round(w / gw) * gw) for w, gw in zip(stage_widths, groups)]
    return stage_widths, stage_depths, groups


def built_stages(model: nn.Module) -> tuple[list[int], list[int], list[int]]:
    """(stage widths, stage depths, group widths) read from the built network."""
    widths, depths, groups = [], [], []
    for stage in model.trunk_output:
        blocks = list(stage)
        assert all(isinstance(b, ResBottleneckBlock) for b in blocks)
        conv = blocks[0].f.b[0]  # the 3×3 group conv
        widths.append(blocks[0].f.c[0].out_channels)
        depths.append(len(blocks))
        groups.append(conv.out_channels // conv.groups)
    return widths, depths, groups


DESIGN_POINTS = {
    # name: (d, w_0, w_a, w_m, g)
    "RegNetX-200MF": (13, 24, 36.44, 2.49, 8),  # pycls configs/dds_baselines/regnetx/RegNetX-200MF_dds_8gpu.yaml
    "RegNetY-400MF": (16, 48, 27.89, 2.09, 8),  # torchvision regnet_y_400mf
    "RegNetX-1.6GF": (18, 80, 34.01, 2.25, 24),  # torchvision regnet_x_1_6gf
    "small": (6, 8, 12.0, 2.49, 8),
    "one-stage": (3, 16, 0.0, 2.0, 8),
}


@pytest.mark.parametrize("point", DESIGN_POINTS.values(), ids=DESIGN_POINTS.keys())
def test_stages_follow_torchvisions_block_params_and_the_papers_rule(point):
    d, w_0, w_a, w_m, g = point
    params = block_params(d, w_0, w_a, w_m, g, 0.0)
    with torch.device("meta"):
        model = regnet(width=w_0, depth=d, regnet_wa=w_a, regnet_wm=w_m, regnet_group_width=g, image_size=28)
    built = built_stages(model)
    assert built == (params.widths, params.depths, params.group_widths)
    assert built == paper_stages(d, w_0, w_a, w_m, g)
    assert sum(built[1]) == d
    assert all(w % 8 == 0 and w % gw == 0 for w, gw in zip(built[0], built[2]))


def test_the_default_is_regnetx_200mf():
    with torch.device("meta"):
        model = ARCHS.get("regnet")(in_channels=3, num_classes=10, image_size=32, norm=BN)
    assert built_stages(model) == ([24, 56, 152, 368], [1, 1, 4, 7], [8, 8, 8, 8])
    assert model.stem[0].out_channels == STEM_WIDTH == 32


def test_torchvision_rounds_a_group_width_tie_up_where_the_authors_round_to_even():
    """RegNetX-400MF (d 22, w₀ 24, w_a 24.48, w_m 2.54, g 16): the last stage's width 392 is
    24.5 group widths; torchvision (and so this harness) makes it 400, pycls 384."""
    point = (22, 24, 24.48, 2.54, 16)
    assert paper_stages(*point)[0] == [32, 64, 160, 384]
    assert block_params(*point, 0.0).widths == [32, 64, 160, 400]


@pytest.mark.parametrize(
    ("design", "expected"),
    [
        (dict(width=24, depth=22, regnet_wa=24.48, regnet_wm=2.54, regnet_group_width=16),
         RegNet_X_400MF_Weights.IMAGENET1K_V1.meta["num_params"]),
        (dict(width=48, depth=16, regnet_wa=27.89, regnet_wm=2.09, regnet_group_width=8, regnet_se_ratio=0.25),
         RegNet_Y_400MF_Weights.IMAGENET1K_V1.meta["num_params"]),
    ],
    ids=["RegNetX-400MF", "RegNetY-400MF"],
)
def test_imagenet_sized_networks_have_torchvisions_parameter_counts(design, expected):
    """The stem's stride changes no parameter: at 3 channels and 1000 classes the network is
    torchvision's regnet_x_400mf / regnet_y_400mf (counts from their weights' metadata)."""
    with torch.device("meta"):
        model = ARCHS.get("regnet")(in_channels=3, num_classes=1000, image_size=224, norm=BN, **design)
    assert count(model) == expected


@pytest.mark.parametrize(("se_ratio", "millions"), [(0.0, 2.7), (0.25, 3.2)], ids=["RegNetX-200MF", "RegNetY-200MF"])
def test_the_200mf_models_have_the_authors_parameter_counts(se_ratio, millions):
    """pycls MODEL_ZOO.md: RegNetX-200MF 2.7 M parameters, RegNetY-200MF 3.2 M."""
    with torch.device("meta"):
        model = ARCHS.get("regnet")(in_channels=3, num_classes=1000, image_size=224, norm=BN, regnet_se_ratio=se_ratio)
    assert round(count(model) / 1e6, 1) == millions


@pytest.mark.parametrize(("size", "channels", "last"), [(8, 1, 1), (28, 1, 2), (32, 3, 2)])
def test_the_stem_keeps_small_images_at_full_resolution(size, channels, last):
    model = regnet(in_channels=channels, image_size=size, depth=13, width=24, regnet_wa=36.44)  # four stages
    seen = {}
    model.stem.register_forward_hook(lambda m, i, o: seen.update(stem=o.shape[-1]))
    model.trunk_output.register_forward_hook(lambda m, i, o: seen.update(last=o.shape[-1]))
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, channels, size, size)).shape == (2, 10)
    assert seen == {"stem": size, "last": last}
    assert model.stem[0].in_channels == channels and model.stem[0].stride == (1, 1)


@pytest.mark.parametrize(
    "norm", [BN, NormFactory.of("gn", norm_groups=8), NormFactory("none"), NormFactory.of("bn-ghost", norm_virtual_batch=2)],
    ids=["bn", "gn", "none", "bn-ghost"],
)
@pytest.mark.parametrize("se_ratio", [0.0, 0.25], ids=["X", "Y"])
def test_forward_and_backward_with_the_registrys_norms(norm, se_ratio):
    torch.manual_seed(0)
    model = regnet(norm, regnet_se_ratio=se_ratio, image_size=28)
    x = torch.randn(4, 1, 28, 28)
    loss = nn.functional.cross_entropy(model(x), torch.arange(4))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    norms = [m for m in model.modules() if is_norm_module(m)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    se_convs = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and ".se." in n]
    assert len(norms) == len(convs) - len(se_convs)  # one norm after every conv outside the SE
    assert bool(se_convs) == bool(se_ratio)
    if norm.name == "gn":
        assert all(isinstance(m, nn.GroupNorm) and m.num_groups == 8 for m in norms)
    if norm.name == "none":
        assert all(c.bias is not None for c in convs)
    else:
        assert all(c.bias is None for c in convs if c not in se_convs)


def test_refusals_are_config_errors():
    with pytest.raises(ConfigError, match="conv='ws'.*grouped 3×3 convs"):
        build_model(TrialConfig(dataset="synthetic", arch="regnet", conv="ws", width=8, depth=2), dataset_source("synthetic"))
    with pytest.raises(ConfigError, match=r"conv='centered' \(norm=mimic brings it\)"):
        build_model(TrialConfig(dataset="synthetic", arch="regnet", norm="mimic", width=8, depth=2),
                    dataset_source("synthetic"))
    with pytest.raises(ConfigError, match="positive multiple of 8; got width=12"):
        regnet(width=12)
    with pytest.raises(ConfigError, match="depth=0"):
        regnet(depth=0)
    with pytest.raises(ConfigError, match="8-pixel images .* 1×1 maps"):
        regnet(NormFactory("in"), depth=13, width=24, regnet_wa=36.44)
    with pytest.raises(ConfigError, match="regnet_wm must be"):
        TrialConfig(arch="regnet", regnet_wm=1.0)
    regnet(NormFactory("in"), image_size=28, depth=13, width=24, regnet_wa=36.44)  # 28 px ends at 2×2


def test_builder_defaults_are_the_config_defaults_and_options_enter_the_id():
    params = inspect.signature(ARCHS.get("regnet")).parameters
    for name in ARCHS.entry("regnet").option_names:
        assert params[name].default == DEFAULTS[name], name
    assert TrialConfig(arch="cnn", regnet_wa=20.0).trial_id == TrialConfig(arch="cnn").trial_id
    assert TrialConfig(arch="regnet", regnet_se_ratio=0.25).trial_id != TrialConfig(arch="regnet").trial_id
    preflight(TrialConfig(dataset="fashion-mnist", arch="regnet", norm="gn", batch_size=8))
    preflight(TrialConfig(dataset="cifar10", arch="regnet", regnet_se_ratio=0.25, batch_size=8))

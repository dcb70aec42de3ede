"""Activations: each entry against its paper's equation and an independent implementation,
every architecture with every activation that fits it, the models and trial ids of the
configs without one, and the errors.

- ReLU, GELU and SiLU against their definitions evaluated by SciPy (Φ: ``scipy.stats.norm``,
  σ: ``scipy.special.expit``).
- FReLU against the authors' layer (megvii-model/FunnelAct, ``resnet/frelu.py``,
  ``FReLU``: ``maximum(x, bn_frelu(conv_frelu(x)))``, ``conv_frelu`` a k×k depthwise
  ``Conv2d`` with bias, stride 1, padding k//2; ``bn_frelu`` a ``BatchNorm2d``, MegEngine's
  eps 1e-5 and momentum 0.9 on the running statistics), re-implemented here in NumPy from
  that file (MegEngine, the authors' framework, is not a dependency of this project).
- The normalizer-free gains γ = 1/sqrt(Var g(z)): ReLU's closed form (Brock et al. 2021),
  GELU's and SiLU's by SciPy's adaptive quadrature of their definitions, and the authors'
  sampled table (deepmind-research ``nfnets/base.py``, ``nonlinearities``, as copied by
  ``timm.models.nfnet._nonlin_gamma``).
- The configs without ``activation`` build the model the code before it built:
  ``tests/golden/activation-defaults.json``, written by ``tests/activation_reference.py``
  on commit a8b0524 (see that file).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import torch
from torch import nn
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import ConfigError, UnknownNameError
from bench.spec import DEFAULTS, TrialConfig, trial_from_assignments
from bench.trial import activation_factory, build_model, preflight
from bench.zoo.activations import FReLU, ActivationFactory, _quadrature_gain
from bench.zoo.archs.nfresnet import NFBlock
from bench.zoo.convs import RELU_GAIN
from bench.zoo.datasets import DatasetSource
from bench.zoo.registry import ACTIVATIONS, ARCHS, Entry

import activation_reference as reference  # beside this file: the reference's sizes, inputs and record

GOLDEN = json.loads((Path(__file__).parent / "golden" / "activation-defaults.json").read_text())
SOURCE = DatasetSource("probe", in_channels=3, image_size=8, num_classes=5, load=None, needs_files=False, train_size=64)
POINTWISE = ("relu", "gelu", "silu")
# Each architecture's own activation (the builder's keyword default) and its module type.
OWN = {"vit": nn.GELU}
KINDS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "frelu": FReLU}
# Combinations refused, by design, with the words of the refusal.
REFUSED = {("mlp", "frelu"): "needs conv features", ("vit", "frelu"): "needs conv features",
           ("nf-resnet", "frelu"): "needs a pointwise activation", ("regnet", "frelu"): "only a pointwise activation"}


def _x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape) * 2.0


# -- the registry ------------------------------------------------------------------------


def test_entries_declare_their_papers_and_defaults():
    assert ACTIVATIONS.names() == ["relu", "gelu", "silu", "frelu"]
    assert all(e.paper for e in ACTIVATIONS.entries())
    assert "arXiv:2007.11824" in ACTIVATIONS.entry("frelu").paper
    # a default never changes (trial ids leave defaults out)
    assert DEFAULTS["activation"] is None and DEFAULTS["frelu_kernel"] == 3
    assert [ACTIVATIONS.entry(n).tags for n in ACTIVATIONS.names()] == [{"pointwise"}] * 3 + [{"spatial"}]


def test_bench_zoo_lists_the_activations_with_paper_and_options():
    result = CliRunner().invoke(app, ["zoo", "activations"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    for words in ("relu", "gelu", "silu", "frelu", "Ma, Zhang & Sun 2020", "Hendrycks & Gimpel 2016",
                  "frelu_kernel=3 (≥ 1): FReLU: side k"):
        assert words in text


# -- pointwise entries: the papers' equations ---------------------------------------------


@pytest.mark.parametrize(("name", "definition"), [
    ("relu", lambda x: np.maximum(x, 0.0)),
    ("gelu", lambda x: x * scipy.stats.norm.cdf(x)),
    ("silu", lambda x: x * scipy.special.expit(x)),
])
def test_pointwise_entries_follow_their_definitions(name, definition):
    x = _x(3, 4, 5, 5)
    for dims, shape in ((2, x.shape), (1, (12, 25))):
        layer = ActivationFactory(name)(4, dims=dims)
        out = layer(torch.from_numpy(x.reshape(shape)).clone())
        np.testing.assert_allclose(out.numpy(), definition(x).reshape(shape), rtol=1e-12, atol=1e-12)


# -- FReLU against the authors' layer ------------------------------------------------------


def authors_frelu_train(x, weight, bias, gamma, beta, eps=1e-5):
    """megvii-model/FunnelAct resnet/frelu.py, FReLU.forward in training mode, in NumPy:
    x1 = conv_frelu(x) (depthwise k×k, stride 1, padding k//2, with bias), x1 =
    bn_frelu(x1) (batch mean and biased variance over N, H, W), maximum(x, x1). Returns
    the output and the batch mean of x1 (which the running mean follows)."""
    n, c, h, w = x.shape
    k = weight.shape[-1]
    p = k // 2
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    x1 = sum(weight[:, 0, u, v][None, :, None, None] * padded[:, :, u:u + h, v:v + w]
             for u in range(k) for v in range(k)) + bias[None, :, None, None]
    mean, var = x1.mean(axis=(0, 2, 3)), x1.var(axis=(0, 2, 3))
    x1 = gamma[None, :, None, None] * (x1 - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + eps)
    return np.maximum(x, x1 + beta[None, :, None, None]), mean


def authors_frelu_eval(x, weight, bias, gamma, beta, running_mean, running_var, eps=1e-5):
    """The same layer in eval mode: bn_frelu with its running statistics."""
    n, c, h, w = x.shape
    k = weight.shape[-1]
    p = k // 2
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    x1 = sum(weight[:, 0, u, v][None, :, None, None] * padded[:, :, u:u + h, v:v + w]
             for u in range(k) for v in range(k)) + bias[None, :, None, None]
    shape = (1, c, 1, 1)
    x1 = gamma.reshape(shape) * (x1 - running_mean.reshape(shape)) / np.sqrt(running_var.reshape(shape) + eps)
    return np.maximum(x, x1 + beta.reshape(shape))


@pytest.mark.parametrize("kernel", [3, 5, 1])
def test_frelu_matches_the_authors_layer(kernel):
    c = 4
    layer = ActivationFactory("frelu", {"frelu_kernel": kernel})(c).double()
    rng = np.random.default_rng(kernel)
    with torch.no_grad():  # away from the init, so every term shows
        layer.conv.weight.copy_(torch.from_numpy(rng.normal(size=(c, 1, kernel, kernel))))
        layer.conv.bias.copy_(torch.from_numpy(rng.normal(size=c)))
        layer.bn.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, size=c)))
        layer.bn.bias.copy_(torch.from_numpy(rng.normal(size=c)))
    params = [p.detach().numpy().copy() for p in (layer.conv.weight, layer.conv.bias, layer.bn.weight, layer.bn.bias)]
    x = _x(3, c, 6, 7, seed=kernel)
    out = layer(torch.from_numpy(x))
    expected, batch_mean = authors_frelu_train(x, *params)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    assert 0 < (out.detach().numpy() == x).mean() < 1  # both branches of the max are taken
    # the running mean moves by MegEngine's momentum 0.9 (torch's 0.1), from 0
    np.testing.assert_allclose(layer.bn.running_mean.numpy(), 0.1 * batch_mean, rtol=1e-10)
    layer.eval()
    x2 = _x(2, c, 5, 5, seed=10 + kernel)
    stats = (layer.bn.running_mean.numpy(), layer.bn.running_var.numpy())
    np.testing.assert_allclose(layer(torch.from_numpy(x2)).detach().numpy(), authors_frelu_eval(x2, *params, *stats),
                               rtol=1e-10, atol=1e-10)


def test_frelu_has_the_authors_parameters():
    """A depthwise k×k conv with bias and a BatchNorm: C·k² + C + 2C parameters (resnet/frelu.py)."""
    layer = ActivationFactory("frelu")(16)
    assert layer.conv.groups == 16 and layer.conv.kernel_size == (3, 3) and layer.conv.padding == (1, 1)
    assert layer.conv.bias is not None and isinstance(layer.bn, nn.BatchNorm2d)
    assert (layer.bn.eps, layer.bn.momentum) == (1e-5, 0.1)
    assert sum(p.numel() for p in layer.parameters()) == 16 * 9 + 16 + 2 * 16


# -- gains for normalizer-free networks ------------------------------------------------------


def _gain_by_scipy(g) -> float:
    mean = scipy.integrate.quad(lambda z: g(z) * scipy.stats.norm.pdf(z), -np.inf, np.inf, epsabs=1e-13)[0]
    second = scipy.integrate.quad(lambda z: g(z) ** 2 * scipy.stats.norm.pdf(z), -np.inf, np.inf, epsabs=1e-13)[0]
    return 1 / math.sqrt(second - mean**2)


def test_gains_are_the_closed_form_and_the_quadrature_of_the_definitions():
    from timm.models.nfnet import _nonlin_gamma as authors  # deepmind-research nfnets/base.py's table

    assert ActivationFactory("relu").gain() == RELU_GAIN == pytest.approx(math.sqrt(2 / (1 - 1 / math.pi)))
    assert _quadrature_gain("relu", ()) == pytest.approx(RELU_GAIN, rel=1e-7)  # the quadrature, on the kink
    silu = lambda z: z * scipy.special.expit(z)  # noqa: E731
    gelu = lambda z: z * scipy.stats.norm.cdf(z)  # noqa: E731
    for name, g in (("gelu", gelu), ("silu", silu)):
        gain = ActivationFactory(name).gain()
        assert gain == pytest.approx(_gain_by_scipy(g), rel=1e-7), name
        # the authors' sampled estimates (GELU's of its tanh approximation): within 0.1%
        assert gain == pytest.approx(authors[name], rel=1e-3), name
    assert _gain_by_scipy(lambda z: max(z, 0.0)) == pytest.approx(authors["relu"], rel=1e-3)
    with pytest.raises(ConfigError, match="not pointwise"):
        ActivationFactory("frelu").gain()


@pytest.mark.parametrize("name", ["gelu", "silu"])
def test_nf_resnet_scales_its_convs_by_the_activations_gain_and_keeps_signal_propagation(name):
    """As tests/test_nfresnet.py does for ReLU: with the activation's γ on the convs it
    feeds and on the final activation, the residual stream entering each block has the
    variance β² the bookkeeping predicts (α = 1, N(0, 1) input; 25% tolerance as there)."""
    activation = ActivationFactory(name)
    torch.manual_seed(0)
    model = ARCHS.get("nf-resnet")(in_channels=3, num_classes=10, image_size=32, norm=_none(), activation=activation,
                                   depth=14, nf_alpha=1.0).double()
    gain = activation.gain()
    assert model.gain == gain and not any(isinstance(m, nn.ReLU) for m in model.modules())
    for block in model.stages:
        assert block.conv1.scale == pytest.approx(gain / math.sqrt(block.conv1.in_channels * 9))
    measured = []
    for block in model.stages:
        block.register_forward_pre_hook(lambda b, args: measured.append((args[0].var(dim=(0, 2, 3)).mean().item(),
                                                                          b.beta**2)))
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32, dtype=torch.float64))
    assert len(measured) == 6 and all(isinstance(b, NFBlock) for b in model.stages)
    for var, beta2 in measured:
        assert var == pytest.approx(beta2, rel=0.25)


def _none():
    from bench.zoo.norms import NormFactory

    return NormFactory("none")


# -- every architecture with every activation that fits it ----------------------------------


SIZES = {**reference.SIZES, "regnet": (8, 4), "repvgg": (8, 22)}


def _config(arch: str, activation: str | None, **extra) -> TrialConfig:
    width, depth = SIZES.get(arch, (None, None))
    norm = {"nf-resnet": "none", "vit": "ln"}.get(arch, "bn")
    return TrialConfig(dataset="synthetic", arch=arch, width=width, depth=depth, norm=norm, activation=activation,
                       batch_size=4, **extra)


MATRIX = [(arch, name) for arch in ARCHS.names() for name in ACTIVATIONS.names()]


@pytest.mark.parametrize(("arch", "name"), MATRIX, ids=[f"{a}-{n}" for a, n in MATRIX])
def test_every_architecture_takes_every_activation_that_fits_it(arch, name):
    config = _config(arch, name)
    if (arch, name) in REFUSED:
        with pytest.raises(ConfigError, match=REFUSED[arch, name]):
            preflight(config)
        return
    torch.manual_seed(0)
    model = build_model(config, SOURCE)
    kinds = [type(m) for m in model.modules()]
    assert KINDS[name] in kinds, f"{arch} built no {name}"
    own = OWN.get(arch, nn.ReLU)
    if own is not KINDS[name]:
        assert own not in kinds, f"{arch} kept a {own.__name__} with activation={name}"
    model.train()
    loss = nn.functional.cross_entropy(model(reference.inputs()), torch.arange(4) % SOURCE.num_classes)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert math.isfinite(loss.item()) and all(g is not None and torch.isfinite(g).all() for g in grads)
    if name == "frelu":  # the funnel is trained
        funnel = next(m for m in model.modules() if isinstance(m, FReLU))
        assert funnel.conv.weight.grad.abs().sum() > 0


# -- the configs without an activation build what they built before ------------------------


@pytest.mark.parametrize("record", GOLDEN, ids=[json.dumps(r["config"], sort_keys=True) for r in GOLDEN])
def test_configs_without_an_activation_build_the_model_they_built_before(record):
    config = TrialConfig(**record["config"])
    assert config.activation is None
    now = reference.record(config)
    assert (now["params"], now["state"]) == (record["params"], record["state"])
    for mode in ("train", "eval"):  # bitwise equal when written; a tolerance for other CPUs' kernels
        torch.testing.assert_close(torch.tensor(now[mode]), torch.tensor(record[mode]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("arch", "own"), [("cnn", "relu"), ("resnet", "relu"), ("vgg", "relu"), ("mlp", "relu"),
                                           ("nf-resnet", "relu"), ("vit", "gelu")])
def test_choosing_an_architectures_own_activation_builds_the_same_model(arch, own):
    """Under another id (spelled out, as width: 16 for the cnn is), the same model."""
    unset, chosen = _config(arch, None), _config(arch, own)
    assert unset.trial_id != chosen.trial_id
    built = []
    for config in (unset, chosen):
        built.append(reference.record(config))
    assert built[0] | {"config": None} == built[1] | {"config": None}


def test_trial_ids_leave_an_unset_activation_out():
    assert TrialConfig().trial_id == "44136fa355b3678a"  # pinned by tests/test_spec.py too
    assert TrialConfig(activation=None).trial_id == TrialConfig().trial_id
    assert "activation" not in TrialConfig().canonical()
    frelu = TrialConfig(activation="frelu")
    assert frelu.canonical() == {"activation": "frelu"} and "frelu_kernel" in frelu.reads()
    assert TrialConfig(activation="frelu", frelu_kernel=5).trial_id != frelu.trial_id
    # frelu_kernel is read only with frelu: it changes nothing else
    assert "frelu_kernel" not in TrialConfig(activation="relu").reads() | TrialConfig().reads()
    assert TrialConfig(activation="relu", frelu_kernel=5).trial_id == TrialConfig(activation="relu").trial_id


# -- mistakes: one paragraph before anything runs --------------------------------------------


def test_errors_are_one_paragraph_before_anything_runs():
    with pytest.raises(UnknownNameError, match="Unknown activation 'swish'. Valid activation names: frelu, gelu, relu"):
        TrialConfig(activation="swish")
    with pytest.raises(ConfigError, match=r"`frelu_kernel` does nothing for activation=null: it is read only with "
                                          "activation=frelu"):
        trial_from_assignments({"frelu_kernel": 5})
    with pytest.raises(ConfigError, match="frelu_kernel=4: FReLU's funnel window is centred on each pixel"):
        preflight(_config("cnn", "frelu", frelu_kernel=4))
    with pytest.raises(ConfigError, match=r"activation=frelu needs conv features: .* vectors of 6 features .* "
                                          "Use frelu with a convolutional architecture"):
        preflight(_config("mlp", "frelu"))
    with pytest.raises(ConfigError, match=r"nf-resnet got activation='frelu'.*Choose a pointwise activation"):
        preflight(_config("nf-resnet", "frelu"))
    result = CliRunner().invoke(app, ["train", "--set", "arch=vit", "--set", "activation=frelu", "--set",
                                      "dataset=synthetic", "--no-save"])
    assert result.exit_code == 1 and "needs conv features" in result.output and "Traceback" not in result.output


def test_an_architecture_without_an_activation_keyword_refuses_a_chosen_one(monkeypatch):
    """A plugin's architecture written without the factory builds its own activations."""

    def plain(*, in_channels, num_classes, image_size, norm, conv, width=4, depth=1):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))

    monkeypatch.setitem(ARCHS._entries, "plain", Entry("arch", "plain", "test", module=__name__, attr="plain",
                                                       _factory=plain))
    assert activation_factory(TrialConfig(arch="plain")) is None
    build_model(TrialConfig(arch="plain"), SOURCE)
    with pytest.raises(ConfigError, match="arch=plain builds its own activations: its builder takes no activation"):
        build_model(TrialConfig(arch="plain", activation="silu"), SOURCE)


def test_a_fused_repvgg_keeps_its_activation():
    """RepVGG folds the branches before the activation, so a fused FReLU network (its
    funnels copied with their weights) computes what the trained one does in eval mode."""
    from bench.zoo.archs.repvgg import deploy

    torch.manual_seed(0)
    model = build_model(_config("repvgg", "frelu"), SOURCE).double()
    x = reference.inputs().double()
    model(x)  # the BatchNorms, the funnels' among them, leave their initial statistics
    model.eval()
    fused = deploy(model)
    assert sum(isinstance(m, FReLU) for m in fused.modules()) == sum(isinstance(m, FReLU) for m in model.modules()) > 0
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-10, atol=1e-10)

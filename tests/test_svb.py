"""Singular Value Bounding against the authors' code and the paper's Algorithm 1.

The references below are the authors' Torch code (kui-jia/svb), re-implemented in NumPy:
``cnnTrain.lua`` ``cnnTrain:fcConvWeightReguViaSVB`` (the SVD of each weight as
nOutputPlane × nInputPlane·kH·kW, transposed; singular values above svBFactor = 1+ε set
to it, those below 1/svBFactor to 1/svBFactor), ``BNScalingBounding`` with bType ``BBN``
(Bounded BatchNorm, Algorithm 2) and ``Utils/configUtils.lua`` ``initFcConvLayer`` with
``orthogonal`` (the SVD of a Gaussian fan-in × fan-out matrix, every singular value set
to 1). Algorithm 1's properties are checked on their own: singular values inside the band
after a bound, singular vectors kept, the bound every T-th step, ε = 0 the orthogonal
projection.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import ConfigError
from bench.spec import TrialConfig, trial_from_assignments
from bench.trial import build_model, build_optimizer
from bench.trial.build import preflight
from bench.zoo.datasets import DatasetSource
from bench.zoo.optimizers import make
from bench.zoo.optimizers.svb import Svb, bound_batch_norm, bound_singular_values

SOURCE = DatasetSource("probe", in_channels=1, image_size=8, num_classes=10, load=None, needs_files=False, train_size=64)
SMALL = dict(dataset="synthetic", arch="cnn", width=8, depth=2, batch_size=8, epochs=2)


def authors_svb(weight: np.ndarray, factor: float) -> np.ndarray:
    """fcConvWeightReguViaSVB for one conv (or, with 2-D input, linear) weight."""
    matrix = weight.reshape(weight.shape[0], -1).T  # nInputPlane·kH·kW × nOutputPlane, as :t()
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)  # torch.svd's reduced form
    s = s.copy()
    for idx in range(len(s)):
        if s[idx] > factor:
            s[idx] = factor
        elif s[idx] < 1 / factor:
            s[idx] = 1 / factor
    return (u @ np.diag(s) @ vt).T.reshape(weight.shape)


def authors_bbn(gamma: np.ndarray, running_var: np.ndarray, epsilon: float, factor: float) -> np.ndarray:
    """BNScalingBounding(vec, runningVar, epsilon, sFactor, 'BBN')."""
    vec = gamma.copy()
    running_std = np.sqrt(running_var + epsilon)
    m = np.mean(vec / running_std)
    for idx in range(len(vec)):
        if vec[idx] / (running_std[idx] * m) > factor:
            vec[idx] = running_std[idx] * m * factor
        elif vec[idx] / (running_std[idx] * m) < 1 / factor:
            vec[idx] = running_std[idx] * m / factor
    return vec


def authors_orthogonal(gaussian: np.ndarray, n_out: int) -> np.ndarray:
    """initFcConvLayer 'orthogonal' from the Gaussian randn(kH·kW·nFeaIn, nFeaOut) it draws,
    as the weight (nFeaOut, kH·kW·nFeaIn)."""
    fan_in = gaussian.shape[0]
    u, _, vt = np.linalg.svd(gaussian, full_matrices=True)  # svd(..., 'A')
    s = np.zeros((fan_in, n_out))
    s[: min(fan_in, n_out), : min(fan_in, n_out)] = np.eye(min(fan_in, n_out))
    return (u @ s @ vt).T


def singular_values(weight: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(weight.detach().reshape(weight.shape[0], -1).double())


@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (40, 2, 3, 3), (10, 16)], ids=["conv", "wide-out conv", "linear"])
@pytest.mark.parametrize("eps", [0.0, 0.05, 0.5])
def test_the_bound_equals_the_authors_code(shape, eps):
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(shape, generator=g, dtype=torch.float64) * torch.linspace(0.05, 3.0, shape[0]).double().view(
        -1, *[1] * (len(shape) - 1))  # singular values well outside the band on both sides
    expected = authors_svb(weight.numpy(), 1 + eps)
    bound_singular_values(weight, eps)
    np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_the_bound_keeps_the_singular_vectors_and_the_values_inside_the_band():
    """Algorithm 1: W = U Σ Vᵀ → U clip(Σ) Vᵀ, so the clipped values are the new singular
    values, the vectors are unchanged, and a value already in the band stays as it was."""
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(8, 4, 3, 3, generator=g, dtype=torch.float64) * 0.2  # singular values 0.6 to 1.8
    u, s, vh = torch.linalg.svd(weight.reshape(8, -1), full_matrices=False)
    bound_singular_values(weight, 0.3)
    u2, s2, vh2 = torch.linalg.svd(weight.reshape(8, -1), full_matrices=False)
    expected = s.clamp(1 / 1.3, 1.3)
    assert torch.allclose(s2, expected.sort(descending=True).values)
    assert ((s2 >= 1 / 1.3 - 1e-12) & (s2 <= 1.3 + 1e-12)).all()
    assert torch.allclose(weight.reshape(8, -1), (u * expected) @ vh)  # the same U and V
    inside = (s > 1 / 1.3) & (s < 1.3)
    assert inside.any() and torch.allclose(s2[inside], s[inside])


def test_at_eps_zero_the_bound_is_the_orthogonal_projection_and_the_authors_init():
    """ε = 0 projects onto the (semi-)orthogonal matrices, W ← U Vᵀ; from the same Gaussian,
    that is exactly the authors' orthogonal initialization."""
    rng = np.random.default_rng(3)
    for fan_in, n_out in ((27, 16), (16, 27), (12, 12)):
        gaussian = rng.standard_normal((fan_in, n_out))
        weight = torch.tensor(gaussian.T.copy())  # (n_out, fan_in)
        bound_singular_values(weight, 0.0)
        np.testing.assert_allclose(weight.numpy(), authors_orthogonal(gaussian, n_out), atol=1e-12)
        small = min(fan_in, n_out)
        gram = weight @ weight.T if n_out <= fan_in else weight.T @ weight
        assert torch.allclose(gram, torch.eye(small, dtype=gram.dtype), atol=1e-12)


def test_bounded_batch_norm_equals_the_authors_code():
    bn = nn.BatchNorm2d(6, eps=1e-5).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.1, 0.8, 1.0, 1.3, 4.0, -0.5]))
        bn.running_var.copy_(torch.tensor([0.5, 1.0, 2.0, 0.2, 1.5, 1.0]))
    expected = authors_bbn(bn.weight.detach().numpy(), bn.running_var.numpy(), 1e-5, 2.0)
    std = torch.sqrt(bn.running_var + 1e-5)
    mean_gain = (bn.weight.detach() / std).mean()
    bound_batch_norm(bn, 1.0)
    np.testing.assert_allclose(bn.weight.detach().numpy(), expected, rtol=1e-12)
    ratio = bn.weight.detach() / std / mean_gain  # each gain within a factor 2 of the mean before the bound
    assert (ratio > 1 / 2 - 1e-9).all() and (ratio < 2 + 1e-9).all()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _scale(model: nn.Module, factor: float) -> None:
    with torch.no_grad():
        for m in (model[0], model[4]):
            m.weight.mul_(factor)


def test_the_bound_runs_after_every_period_th_step_and_resumes_with_the_optimizer():
    """With lr = 0 only the bound moves the weights: steps 3 and 6 bound, the others do
    not; a fresh optimizer loading the state dict continues the count."""
    model = _model()
    opt = make("sgd", model, lr=0.0, options={"momentum": 0.0})
    svb = Svb(opt, model, eps=0.1, period=3)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    _scale(model, 10.0)
    history = []
    for _ in range(6):
        before = model[0].weight.detach().clone()
        opt.step()
        history.append(not torch.equal(before, model[0].weight))
        if len(history) == 3:
            assert (singular_values(model[0].weight) <= 1.1 + 1e-6).all()
            _scale(model, 10.0)
    assert history == [False, False, True, False, False, True]
    state = opt.state_dict()
    assert state["svb"] == {"steps": 6}
    again = make("sgd", model, lr=0.0, options={"momentum": 0.0})
    resumed = Svb(again, model, eps=0.1, period=3)
    again.load_state_dict(state)
    assert resumed.steps == 6 and svb.steps == 6


def _train(config: TrialConfig, steps: int, check=None) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(config, SOURCE)
    opt = build_optimizer(config, model, steps=8)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 8, 8, generator=g), torch.arange(8)
    for step in range(1, steps + 1):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if check is not None:
            check(step, model)
    return model


def test_a_trial_starts_orthogonal_and_bounds_with_its_optimizer():
    config = TrialConfig(**SMALL, svb=True, svb_eps=0.2, svb_period=0.25)  # 8 steps an epoch: every 2 steps
    model = build_model(config, SOURCE)
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weights) == 3
    for w in weights:  # Algorithm 1's start: every singular value 1
        assert torch.allclose(singular_values(w), torch.ones(1, dtype=torch.float64), atol=1e-5)

    def bounded(step: int, model: nn.Module) -> None:
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                s = singular_values(m.weight)
                inside = bool(((s >= 1 / 1.2 - 1e-5) & (s <= 1.2 + 1e-5)).all())
                assert inside or step % 2, (step, s)

    _train(config, 4, bounded)
    bbn = _train(config.replace(svb_bbn_eps=0.0), 2)[1]  # ε̃ = 0: every gain γ_i/σ_i made equal
    gains = bbn.weight.detach() / torch.sqrt(bbn.running_var + bbn.eps)
    assert torch.allclose(gains, gains.mean().expand(8), rtol=1e-5)
    assert not torch.allclose(bbn.weight, _train(config, 2)[1].weight)
    plain = build_model(TrialConfig(**SMALL, svb=True, svb_init=False), SOURCE)
    assert not torch.allclose(singular_values(plain[0].weight), torch.ones(1, dtype=torch.float64), atol=1e-2)


def test_mistakes_are_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="svb_eps must be a number ≥ 0"):
        TrialConfig(svb=True, svb_eps=-0.1)
    with pytest.raises(ConfigError, match="would never run"):
        TrialConfig(svb=True, svb_period=6, epochs=5)
    with pytest.raises(ConfigError, match="a trial takes one of them"):
        TrialConfig(svb=True, weight_decay_mode="orthonormal")
    with pytest.raises(ConfigError, match="train_only_norm freezes"):
        TrialConfig(svb=True, train_only_norm=True)
    with pytest.raises(ConfigError, match="does nothing for svb=False"):
        trial_from_assignments({"svb_eps": 0.1})
    with pytest.raises(ConfigError, match="WSConv2d, whose weight is computed"):
        preflight(TrialConfig(**SMALL, svb=True, conv="ws"))
    with pytest.raises(ConfigError, match="ScaledStdConv2d"):
        preflight(TrialConfig(**{**SMALL, "depth": 8, "arch": "nf-resnet"}, norm="none", svb=True))
    with pytest.raises(ConfigError, match="no trained BatchNorm layer"):
        preflight(TrialConfig(**SMALL, svb=True, svb_bbn_eps=1.0, norm="gn", norm_groups=2))


def test_ids_change_only_with_svb_on():
    base = TrialConfig()
    assert TrialConfig(svb_eps=0.1, svb_period=2.0, svb_init=False).trial_id == base.trial_id
    on = TrialConfig(svb=True)
    assert on.trial_id != base.trial_id and on.canonical() == {"svb": True}
    assert TrialConfig(svb=True, svb_eps=0.05).trial_id != on.trial_id
    assert TrialConfig(svb=True, svb_bbn_eps=1.0).trial_id != on.trial_id


def test_bench_zoo_lists_the_trial_level_techniques_with_their_papers():
    runner = CliRunner()
    listing = runner.invoke(app, ["zoo"])
    assert listing.exit_code == 0, listing.output
    assert "trial (" in listing.output and "svb" in listing.output
    table = runner.invoke(app, ["zoo", "trial"], env={"COLUMNS": "400"})
    assert table.exit_code == 0, table.output
    for text in ("svb_eps=0.5", "arXiv:1611.06013", "eps-shifted", "arXiv:1911.05920", "error_modulation",
                 "arXiv:1703.01827", "lawn_free_epochs"):
        assert text in table.output, text

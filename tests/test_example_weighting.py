"""BatchNorm with inference example weighting against the paper's equations (Summers &
Dinneen 2020, "Inference Example Weighting"): μ_i = α E_i[x] + (1 − α) μ,
σ²_i = α E_i[x²] + (1 − α)(σ² + μ²) − μ_i², x̂ = (x − μ_i)/√(σ²_i + ε), with μ, σ² the
running statistics; training is BatchNorm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.spec import DEFAULTS, TrialConfig
from bench.zoo.norms import NORMS, NormFactory

C, EPS = 4, 1e-5


def _trained_pair(alpha, batches=3, n=6, dims=2):
    """The layer and torch's BatchNorm after the same training batches (same γ, β)."""
    torch.manual_seed(0)
    layer = NormFactory.of("bn-example-weighted", example_weight=alpha)(C, dims=dims).double()
    bn = (torch.nn.BatchNorm2d(C) if dims == 2 else torch.nn.BatchNorm1d(C)).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
        bn.weight.copy_(layer.weight)
        bn.bias.copy_(layer.bias)
    shape = (n, C, 5, 5) if dims == 2 else (n, C)
    for _ in range(batches):
        x = torch.randn(shape, dtype=torch.float64) * 2 + 0.7
        torch.testing.assert_close(layer(x), bn(x))  # training is BatchNorm
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.running_var, bn.running_var)
    return layer.eval(), bn.eval()


def paper(x, layer, alpha):
    """The paper's inference statistics, by hand, for (N, C, H, W) or (N, C)."""
    own = tuple(range(2, x.dim()))
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mu, var = layer.running_mean.view(shape), layer.running_var.view(shape)
    ex = x.mean(dim=own, keepdim=True) if own else x
    ex2 = (x * x).mean(dim=own, keepdim=True) if own else x * x
    mean_i = alpha * ex + (1 - alpha) * mu
    var_i = alpha * ex2 + (1 - alpha) * (var + mu * mu) - mean_i * mean_i
    return layer.weight.view(shape) * (x - mean_i) / torch.sqrt(var_i + EPS) + layer.bias.view(shape)


@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.9])
@pytest.mark.parametrize("dims", [2, 1])
def test_inference_follows_the_papers_equation(alpha, dims):
    layer, _ = _trained_pair(alpha, dims=dims)
    x = torch.randn((5, C, 5, 5) if dims == 2 else (5, C), dtype=torch.float64) * 3 - 1
    torch.testing.assert_close(layer(x), paper(x, layer, alpha))
    # each example on its own gives the same output: no batch dependence at inference
    torch.testing.assert_close(torch.cat([layer(x[i : i + 1]) for i in range(5)]), layer(x))


def test_alpha_zero_is_batchnorm_and_alpha_one_uses_the_examples_own_statistics():
    layer, bn = _trained_pair(0.0)
    x = torch.randn(5, C, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), bn(x))
    layer.alpha = 1.0
    w, b = layer.weight.view(1, -1, 1, 1), layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), w * F.instance_norm(x, eps=EPS) + b)


def test_unset_alpha_is_one_over_the_training_batch_and_survives_a_state_dict():
    layer, _ = _trained_pair(None, n=8)
    assert layer.example_weight() == pytest.approx(1 / 8)
    x = torch.randn(3, C, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), paper(x, layer, 1 / 8))
    copy = NormFactory("bn-example-weighted")(C).double()
    copy.load_state_dict(layer.state_dict())
    assert copy.eval().example_weight() == pytest.approx(1 / 8)
    fresh = NormFactory("bn-example-weighted")(C).eval()  # never trained: BatchNorm's inference
    assert fresh.example_weight() == 0.0


def test_the_declaration_and_its_default():
    entry = NORMS.entry("bn-example-weighted")
    assert entry.option_names == ("example_weight", "norm_eps", "norm_momentum", "norm_affine")
    assert DEFAULTS["example_weight"] is None and "1906.03548" in entry.paper and "batch" in entry.tags
    with pytest.raises(Exception, match="example_weight must be"):
        TrialConfig(norm="bn-example-weighted", example_weight=1.5)


def test_trains_through_the_trial_loop_and_changes_only_inference():
    from bench.trial import run_trial

    base = dict(dataset="synthetic", arch="cnn", width=8, depth=2, epochs=1, batch_size=16, lr_scaling="none", lr=0.05)
    bn = run_trial(TrialConfig(**base, norm="bn"))
    weighted = run_trial(TrialConfig(**base, norm="bn-example-weighted", example_weight=0.5))
    assert bn.status == weighted.status == "completed", weighted.error
    assert weighted.epochs[0]["train_loss"] == pytest.approx(bn.epochs[0]["train_loss"], rel=1e-6)
    assert weighted.epochs[0]["val_loss"] != pytest.approx(bn.epochs[0]["val_loss"], rel=1e-6)

"""Filter Response Normalization + TLU against the paper's equations (Singh & Krishnan
2020, arXiv:1911.09737, Algorithm 1) and against timm's FilterResponseNormTlu2d."""

from __future__ import annotations

import pytest
import torch
from timm.layers import FilterResponseNormTlu2d

from bench.spec import TrialConfig
from bench.trial import build_model
from bench.zoo.datasets import dataset_source
from bench.zoo.norms import NormFactory
from bench.zoo.norms.frn import LEARNED_EPS_INIT, FilterResponseNorm


def _randomized(layer: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


def test_frn_tlu_is_the_papers_algorithm():
    x = torch.randn(4, 6, 5, 7, dtype=torch.float64)
    layer = _randomized(FilterResponseNorm(6, eps=1e-6).double())
    gamma, beta, tau = (t.view(1, -1, 1, 1) for t in (layer.weight, layer.bias, layer.tau))
    nu2 = (x ** 2).mean(dim=(2, 3), keepdim=True)  # Algorithm 1: nu2 = reduce_mean(square(x), axis=[H, W])
    expected = torch.maximum(gamma * (x / torch.sqrt(nu2 + 1e-6)) + beta, tau)
    torch.testing.assert_close(layer(x), expected)


def test_frn_matches_timm_with_fixed_eps():
    x = torch.randn(3, 8, 6, 6)
    ours = _randomized(FilterResponseNorm(8, eps=1e-5))
    theirs = FilterResponseNormTlu2d(8, apply_act=True, eps=1e-5)
    theirs.load_state_dict({"weight": ours.weight, "bias": ours.bias, "tau": ours.tau})
    torch.testing.assert_close(ours(x), theirs(x))
    plain = FilterResponseNorm(8, eps=1e-5, tlu=False)
    timm_plain = FilterResponseNormTlu2d(8, apply_act=False, eps=1e-5)
    torch.testing.assert_close(plain(x), timm_plain(x))


def test_frn_uses_no_batch_statistics_and_no_mean():
    """Each sample is normalized on its own (no batch dependence), and a constant shift of
    the input is not removed (no mean subtraction)."""
    layer = FilterResponseNorm(4, tlu=False)
    x = torch.randn(5, 4, 3, 3)
    torch.testing.assert_close(layer(x)[2:3], layer(x[2:3]))
    shifted = layer(x + 3.0)
    assert not torch.allclose(shifted, layer(x))


def test_learned_eps_is_eps_plus_the_absolute_value_of_a_parameter():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    layer = FilterResponseNorm(3, eps=1e-6, learned_eps=True, tlu=False).double()
    assert layer.eps_l.item() == pytest.approx(LEARNED_EPS_INIT)
    with torch.no_grad():
        layer.eps_l.fill_(-0.5)  # |ε_l| is what counts
    nu2 = (x ** 2).mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(layer(x), x / torch.sqrt(nu2 + 1e-6 + 0.5))
    layer(x).sum().backward()
    assert layer.eps_l.grad is not None and layer.eps_l.grad.abs().item() > 0


def test_frn_on_vector_features_normalizes_each_value_by_itself():
    """For (N, C) features ν² = x² (the paper's 1×1 case): with ε ≪ x², x̂ ≈ sign(x)."""
    v = torch.tensor([[2.0, -3.0]])
    out = FilterResponseNorm(2, eps=1e-12, tlu=False)(v)
    torch.testing.assert_close(out, torch.tensor([[1.0, -1.0]]))


def test_frn_options_and_their_defaults_are_pinned():
    """The defaults are the paper's (ε = 1e-6, fixed; TLU on) and never change: trial ids
    leave defaults out."""
    from bench.spec import DEFAULTS
    from bench.zoo.registry import NORMS

    assert NORMS.entry("frn").option_names == ("frn_eps", "frn_learned_eps", "frn_tlu")
    assert {k: DEFAULTS[k] for k in ("frn_eps", "frn_learned_eps", "frn_tlu")} == {
        "frn_eps": 1e-6, "frn_learned_eps": False, "frn_tlu": True,
    }


def test_frn_is_a_registered_norm_that_trains_in_any_architecture():
    source = dataset_source("synthetic")
    layer = NormFactory.of("frn", frn_eps=1e-4, frn_tlu=False)(8)
    assert isinstance(layer, FilterResponseNorm) and layer.eps == 1e-4 and layer.tau is None
    for arch in ("cnn", "mlp", "resnet"):
        model = build_model(TrialConfig(arch=arch, norm="frn", dataset="synthetic", width=8), source)
        out = model(torch.randn(4, 1, 8, 8))
        assert out.shape == (4, 10) and torch.isfinite(out).all()
    assert TrialConfig(norm="frn", frn_eps=1e-4).trial_id != TrialConfig(norm="frn").trial_id
    assert TrialConfig(norm="bn", frn_eps=1e-4).trial_id == TrialConfig(norm="bn").trial_id

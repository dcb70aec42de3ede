"""The orthonormal regularizer, its initialization and backward error modulation against
Xie, Xiong & Pu 2017 (arXiv:1703.01827).

The authors published no code, so each part is pinned to the paper: the decay gradient to
autograd of Eq. 3, (λ/2) Σ_l ‖W_lᵀ W_l − I‖²_F with W_l ∈ ℝ^{f_in × f_out} (filters as
columns), summed over §4's groups when f_out > f_in; the initialization to §4's
orthonormal filters, group by group; the modulation to §3.3's rule, ρ = √(q^{l+1}/q^l)
with q the second moment of a conv layer's output error, applied top-down, re-derived here
from the unmodulated errors (the backward pass is linear in the error it is handed, so a
layer's gradients scale by the product of the factors applied at and above it).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.errors import ConfigError
from bench.spec import TrialConfig, trial_from_assignments
from bench.trial import build_model
from bench.trial.build import preflight
from bench.zoo.datasets import DatasetSource
from bench.zoo.optimizers import make
from bench.zoo.optimizers.modulation import Modulation
from bench.zoo.optimizers.orthonormal import gradient, groups, penalty

SOURCE = DatasetSource("probe", in_channels=1, image_size=8, num_classes=10, load=None, needs_files=False, train_size=64)
SMALL = dict(dataset="synthetic", arch="cnn", width=8, depth=2, batch_size=8, epochs=1)


def paper_regularizer(weight: torch.Tensor) -> torch.Tensor:
    """Eq. 3 with λ = 1 for one layer, in the paper's layout: W ∈ ℝ^{f_in × f_out}, its
    columns split into §4's groups of at most f_in filters."""
    w = weight.reshape(weight.shape[0], -1).T
    f_in, f_out = w.shape
    total = weight.new_zeros(())
    for start in range(0, f_out, f_in if f_out > f_in else f_out):
        g = w[:, start : start + f_in]
        total = total + (g.T @ g - torch.eye(g.shape[1], dtype=g.dtype)).square().sum()
    return total / 2


@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (10, 1, 2, 2), (5, 8), (3, 20)], ids=["conv", "grouped conv",
                                                                                       "linear", "wide linear"])
def test_the_decay_gradient_is_autograd_of_eq_3(shape):
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(shape, generator=g, dtype=torch.float64) * 0.4).requires_grad_()
    value = paper_regularizer(w)
    (expected,) = torch.autograd.grad(value, w)
    torch.testing.assert_close(gradient(w.detach()), expected, rtol=1e-12, atol=1e-13)
    assert penalty(w.detach()).item() == pytest.approx(value.item(), rel=1e-12)


def test_more_filters_than_their_dimension_are_held_orthonormal_in_groups():
    """§4: f_out > f_in filters cannot all be orthonormal; groups of at most f_in are."""
    matrix = torch.zeros(10, 4)
    assert [len(v) for v in groups(matrix)] == [4, 4, 2]
    assert [len(v) for v in groups(torch.zeros(4, 10))] == [4]
    stacked = torch.cat([torch.eye(4), torch.eye(4), torch.eye(4)[:2]]).reshape(10, 1, 2, 2)
    assert penalty(stacked).item() == 0 and not gradient(stacked).any()


def test_the_mode_replaces_l2_on_layer_weights_and_keeps_it_on_the_rest():
    """One SGD step without momentum on a zero task gradient moves each conv and linear
    weight by −lr·λ·∇(Eq. 3) and every other parameter by −lr·λ·w."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 5)).double()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    opt = make("sgd", model, lr=0.5, weight_decay=0.1, weight_decay_mode="orthonormal", options={"momentum": 0.0})
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        w = before[name]
        expected = w - 0.5 * 0.1 * (gradient(w) if name in ("0.weight", "4.weight") else w)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)


def test_a_trial_starts_from_orthonormal_filters():
    config = TrialConfig(**SMALL, weight_decay_mode="orthonormal")
    model = build_model(config, SOURCE)
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [tuple(w.shape) for w in weights] == [(8, 1, 3, 3), (8, 8, 3, 3), (10, 8)]  # the head in groups of 8 and 2
    for w in weights:
        assert penalty(w.detach()).item() < 1e-10
        for v in groups(w.detach().reshape(w.shape[0], -1)):
            torch.testing.assert_close(v @ v.T, torch.eye(len(v)), atol=1e-5, rtol=0)
    plain = build_model(config.replace(ortho_init=False), SOURCE)
    assert penalty(plain[0].weight.detach()).item() > 1e-2


# -- modulation ---------------------------------------------------------------------------


def _plain_net() -> nn.Module:
    """The paper's plain network: Conv-BN-ReLU triples, then a fully connected head."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for cin, cout in ((1, 4), (4, 4), (4, 4), (4, 4)):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(4 * 5 * 5, 3)).double()


def _backward(model: nn.Module) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Each conv's output error, top conv first, and every parameter's gradient."""
    errors: list[torch.Tensor] = []

    def capture(module, args, output):
        output.register_hook(lambda g: errors.append(g.detach().clone()))

    handles = [m.register_forward_hook(capture) for m in model if isinstance(m, nn.Conv2d)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 5, 5, generator=g, dtype=torch.float64)
    nn.functional.cross_entropy(model(x), torch.arange(6) % 3).backward()
    for h in handles:
        h.remove()
    return errors, {name: p.grad.clone() for name, p in model.named_parameters()}


def paper_modulation(errors: list[torch.Tensor], tolerance: float) -> list[float]:
    """§3.3 top-down over unmodulated errors: the factor each conv's gradients get (the
    product of the scales ρ applied at it and above it)."""
    factor, above, factors = 1.0, None, []
    for raw in errors:
        q = (factor * raw).square().mean().item()
        if above is None:
            above = q
        else:
            rho = (above / q) ** 0.5
            if rho > tolerance or rho < 1 / tolerance:
                factor *= rho
                q *= rho**2
            above = q
        factors.append(factor)
    return factors


@pytest.mark.parametrize("tolerance", [1.0, "mixed", 1e6])
def test_modulation_follows_the_papers_rule(tolerance):
    raw_errors, raw_grads = _backward(_plain_net())
    rhos = [(a.square().mean() / b.square().mean()).sqrt().item() for a, b in zip(raw_errors, raw_errors[1:])]
    mismatch = [max(rho, 1 / rho) for rho in rhos]
    tau = (min(mismatch) * max(mismatch)) ** 0.5 if tolerance == "mixed" else tolerance
    factors = paper_modulation(raw_errors, tau)
    model = _plain_net()
    Modulation(model, tau)
    errors, grads = _backward(model)
    convs = [i for i, m in enumerate(model) if isinstance(m, nn.Conv2d)][::-1]  # top first
    for index, factor, error, raw in zip(convs, factors, errors, raw_errors):
        torch.testing.assert_close(error, factor * raw, rtol=1e-10, atol=1e-16)
        for kind in ("weight", "bias"):  # (a conv's bias before BatchNorm has a zero gradient, up to rounding)
            torch.testing.assert_close(grads[f"{index}.{kind}"], factor * raw_grads[f"{index}.{kind}"], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(grads["13.weight"], raw_grads["13.weight"])  # the head is above every conv
    moments = [e.square().mean().item() for e in errors]
    if tolerance == 1.0:  # every layer brought to the top conv's second moment
        assert moments == pytest.approx([moments[0]] * 4, rel=1e-10)
    elif tolerance == "mixed":
        assert 1.0 < len(set(factors)) < 4
    else:
        assert factors == [1.0] * 4


def test_mistakes_are_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="with weight_decay=0 it does nothing"):
        TrialConfig(weight_decay_mode="orthonormal", weight_decay=0.0)
    with pytest.raises(ConfigError, match="ParametrizedConv2d, whose weight is computed"):
        preflight(TrialConfig(**SMALL, weight_decay_mode="orthonormal", conv="wn"))
    with pytest.raises(ConfigError, match="it is read only with weight_decay_mode=orthonormal"):
        trial_from_assignments({"ortho_init": False})
    with pytest.raises(ConfigError, match="tolerance τ ≥ 1"):
        TrialConfig(error_modulation=0.5)
    with pytest.raises(ConfigError, match="arch=mlp has none"):
        preflight(TrialConfig(**{**SMALL, "arch": "mlp"}, error_modulation=2.0))


def test_ids_change_only_with_the_techniques_on():
    base = TrialConfig()
    assert TrialConfig(ortho_init=False).trial_id == base.trial_id
    assert TrialConfig(weight_decay_mode="orthonormal").canonical() == {"weight_decay_mode": "orthonormal"}
    assert (TrialConfig(weight_decay_mode="orthonormal", ortho_init=False).trial_id
            != TrialConfig(weight_decay_mode="orthonormal").trial_id)
    assert TrialConfig(error_modulation=0.0).trial_id == base.trial_id
    assert TrialConfig(error_modulation=2.0).canonical() == {"error_modulation": 2.0}

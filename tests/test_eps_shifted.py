"""The ε-shifted L2 regularizer against the authors' optimizer and its own equation.

The reference below is ``LSGD.step`` of the authors' code, re-implemented in torch from
implus/PytorchInsight ``classification/imagenet_fast.py`` (the README's ``--el2
--nowd-conv`` run: conv weights in the group without weight decay, each non-depthwise
4-D weight's gradient given lam·((1 − mineps/wstd)(w − wmean) + wmean), wstd and wmean the
per-filter unbiased standard deviation and mean; then SGD's momentum as in
``torch.optim.SGD``). The other parameters take plain L2 with the same λ in both.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.errors import ConfigError
from bench.spec import TrialConfig, trial_from_assignments
from bench.trial.build import preflight
from bench.zoo.optimizers import make
from bench.zoo.optimizers.eps_shifted import decay_gradient, is_filter_bank

LAM, EPS, LR, MOMENTUM = 0.05, 0.3, 0.1, 0.9


def authors_lsgd(groups, lr, momentum, lam, mineps, state):
    """One LSGD.step over [{'params', 'weight_decay'}] groups (dampening 0, no Nesterov)."""
    with torch.no_grad():
        for group in groups:
            weight_decay = group["weight_decay"]
            for p in group["params"]:
                d_p = p.grad.clone()
                if weight_decay != 0:
                    d_p.add_(p, alpha=weight_decay)
                sz = p.size()
                if d_p.dim() == 4 and sz[1] != 1:  # we do not consider dw conv
                    assert weight_decay == 0
                    w = p.view(sz[0], -1)
                    wstd = w.std(dim=1).view(sz[0], 1, 1, 1)
                    wmean = w.mean(dim=1).view(sz[0], 1, 1, 1)
                    d_p.add_((1 - mineps / wstd) * (p - wmean) + wmean, alpha=lam)
                if momentum != 0:
                    if p not in state:
                        buf = state[p] = d_p.clone()
                    else:
                        buf = state[p]
                        buf.mul_(momentum).add_(d_p)
                    d_p = buf
                p.add_(d_p, alpha=-lr)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 3, groups=6),  # depthwise: no shifted decay in the authors' code
        nn.Flatten(), nn.Linear(6 * 2 * 2, 4),
    ).double()


def _loss(model: nn.Module, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(5, 3, 6, 6, generator=g, dtype=torch.float64)
    return nn.functional.cross_entropy(model(x), torch.arange(5) % 4)


def test_the_update_equals_the_authors_lsgd():
    ours, theirs = _model(), _model()
    opt = make("sgd", ours, lr=LR, weight_decay=LAM, weight_decay_mode="eps-shifted", shift_eps=EPS,
               options={"momentum": MOMENTUM})
    shifted = [p for p in theirs.parameters() if p.dim() == 4 and p.shape[1] != 1]
    assert len(shifted) == 1  # the first conv; the depthwise one decays as L2
    groups = [{"params": shifted, "weight_decay": 0.0},
              {"params": [p for p in theirs.parameters() if all(p is not q for q in shifted)], "weight_decay": LAM}]
    state: dict = {}
    for step in range(4):
        for model in (ours, theirs):
            model.zero_grad()
            _loss(model, step).backward()
        opt.step()
        authors_lsgd(groups, LR, MOMENTUM, LAM, EPS, state)
        for a, b in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_the_decay_is_the_gradient_of_the_shifted_objective():
    """λ[(1 − ε/σ_i)(w_i − μ_i) + μ_i] = ∇ (λ/2)[(‖w_i − μ_i‖ − ε√(n−1))² + n μ_i²], i.e.
    (λ/2)[(n−1)(σ_i − ε)² + n μ_i²]: each filter's spread pulled toward ε, its mean toward 0."""
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(5, 3, 3, 3, generator=g, dtype=torch.float64) * 0.2 + 0.05).requires_grad_()
    n = 27
    filters = w.reshape(5, -1)
    mean = filters.mean(dim=1)
    objective = 0.5 * ((filters - mean[:, None]).norm(dim=1) - EPS * (n - 1) ** 0.5).square().sum() + 0.5 * (n * mean**2).sum()
    (autograd,) = torch.autograd.grad(objective, w)
    torch.testing.assert_close(decay_gradient(w.detach(), EPS), autograd, rtol=1e-12, atol=1e-14)
    std = filters.detach().std(dim=1)
    same = 0.5 * ((n - 1) * (std - EPS).square() + n * mean.detach() ** 2).sum()
    assert same.item() == pytest.approx(objective.item(), rel=1e-12)


def test_at_eps_zero_it_is_plain_l2():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(decay_gradient(w, 0.0), w, rtol=1e-12, atol=1e-14)
    ours, l2 = _model(), _model()
    a = make("sgd", ours, lr=LR, weight_decay=LAM, weight_decay_mode="eps-shifted", shift_eps=0.0)
    b = make("sgd", l2, lr=LR, weight_decay=LAM, weight_decay_mode="l2")
    for step in range(3):
        for model, opt in ((ours, a), (l2, b)):
            model.zero_grad()
            _loss(model, step).backward()
            opt.step()
    for p, q in zip(ours.parameters(), l2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_decay_alone_holds_each_filter_spread_at_eps_where_l2_shrinks_it_to_zero():
    """The shifted objective has a minimum at σ_i = ε, μ_i = 0 (the paper's point: weights
    of a scale-invariant layer no longer shrink toward 0)."""
    results = {}
    for mode in ("eps-shifted", "l2"):
        conv = nn.Conv2d(4, 3, 3, bias=False).double()
        opt = make("sgd", [conv.weight], lr=1.0, weight_decay=0.1, weight_decay_mode=mode, shift_eps=0.01,
                   options={"momentum": 0.0})
        for _ in range(400):
            conv.weight.grad = torch.zeros_like(conv.weight)
            opt.step()
        filters = conv.weight.detach().reshape(3, -1)
        results[mode] = (filters.std(dim=1), filters.mean(dim=1))
    std, mean = results["eps-shifted"]
    torch.testing.assert_close(std, torch.full((3,), 0.01, dtype=torch.float64), rtol=1e-6, atol=0)
    assert mean.abs().max() < 1e-12
    assert results["l2"][0].max() < 1e-12


def test_only_non_depthwise_conv_filters_take_the_shifted_form():
    model = _model()
    flags = {name: is_filter_bank(p) for name, p in model.named_parameters()}
    assert flags == {"0.weight": True, "1.weight": False, "1.bias": False, "3.weight": False, "3.bias": False,
                     "5.weight": False, "5.bias": False}


def test_mistakes_are_refused_before_anything_runs():
    small = dict(dataset="synthetic", width=8, depth=2, batch_size=8, epochs=1)
    with pytest.raises(ConfigError, match="with weight_decay=0 it does nothing"):
        TrialConfig(weight_decay_mode="eps-shifted", weight_decay=0.0)
    with pytest.raises(ConfigError, match="wd_shift_eps must be a number ≥ 0"):
        TrialConfig(weight_decay_mode="eps-shifted", wd_shift_eps=-1e-3)
    with pytest.raises(ConfigError, match="it is read only with weight_decay_mode=eps-shifted"):
        trial_from_assignments({"weight_decay_mode": "l2", "wd_shift_eps": 1e-2})
    with pytest.raises(ConfigError, match="none of the decayed parameters is one"):
        preflight(TrialConfig(**small, arch="mlp", weight_decay_mode="eps-shifted"))
    preflight(TrialConfig(**small, arch="cnn", conv="ws", norm="gn", norm_groups=2, weight_decay_mode="eps-shifted"))


def test_ids_change_only_with_the_mode():
    base = TrialConfig()
    assert TrialConfig(wd_shift_eps=0.1).trial_id == base.trial_id
    shifted = TrialConfig(weight_decay_mode="eps-shifted")
    assert shifted.canonical() == {"weight_decay_mode": "eps-shifted"}
    assert TrialConfig(weight_decay_mode="eps-shifted", wd_shift_eps=0.01).trial_id != shifted.trial_id
    assert TrialConfig(weight_decay_mode="l2", wd_shift_eps=0.01).trial_id == TrialConfig(weight_decay_mode="l2").trial_id

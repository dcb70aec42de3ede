"""Each optimizer's step against its update equations, on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from bench.errors import ConfigError
from bench.zoo.optimizers import OPTIMIZERS

W0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
GRADS = [torch.tensor([0.3, -0.1, 0.2], dtype=torch.float64), torch.tensor([-0.5, 0.4, 0.1], dtype=torch.float64),
         torch.tensor([0.2, 0.2, -0.3], dtype=torch.float64)]


def run(name: str, **hp) -> torch.Tensor:
    w = torch.nn.Parameter(W0.clone())
    opt = OPTIMIZERS.get(name)([w], **hp)
    for g in GRADS:
        w.grad = g.clone()
        opt.step()
    return w.detach()


def test_sgd_plain_with_l2_weight_decay():
    w = W0.clone()
    for g in GRADS:
        w = w - 0.1 * (g + 0.01 * w)
    torch.testing.assert_close(run("sgd", lr=0.1, weight_decay=0.01), w)


def test_sgd_heavy_ball_momentum():
    # Sutskever et al. form used by torch: v ← μ v + g; w ← w − lr v (v₁ = g₁)
    w, v = W0.clone(), torch.zeros(3, dtype=torch.float64)
    for g in GRADS:
        v = 0.9 * v + g
        w = w - 0.1 * v
    torch.testing.assert_close(run("sgd", lr=0.1, momentum=0.9), w)


def test_sgd_nesterov():
    w, v = W0.clone(), torch.zeros(3, dtype=torch.float64)
    for g in GRADS:
        v = 0.9 * v + g
        w = w - 0.1 * (g + 0.9 * v)
    torch.testing.assert_close(run("sgd", lr=0.1, momentum=0.9, nesterov=True), w)


def test_nesterov_needs_momentum():
    with pytest.raises(ConfigError, match="Nesterov momentum needs momentum > 0"):
        run("sgd", lr=0.1, momentum=0.0, nesterov=True)


def adam_reference(lr, b1, b2, eps, wd, decoupled):
    w = W0.clone()
    m = torch.zeros(3, dtype=torch.float64)
    v = torch.zeros(3, dtype=torch.float64)
    for t, g in enumerate(GRADS, 1):
        if decoupled:
            w = w * (1 - lr * wd)
        else:
            g = g + wd * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        w = w - lr * m_hat / (v_hat.sqrt() + eps)
    return w


def test_adam_update_with_bias_correction_and_l2():
    expected = adam_reference(0.01, 0.9, 0.999, 1e-8, 0.1, decoupled=False)
    torch.testing.assert_close(run("adam", lr=0.01, weight_decay=0.1), expected)


def test_adamw_decoupled_weight_decay():
    expected = adam_reference(0.01, 0.8, 0.99, 1e-8, 0.1, decoupled=True)
    torch.testing.assert_close(run("adamw", lr=0.01, weight_decay=0.1, beta1=0.8, beta2=0.99), expected)


def test_adam_and_adamw_differ_with_weight_decay():
    assert not torch.allclose(run("adam", lr=0.01, weight_decay=0.1), run("adamw", lr=0.01, weight_decay=0.1))


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_decreases_a_quadratic(name):
    w = torch.nn.Parameter(torch.tensor([3.0, -4.0]))
    opt = OPTIMIZERS.get(name)([w], lr=0.05, momentum=0.5)
    start = float((w.detach() ** 2).sum())
    for _ in range(50):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert float((w.detach() ** 2).sum()) < start and math.isfinite(float(w.detach().sum()))
    assert OPTIMIZERS.entry(name).description and OPTIMIZERS.entry(name).paper

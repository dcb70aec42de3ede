"""LANS against the authors' code and the paper's Algorithm 2.

The reference below is the update of the authors' fused kernel, re-implemented in NumPy
from dmlc/gluon-nlp ``src/gluonnlp/torch/clib/multi_tensor_lans.cu`` (``LANSStage1Functor``
in decoupled-decay mode ``MOMENT_MODE_1`` with ``normalize_grad`` and ``grad_averaging``
on, then ``LANSStage2Functor``): per-tensor gradient and parameter norms taken before the
step, both update directions built from the same parameters, one write of the parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.spec import DEFAULTS, TrialConfig
from bench.zoo.optimizers import OPTIMIZERS, make

W0 = [np.array([[1.0, -2.0], [0.5, 0.25]]), np.array([0.3, -0.7, 1.2]), np.zeros(2)]
GRADS = [
    [np.array([[0.3, -0.1], [0.2, 0.05]]), np.array([0.5, -0.4, 0.1]), np.array([0.2, -0.1])],
    [np.array([[-0.5, 0.4], [0.1, -0.2]]), np.array([-0.2, 0.3, 0.3]), np.array([0.0, 0.0])],
    [np.array([[0.2, 0.2], [-0.3, 0.1]]), np.array([0.1, 0.1, -0.6]), np.array([-0.3, 0.4])],
    [np.array([[0.0, 0.0], [0.0, 0.0]]), np.array([0.4, -0.2, 0.2]), np.array([0.1, 0.1])],
]


def authors_lans(weights, grads_per_step, *, lr, beta1=0.9, beta2=0.999, eps=1e-6, decay=0.0):
    """The kernel's arithmetic, tensor by tensor, in float64."""
    ws = [w.copy() for w in weights]
    m = [np.zeros_like(w) for w in ws]
    v = [np.zeros_like(w) for w in ws]
    beta3 = 1.0 - beta1  # grad_averaging
    for step, grads in enumerate(grads_per_step, 1):
        c1, c2 = 1.0 - beta1**step, 1.0 - beta2**step
        for i, (p, g) in enumerate(zip(ws, grads)):
            grad_norm = np.sqrt(np.sum(g * g))  # multi_tensor_l2norm of the raw gradient
            param_norm = np.sqrt(np.sum(p * p))
            scaled = g / (grad_norm + eps) if grad_norm != 0.0 else g  # stage 1
            m[i] = m[i] * beta1 + beta3 * scaled
            v[i] = v[i] * beta2 + (1 - beta2) * scaled * scaled
            denom = np.sqrt(v[i] / c2) + eps
            scaled_p = decay * p
            update_m = (m[i] / c1) / denom + scaled_p
            update_g = scaled / denom + scaled_p
            m_norm, g_norm = np.sqrt(np.sum(update_m**2)), np.sqrt(np.sum(update_g**2))  # stage 2
            ratio_m = lr * (param_norm / m_norm) if m_norm != 0.0 and param_norm != 0.0 else lr
            ratio_g = lr * (param_norm / g_norm) if g_norm != 0.0 and param_norm != 0.0 else lr
            ws[i] = p - beta1 * ratio_m * update_m - beta3 * ratio_g * update_g
    return ws


def run_lans(grads_per_step=GRADS, **options):
    ws = [torch.nn.Parameter(torch.tensor(w, dtype=torch.float64)) for w in W0]
    kw = {k: options.pop(k) for k in ("lr", "weight_decay", "weight_decay_mode", "exclude_1d") if k in options}
    opt = make("lans", ws, **kw, options=options)
    for grads in grads_per_step:
        for w, g in zip(ws, grads):
            w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    return [w.detach().numpy() for w in ws]


@pytest.mark.parametrize(
    "hp", [dict(lr=0.05, decay=0.01), dict(lr=0.1, decay=0.0), dict(lr=0.02, decay=0.1, beta1=0.8, beta2=0.99, eps=1e-4)],
    ids=["decay", "no-decay", "other-betas"],
)
def test_lans_matches_the_authors_fused_kernel(hp):
    """Four steps on three tensors, one of them starting at zero (trust ratio 1) and one
    receiving a zero gradient (not normalized) on some steps."""
    expected = authors_lans(W0, GRADS, lr=hp["lr"], beta1=hp.get("beta1", 0.9), beta2=hp.get("beta2", 0.999),
                            eps=hp.get("eps", 1e-6), decay=hp["decay"])
    options = {k: v for k, v in (("beta1", hp.get("beta1")), ("beta2", hp.get("beta2")), ("optimizer_eps", hp.get("eps")))
               if v is not None}
    got = run_lans(lr=hp["lr"], weight_decay=hp["decay"], **options)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)


def test_first_step_is_the_papers_algorithm_2():
    """At t = 1 with ε → 0: m̂ = g̃, √v̂ = |g̃|, so r = c = sign(g) + λx, and the step is
    lr·‖x‖/‖sign(g) + λx‖ · (sign(g) + λx) (β1 and 1 − β1 of the same direction)."""
    lr, lam = 0.1, 0.05
    got = run_lans(GRADS[:1], lr=lr, weight_decay=lam, optimizer_eps=1e-12)
    for w, g, new in zip(W0[:2], GRADS[0][:2], got[:2]):
        u = np.sign(g) + lam * w
        np.testing.assert_allclose(new, w - lr * np.linalg.norm(w) / np.linalg.norm(u) * u, rtol=1e-9)


def test_the_gradient_is_normalized_per_block():
    """Scaling one tensor's gradients by 1000 changes nothing but rounding (each block's
    gradient is divided by its own norm); the other tensors are untouched."""
    scaled = [[g * (1000.0 if i == 1 else 1.0) for i, g in enumerate(step)] for step in GRADS]
    a = run_lans(lr=0.05, weight_decay=0.01, optimizer_eps=1e-12)
    b = run_lans(scaled, lr=0.05, weight_decay=0.01, optimizer_eps=1e-12)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)


def test_exclude_1d_removes_decay_but_keeps_the_trust_ratio():
    """The authors' BERT recipe: biases and LayerNorm parameters in a λ = 0 group that still
    takes the LANS step (trust ratio included)."""
    got = run_lans(GRADS[:2], lr=0.05, weight_decay=0.1, exclude_1d=True)
    expected_2d = authors_lans(W0[:1], [s[:1] for s in GRADS[:2]], lr=0.05, decay=0.1)[0]
    expected_1d = authors_lans(W0[1:2], [s[1:2] for s in GRADS[:2]], lr=0.05, decay=0.0)[0]
    np.testing.assert_allclose(got[0], expected_2d, rtol=1e-12)
    np.testing.assert_allclose(got[1], expected_1d, rtol=1e-12)


def test_the_entry_declares_the_shared_adam_options_with_the_authors_eps():
    entry = OPTIMIZERS.entry("lans")
    assert entry.option_names == ("beta1", "beta2", "optimizer_eps")
    assert "2006.13484" in entry.paper and "Native decay" in entry.description
    assert {k: DEFAULTS[k] for k in entry.option_names} == {"beta1": 0.9, "beta2": 0.999, "optimizer_eps": None}
    opt = make("lans", [torch.nn.Parameter(torch.ones(2))], lr=0.1)
    assert opt.param_groups[0]["eps"] == 1e-6 and opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert "adapt" not in opt.param_groups[0]


def test_lans_trains_through_the_trial_loop():
    from bench.trial import run_trial

    config = TrialConfig(dataset="synthetic", arch="mlp", width=16, epochs=2, batch_size=32, lr_scaling="none",
                         optimizer="lans", lr=0.01, weight_decay=0.01)
    result = run_trial(config)
    assert result.status == "completed", result.error
    assert result.epochs[-1]["train_loss"] < result.epochs[0]["train_loss"] or result.summary["final_val_acc"] > 0.2

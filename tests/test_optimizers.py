"""Each optimizer's step against its update equations, on small tensors.

Every registry entry must have a reference here (``REFERENCES``): a plain-tensor
implementation of its paper's update, run for three steps on two "layers" and compared
with the registered optimizer. A new optimizer without a reference fails the suite.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from bench.errors import ConfigError, UnknownNameError
from bench.zoo.optimizers.adabound import bounds
from bench.zoo.optimizers.lawn import Lawn, final_layer_weights
from bench.zoo.optimizers import OPTIMIZERS, make

T = torch.float64
W0 = [torch.tensor([[1.0, -2.0], [0.5, 0.25]], dtype=T), torch.tensor([0.3, -0.7, 1.2], dtype=T)]
GRADS = [
    [torch.tensor([[0.3, -0.1], [0.2, 0.05]], dtype=T), torch.tensor([0.5, -0.4, 0.1], dtype=T)],
    [torch.tensor([[-0.5, 0.4], [0.1, -0.2]], dtype=T), torch.tensor([-0.2, 0.3, 0.3], dtype=T)],
    [torch.tensor([[0.2, 0.2], [-0.3, 0.1]], dtype=T), torch.tensor([0.1, 0.1, -0.6], dtype=T)],
]


MAKE_KEYWORDS = ("lr", "weight_decay", "weight_decay_mode", "exclude_1d")


def make_with(name: str, params, **kw) -> torch.optim.Optimizer:
    """``make`` with the entry's options (config names) given as keywords alongside its own."""
    options = {k: v for k, v in kw.items() if k not in MAKE_KEYWORDS}
    return make(name, params, **{k: v for k, v in kw.items() if k in MAKE_KEYWORDS}, options=options)


def run(name: str, grads=GRADS, **kw) -> list[torch.Tensor]:
    ws = [torch.nn.Parameter(w.clone()) for w in W0]
    opt = make_with(name, ws, **kw)
    for gs in grads:
        for w, g in zip(ws, gs):
            w.grad = g.clone()
        opt.step()
    return [w.detach() for w in ws]


def per_tensor(update: Callable[..., torch.Tensor], state_init: Callable[[torch.Tensor], dict]) -> list[torch.Tensor]:
    """Applies ``update(w, g, state, t)`` to each tensor independently for every step."""
    ws = [w.clone() for w in W0]
    states = [state_init(w) for w in ws]
    for t, gs in enumerate(GRADS, 1):
        ws = [update(w, g, s, t) for w, g, s in zip(ws, gs, states)]
    return ws


def zeros(w: torch.Tensor, *names: str) -> dict:
    return {n: torch.zeros_like(w) for n in names}


# -- references: the papers' equations ---------------------------------------------------

LR, WD = 0.1, 0.01


def ref_sgd():
    def upd(w, g, s, t):
        g = g + WD * w
        s["v"] = 0.9 * s["v"] + g  # Sutskever et al. form used by torch: v₁ = g₁
        return w - LR * s["v"]

    return per_tensor(upd, lambda w: zeros(w, "v")), dict(lr=LR, momentum=0.9, weight_decay=WD)


def ref_adagrad():
    def upd(w, g, s, t):
        g = g + WD * w
        s["sum"] = s["sum"] + g * g
        return w - LR * g / (s["sum"].sqrt() + 1e-10)

    return per_tensor(upd, lambda w: zeros(w, "sum")), dict(lr=LR, weight_decay=WD)


def ref_adadelta():
    rho, eps = 0.9, 1e-6

    def upd(w, g, s, t):
        g = g + WD * w
        s["eg"] = rho * s["eg"] + (1 - rho) * g * g
        delta = (s["ed"] + eps).sqrt() / (s["eg"] + eps).sqrt() * g
        s["ed"] = rho * s["ed"] + (1 - rho) * delta * delta
        return w - 1.0 * delta

    return per_tensor(upd, lambda w: zeros(w, "eg", "ed")), dict(lr=1.0, weight_decay=WD)


def ref_rmsprop():
    alpha = 0.99

    def upd(w, g, s, t):
        g = g + WD * w
        s["v"] = alpha * s["v"] + (1 - alpha) * g * g
        return w - 0.01 * g / (s["v"].sqrt() + 1e-8)

    return per_tensor(upd, lambda w: zeros(w, "v")), dict(lr=0.01, weight_decay=WD)


def _adam(decoupled: bool, b1=0.9, b2=0.999, lr=0.01, eps=1e-8):
    def upd(w, g, s, t):
        if decoupled:
            w = w * (1 - lr * WD)
        else:
            g = g + WD * w
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        m_hat, v_hat = s["m"] / (1 - b1**t), s["v"] / (1 - b2**t)
        return w - lr * m_hat / (v_hat.sqrt() + eps)

    return per_tensor(upd, lambda w: zeros(w, "m", "v"))


def ref_adam():
    return _adam(False), dict(lr=0.01, weight_decay=WD)


def ref_adamw():
    return _adam(True, b1=0.8, b2=0.99), dict(lr=0.01, weight_decay=WD, beta1=0.8, beta2=0.99)


def ref_nadam():
    """Dozat 2016 with the momentum schedule μ_t = β1(1 − ½·0.96^{tψ}), ψ = 0.004."""
    b1, b2, lr, psi = 0.9, 0.999, 0.01, 0.004

    def mu(t):
        return b1 * (1 - 0.5 * 0.96 ** (t * psi))

    def upd(w, g, s, t):
        g = g + WD * w
        prod_t = math.prod(mu(i) for i in range(1, t + 1))
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        m_hat = mu(t + 1) * s["m"] / (1 - prod_t * mu(t + 1)) + (1 - mu(t)) * g / (1 - prod_t)
        v_hat = s["v"] / (1 - b2**t)
        return w - lr * m_hat / (v_hat.sqrt() + 1e-8)

    return per_tensor(upd, lambda w: zeros(w, "m", "v")), dict(lr=lr, weight_decay=WD)


def ref_lars():
    """You et al. 2017, Algorithm 1 at a constant lr γ: λ = η‖w‖/(‖g‖ + β‖w‖),
    v ← m v + γ λ (g + β w), w ← w − v."""
    eta, beta, m, lr = 0.001, 0.01, 0.9, 2.0

    def upd(w, g, s, t):
        local = eta * w.norm() / (g.norm() + beta * w.norm())
        s["v"] = m * s["v"] + lr * local * (g + beta * w)
        return w - s["v"]

    return per_tensor(upd, lambda w: zeros(w, "v")), dict(lr=lr, momentum=m, weight_decay=beta)


def ref_lamb():
    """You et al. 2020, Algorithm 2: r = m̂/(√v̂ + ε), u = r + λw, w ← w − η ‖w‖/‖u‖ u."""
    b1, b2, eps, lr, lam = 0.9, 0.999, 1e-6, 0.05, 0.01

    def upd(w, g, s, t):
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        r = (s["m"] / (1 - b1**t)) / ((s["v"] / (1 - b2**t)).sqrt() + eps)
        u = r + lam * w
        return w - lr * w.norm() / u.norm() * u

    return per_tensor(upd, lambda w: zeros(w, "m", "v")), dict(lr=lr, weight_decay=lam)


def ref_adabound():
    b1, b2, lr, final, gamma, eps = 0.9, 0.999, 0.01, 0.1, 0.001, 1e-8

    def upd(w, g, s, t):
        g = g + WD * w
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        step = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        low, high = final * (1 - 1 / (gamma * t + 1)), final * (1 + 1 / (gamma * t))
        return w - (step / (s["v"].sqrt() + eps)).clamp(low, high) * s["m"]

    return per_tensor(upd, lambda w: zeros(w, "m", "v")), dict(lr=lr, weight_decay=WD)


def ref_adax():
    """Li et al. 2020, Algorithm 1: v ← (1+β2)v + β2 g², v̂ = v/((1+β2)^t − 1), no m correction."""
    b1, b2, lr, eps = 0.9, 1e-4, 0.01, 1e-12

    def upd(w, g, s, t):
        g = g + WD * w
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = (1 + b2) * s["v"] + b2 * g * g
        v_hat = s["v"] / ((1 + b2) ** t - 1)
        return w - lr * s["m"] / (v_hat.sqrt() + eps)

    return per_tensor(upd, lambda w: zeros(w, "m", "v")), dict(lr=lr, weight_decay=WD)


def ref_lans():
    """Zheng et al. 2020, Algorithm 2 (ε on the gradient norm as in the authors' kernel;
    tests/test_lans.py compares with the kernel itself): g̃ = g/(‖g‖+ε), Adam moments of g̃,
    r = m̂/(√v̂+ε) + λw, c = g̃/(√v̂+ε) + λw, w ← w − η β1 ‖w‖/‖r‖ r − η (1−β1) ‖w‖/‖c‖ c."""
    b1, b2, eps, lr, lam = 0.9, 0.999, 1e-6, 0.05, 0.01

    def upd(w, g, s, t):
        g = g / (g.norm() + eps)
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        d = (s["v"] / (1 - b2**t)).sqrt() + eps
        r, c = s["m"] / (1 - b1**t) / d + lam * w, g / d + lam * w
        return w - lr * b1 * w.norm() / r.norm() * r - lr * (1 - b1) * w.norm() / c.norm() * c

    return per_tensor(upd, lambda w: zeros(w, "m", "v")), dict(lr=lr, weight_decay=lam)


def _sgd_nesterov(lr, m=0.9):
    def upd(w, g, s, t):
        g = g + WD * w
        s["v"] = g if t == 1 else m * s["v"] + g
        return w - lr * (g + m * s["v"])

    return per_tensor(upd, lambda w: zeros(w, "v"))


def ref_sgd_g():
    """Plain tensors come with no model, so no weight is known to be scale invariant: all
    take the Euclidean part, SGD with (here Nesterov) momentum and L2 decay. The manifold
    part is pinned to the authors' code in tests/test_grassmann.py."""
    return _sgd_nesterov(LR), dict(lr=LR, weight_decay=WD, nesterov=True)


def ref_adam_g():
    """As SGD-G: the authors' Adam-G takes SGD with momentum on the Euclidean parameters."""
    return _sgd_nesterov(LR), dict(lr=LR, weight_decay=WD, nesterov=True)


# A function ref_a_b is the reference of the entry "a-b".
REFERENCES = {name[4:].replace("_", "-"): fn for name, fn in dict(globals()).items() if name.startswith("ref_")}


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizer_matches_its_papers_update(name):
    assert name in REFERENCES, f"optimizer {name!r} has no reference implementation in this file"
    expected, hp = REFERENCES[name]()
    for got, want in zip(run(name, **hp), expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_decreases_a_quadratic_and_is_documented(name):
    w = torch.nn.Parameter(torch.tensor([3.0, -4.0]))
    lr = 1.0 if name == "adadelta" else 0.05
    momentum = {"momentum": 0.5} if "momentum" in OPTIMIZERS.entry(name).option_names else {}  # where it has one
    opt = make(name, [w], lr=lr, options=momentum)
    start = float((w.detach() ** 2).sum())
    for _ in range(50):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert float((w.detach() ** 2).sum()) < start and math.isfinite(float(w.detach().sum()))
    entry = OPTIMIZERS.entry(name)
    assert entry.description and entry.paper and "Native decay" in entry.description


def test_sgd_nesterov():
    w, v = W0[0].clone(), torch.zeros_like(W0[0])
    for gs in GRADS:
        v = 0.9 * v + gs[0]
        w = w - 0.1 * (gs[0] + 0.9 * v)
    torch.testing.assert_close(run("sgd", lr=0.1, momentum=0.9, nesterov=True)[0], w)


def test_nesterov_needs_momentum():
    with pytest.raises(ConfigError, match="Nesterov momentum needs momentum > 0"):
        run("sgd", lr=0.1, momentum=0.0, nesterov=True)


def test_lars_local_lr_is_per_layer():
    """One step from zero momentum: each tensor moves by lr·η‖w‖/(‖g‖+β‖w‖)·(g + βw)."""
    got = run("lars", grads=GRADS[:1], lr=1.0, momentum=0.9, weight_decay=0.0)
    for w0, g, w1 in zip(W0, GRADS[0], got):
        torch.testing.assert_close(w0 - w1, 0.001 * w0.norm() / g.norm() * g)


def test_lars_and_lamb_exclude_1d_parameters_from_decay_and_adaptation():
    # the 1-D tensor takes a plain momentum-SGD step (no decay, no trust ratio)
    got = run("lars", grads=GRADS[:1], lr=0.5, momentum=0.9, weight_decay=0.1, exclude_1d=True)
    torch.testing.assert_close(got[1], W0[1] - 0.5 * GRADS[0][1])
    # LAMB: the 1-D tensor takes a plain Adam step (first Adam step: lr·sign(g) up to ε)
    got = run("lamb", grads=GRADS[:1], lr=0.5, weight_decay=0.1, exclude_1d=True)
    g = GRADS[0][1]
    torch.testing.assert_close(got[1], W0[1] - 0.5 * g / (g.abs() + 1e-6))


def test_lamb_has_no_global_gradient_clipping():
    big = [[g * 1000 for g in gs] for gs in GRADS]
    small = run("lamb", lr=0.05, weight_decay=0.01)
    large = run("lamb", grads=big, lr=0.05, weight_decay=0.01)
    # Adam's update is scale-invariant up to ε; clipping the global norm to 1 would break that
    for a, b in zip(small, large):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_adabound_bounds_at_given_steps_and_convergence_to_sgd():
    low, high = bounds(0.1, 1e-3, 1)
    assert low == pytest.approx(0.1 * (1 - 1 / 1.001)) and high == pytest.approx(0.1 * 1001)
    low, high = bounds(0.1, 1e-3, 1_000_000)
    assert low == pytest.approx(0.1, rel=1e-3) and high == pytest.approx(0.1, rel=1e-3)
    # late in training (bounds tight) the step is SGD with lr = final_lr on the first moment
    w = torch.nn.Parameter(W0[0].clone())
    opt = make("adabound", [w], lr=0.01, options={"adabound_final_lr": 0.1, "adabound_gamma": 0.5})
    g = GRADS[0][0]
    opt.state[w] = {"step": 10**7, "exp_avg": torch.zeros_like(w), "exp_avg_sq": torch.ones_like(w)}
    w.grad = g.clone()
    before = w.detach().clone()
    opt.step()
    torch.testing.assert_close(before - w.detach(), 0.1 * 0.1 * g, rtol=1e-6, atol=1e-9)


def test_adabound_final_lr_follows_the_lr_schedule():
    w = torch.nn.Parameter(W0[0].clone())
    opt = make("adabound", [w], lr=0.01, options={"adabound_final_lr": 0.1, "adabound_gamma": 0.5})
    opt.param_groups[0]["lr"] = 0.005  # a schedule halves the lr
    opt.state[w] = {"step": 10**7, "exp_avg": torch.zeros_like(w), "exp_avg_sq": torch.ones_like(w)}
    w.grad = GRADS[0][0].clone()
    before = w.detach().clone()
    opt.step()
    torch.testing.assert_close(before - w.detach(), 0.05 * 0.1 * GRADS[0][0], rtol=1e-6, atol=1e-9)


# -- weight decay forms ------------------------------------------------------------------


def test_adam_with_decoupled_decay_is_adamw():
    a = run("adam", lr=0.01, weight_decay=0.1, weight_decay_mode="decoupled")
    b = run("adamw", lr=0.01, weight_decay=0.1)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_adamw_with_l2_decay_is_adam():
    a = run("adamw", lr=0.01, weight_decay=0.1, weight_decay_mode="l2")
    b = run("adam", lr=0.01, weight_decay=0.1)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_sgd_with_decoupled_decay_is_sgdw():
    def upd(w, g, s, t):
        w = w * (1 - 0.1 * WD)
        s["v"] = 0.9 * s["v"] + g
        return w - 0.1 * s["v"]

    expected = per_tensor(upd, lambda w: zeros(w, "v"))
    got = run("sgd", lr=0.1, momentum=0.9, weight_decay=WD, weight_decay_mode="decoupled")
    for x, y in zip(got, expected):
        torch.testing.assert_close(x, y)


def test_decoupled_decay_follows_the_scheduled_lr():
    w = torch.nn.Parameter(torch.ones(3, dtype=T))
    opt = make("adam", [w], lr=0.1, weight_decay=0.5, weight_decay_mode="decoupled")
    opt.param_groups[0]["lr"] = 0.02
    w.grad = torch.zeros(3, dtype=T)  # Adam's own update is 0 with a zero gradient
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((3,), 1 - 0.02 * 0.5, dtype=T))


def test_exclude_1d_exempts_biases_and_norm_parameters_from_decay():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    opt = make("sgd", model, lr=0.1, weight_decay=0.1, exclude_1d=True)
    decays = {tuple(p.shape): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays == {(2, 2): 0.1, (2,): 0.0}
    assert [len(g["params"]) for g in opt.param_groups] == [1, 3]


def test_exclude_1d_also_exempts_what_a_module_names_in_no_weight_decay():
    from bench.trial import build_model
    from bench.zoo.datasets import DATASETS, dataset_source
    from bench.spec import TrialConfig

    config = TrialConfig(dataset="synthetic", arch="vit", width=16, depth=1, vit_heads=2, norm="ln", optimizer="adamw",
                         weight_decay=0.05, wd_exclude_1d=True)
    model = torch.nn.Sequential(build_model(config, dataset_source("synthetic")))  # found inside a wrapper too
    opt = make("adamw", model, lr=0.1, weight_decay=0.05, exclude_1d=True)
    exempt = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in exempt}
    assert {"0.pos_embed", "0.cls_token"} <= names
    assert all(p.ndim > 1 for name, p in model.named_parameters() if id(p) not in exempt)
    assert not any(g["adapt"] for g in opt.param_groups if g["weight_decay"] == 0)
    # without the switch everything decays, the embeddings included
    opt = make("adamw", model, lr=0.1, weight_decay=0.05)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05]


def test_unknown_weight_decay_mode_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="decoupled, eps-shifted, l2, native, orthonormal"):
        run("sgd", lr=0.1, weight_decay_mode="l1")


# -- LAWN ---------------------------------------------------------------------------------


def _lawn_setup(free_steps: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = make("adam", model, lr=0.05)
    lawn = Lawn(opt, final_layer_weights(model, 1), free_steps=free_steps)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    return model, opt, lawn, x, y


def _train(model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_lawn_is_the_base_optimizer_during_the_free_phase():
    model, opt, lawn, x, y = _lawn_setup(free_steps=5)
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    base_opt = make("adam", base, lr=0.05)
    _train(model, opt, x, y, 5)
    _train(base, base_opt, x, y, 5)
    for a, b in zip(model.parameters(), base.parameters()):
        torch.testing.assert_close(a, b)
    assert not lawn.constrained


def test_lawn_holds_the_final_layer_norm_fixed_after_the_free_phase():
    model, opt, lawn, x, y = _lawn_setup(free_steps=3)
    _train(model, opt, x, y, 3)
    fixed = model[2].weight.norm().item()
    first = model[0].weight.detach().clone()
    _train(model, opt, x, y, 20)
    assert lawn.constrained
    assert model[2].weight.norm().item() == pytest.approx(fixed, rel=1e-6)
    assert not torch.equal(model[0].weight, first)  # the rest trains freely


def test_lawn_projects_the_gradient_onto_the_sphere():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    opt = make("sgd", [w], lr=0.1, options={"momentum": 0.0})
    Lawn(opt, [w], free_steps=0)
    w.grad = torch.tensor([[3.0, 4.0]]) * 2 + torch.tensor([[4.0, -3.0]])  # radial + tangential
    opt.step()
    # radial part removed, tangential step taken, then rescaled to norm 5
    moved = torch.tensor([[3.0, 4.0]]) - 0.1 * torch.tensor([[4.0, -3.0]])
    torch.testing.assert_close(w.detach(), moved * 5 / moved.norm())


def test_lawn_layers_beyond_the_model_are_a_config_error():
    with pytest.raises(ConfigError, match="lawn_layers=5"):
        final_layer_weights(torch.nn.Sequential(torch.nn.Linear(2, 2)), 5)

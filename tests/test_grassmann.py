"""SGD-G and Adam-G against the authors' code and the paper's geometry.

The reference is the authors' PyTorch implementation, MinhyungCho/riemannian-batch-
normalization-pytorch, re-implemented below in torch (float64) from its files:
``gutils.py`` lines 3-67 (``unit`` with eps 1e-8, ``xTy``, ``clip_by_norm``, ``gproj``
Eq. 6, ``gexp`` Eq. 7, ``gpt2`` Eq. 8, ``gpt`` Eq. 9), ``grassmann_optimizer.py``
``SGDG.step`` lines 75-137 (manifold part lines 79-112, Euclidean part lines 114-137, a
copy of torch's SGD) and ``AdamG.step`` lines 202-284 (manifold part lines 205-260), and
``main.py``'s set-up (README step 1-2: conv weights with fewer units than inputs on the
manifold, scaled to unit rows first; biases and BN parameters with ``bnDecay`` 0; the rest
with ``weightDecay``; Nesterov momentum 0.9 on the Euclidean part). Its in-place
``p.grad.add_`` of the orthogonality term is written as a new tensor (same numbers).
"""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError
from bench.spec import TrialConfig
from bench.trial import build_model, build_optimizer, run_trial
from bench.trial.build import preflight
from bench.zoo.datasets import dataset_source
from bench.zoo.norms import NormFactory
from bench.zoo.optimizers import OPTIMIZERS, make
from bench.zoo.optimizers.grassmann import (
    exp_map,
    manifold_weights,
    project,
    transport,
    transport_along_itself,
    unit,
)

T = torch.float64


# -- the authors' code, in torch ---------------------------------------------------------------


def a_norm(v):
    return v.norm(p=2, dim=1, keepdim=True)


def a_unit(v, eps=1e-8):
    vnorm = a_norm(v)
    return v / (vnorm + eps), vnorm


def a_xTy(x, y):
    return torch.sum(x * y, dim=1, keepdim=True)


def a_clip_by_norm(v, clip_norm):
    v_norm = a_norm(v)
    scale = torch.ones_like(v_norm)
    mask = v_norm > clip_norm
    scale[mask] = clip_norm / v_norm[mask]
    return v * scale


def a_gproj(y, g):
    return g - a_xTy(y, g) * y


def a_gexp(y, h):
    u, hnorm = a_unit(h)
    return y * hnorm.cos() + u * hnorm.sin()


def a_gpt2(y, h1, h2):
    u, unorm = a_unit(h2)
    return h1 - a_xTy(u, h1) * (unorm.sin() * y + (1 - unorm.cos()) * u)


def a_gpt(y, h):
    u, unorm = a_unit(h)
    return (u * unorm.cos() - y * unorm.sin()) * unorm


class AuthorsOptimizer:
    """``SGDG``/``AdamG`` of grassmann_optimizer.py over the authors' three groups."""

    def __init__(self, param_g, param_e0, param_e1, *, adam, lr, lrg, weight_decay, omega, grad_clip,
                 momentum=0.9, beta2=0.99, epsilon=1e-8, nesterov=True):
        self.adam, self.lr, self.lrg, self.momentum, self.beta2, self.epsilon = adam, lr, lrg, momentum, beta2, epsilon
        self.omega, self.grad_clip, self.nesterov = omega, grad_clip, nesterov
        self.euclid = [(param_e0, 0.0), (param_e1, weight_decay)]
        self.param_g, self.state = param_g, {}
        with torch.no_grad():  # main.py: "initialize to scale 1"
            for p in param_g:
                p.copy_(a_unit(p.view(p.size(0), -1))[0].view(p.size()))

    @torch.no_grad()
    def step(self):
        for p in self.param_g:
            unity, _ = a_unit(p.view(p.size()[0], -1))
            g = p.grad.view(p.size()[0], -1)
            if self.omega != 0:
                g = g + 2 * self.omega * (torch.mm(torch.mm(unity, unity.t()), unity) - unity)
            h = a_gproj(unity, g)
            h_hat = a_clip_by_norm(h, self.grad_clip) if self.grad_clip is not None else h
            st = self.state.setdefault(id(p), {})
            if not self.adam:
                mom = st.setdefault("momentum_buffer", torch.zeros_like(h_hat))
                mom_new = self.momentum * mom - self.lrg * h_hat
                p.copy_(a_gexp(unity, mom_new).view(p.size()))
                mom.copy_(a_gpt(unity, mom_new))
            else:
                beta1 = self.momentum
                if "m_buffer" not in st:
                    st.update(m_buffer=torch.zeros_like(h_hat), v_buffer=torch.zeros_like(h_hat[:, :1]),
                              beta1_power=beta1, beta2_power=self.beta2)
                m, v = st["m_buffer"], st["v_buffer"]
                mnew = beta1 * m + (1.0 - beta1) * h_hat
                vnew = self.beta2 * v + (1.0 - self.beta2) * a_xTy(h_hat, h_hat)
                alpha = math.sqrt(1.0 - st["beta2_power"]) / (1.0 - st["beta1_power"])
                deltas = mnew / vnew.add(self.epsilon).sqrt()
                deltas.mul_(-alpha * self.lrg)
                p.copy_(a_gexp(unity, deltas).view(p.size()))
                m.copy_(a_gpt2(unity, mnew, deltas))
                v.copy_(vnew)
                st["beta1_power"] *= beta1
                st["beta2_power"] *= self.beta2
        for params, weight_decay in self.euclid:
            for p in params:
                d_p = p.grad
                if weight_decay != 0:
                    d_p = d_p.add(p, alpha=weight_decay)
                st = self.state.setdefault(id(p), {})
                if "momentum_buffer" not in st:
                    buf = st["momentum_buffer"] = d_p.clone()
                else:
                    buf = st["momentum_buffer"]
                    buf.mul_(self.momentum).add_(d_p)
                d_p = d_p.add(buf, alpha=self.momentum) if self.nesterov else buf
                p.add_(d_p, alpha=-self.lr)


# -- a tiny BN network ---------------------------------------------------------------------------


class BNNet(nn.Module):
    """conv (undercomplete) → bn → ReLU → conv (overcomplete: Euclidean) → bn → ReLU →
    pool → linear classifier (no norm after it: Euclidean)."""

    def __init__(self, norm="bn"):
        super().__init__()
        factory = NormFactory(norm)
        self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, padding=1, bias=False), factory(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 40, 1, bias=False), factory(40)
        self.fc = nn.Linear(40, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def batches(steps=4, n=6):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(n, 2, 5, 5, generator=g, dtype=T), torch.randint(0, 3, (n,), generator=g)) for _ in range(steps)]


def authors_groups(model):
    g = [model.conv1.weight]
    e0 = [p for n, p in model.named_parameters() if "bn" in n or "bias" in n]
    e1 = [model.conv2.weight, model.fc.weight]
    return g, e0, e1


def train_both(name, authors_kw, **options):
    """Our optimizer and the authors', each on its own copy of one network, the same
    batches: every parameter equal after every step."""
    torch.manual_seed(0)
    ours = BNNet().to(T)
    theirs = BNNet().to(T)
    theirs.load_state_dict(ours.state_dict())
    opt = make(name, ours, lr=authors_kw["lr"], weight_decay=authors_kw["weight_decay"], exclude_1d=True,
               options={"nesterov": True, **options})
    ref = AuthorsOptimizer(*authors_groups(theirs), **authors_kw)
    start = ours.conv1.weight.detach().clone()
    for x, y in batches():
        for model, step in ((ours, opt.step), (theirs, ref.step)):
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            step()
        for name_, p in ours.named_parameters():
            torch.testing.assert_close(p, dict(theirs.named_parameters())[name_], rtol=1e-10, atol=1e-12)
    assert (ours.conv1.weight - start).norm() > 1e-3  # the manifold weights did move


@pytest.mark.parametrize(
    "options,omega,clip", [({}, 0.1, 0.1), ({"grassmann_ortho": 0.0, "grassmann_clip": 0.0}, 0.0, None),
                           ({"grassmann_clip": 0.01, "momentum": 0.5}, 0.1, 0.01)],
    ids=["defaults", "no-regularizer-no-clip", "tight-clip"],
)
def test_sgd_g_steps_equal_the_authors_sgdg(options, omega, clip):
    momentum = options.get("momentum", 0.9)
    train_both("sgd-g", dict(adam=False, lr=0.01, lrg=0.2, weight_decay=5e-4, omega=omega, grad_clip=clip,
                             momentum=momentum), **options)


@pytest.mark.parametrize(
    "options,lrg,beta2,eps", [({}, 0.05, 0.99, 1e-8), ({"grassmann_lr_ratio": 3.0, "adamg_beta2": 0.9,
                                                        "optimizer_eps": 1e-6}, 0.03, 0.9, 1e-6)],
    ids=["defaults", "other-hyperparameters"],
)
def test_adam_g_steps_equal_the_authors_adamg(options, lrg, beta2, eps):
    # the authors' Adam-G uses its momentum as β1; here beta1 (default 0.9) and momentum (0.9)
    train_both("adam-g", dict(adam=True, lr=0.01, lrg=lrg, weight_decay=5e-4, omega=0.1, grad_clip=0.1,
                              beta2=beta2, epsilon=eps), **options)


# -- the paper's geometry --------------------------------------------------------------------------


GEOMETRY = dict(rtol=0, atol=1e-7)  # u = h/(‖h‖ + 1e-8), as the authors': ‖u‖ = 1 − 1e-8/‖h‖


def _point_and_tangents(k=5, n=7):
    g = torch.Generator().manual_seed(1)
    y = unit(torch.randn(k, n, generator=g, dtype=T))[0]
    h = project(y, torch.randn(k, n, generator=g, dtype=T)) * 0.7
    delta = project(y, torch.randn(k, n, generator=g, dtype=T))
    return y, h, delta


def test_exponential_map_follows_the_great_circle():
    """Eq. 7: exp_y(h) is a unit vector at angle ‖h‖ from y, in the plane of y and h."""
    y, h, _ = _point_and_tangents()
    z = exp_map(y, h)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5, dtype=T), **GEOMETRY)
    torch.testing.assert_close(torch.arccos((y * z).sum(dim=1)), h.norm(dim=1), **GEOMETRY)
    u = h / h.norm(dim=1, keepdim=True)
    torch.testing.assert_close(z, y * (y * z).sum(dim=1, keepdim=True) + u * (u * z).sum(dim=1, keepdim=True),
                               **GEOMETRY)


def test_parallel_transport_is_an_isometry_onto_the_new_tangent_space():
    """Eq. 8: pt_y(Δ; h) is tangent at exp_y(h), keeps ‖Δ‖ and inner products; Eq. 9 is
    its value at Δ = h, the geodesic's velocity at its end."""
    y, h, delta = _point_and_tangents()
    z = exp_map(y, h)
    moved, moved_h = transport(y, h, delta), transport_along_itself(y, h)
    torch.testing.assert_close((moved * z).sum(dim=1), torch.zeros(5, dtype=T), **GEOMETRY)
    torch.testing.assert_close(moved.norm(dim=1), delta.norm(dim=1), **GEOMETRY)
    torch.testing.assert_close((moved * moved_h).sum(dim=1), (delta * h).sum(dim=1), **GEOMETRY)
    torch.testing.assert_close(moved_h, transport(y, h, h), **GEOMETRY)
    torch.testing.assert_close((moved_h * z).sum(dim=1), torch.zeros(5, dtype=T), **GEOMETRY)


def test_projection_removes_the_radial_component_where_bn_makes_the_loss_flat():
    """Eq. 6 at a BN network: the Euclidean gradient of a scale-invariant weight is
    already orthogonal to it (∂L/∂w · w = 0 up to BN's ε, here 1e-15), so projecting
    changes it only by that much; the orthogonality term 2α(YYᵀY − Y) has a radial part,
    which the projection removes."""
    torch.manual_seed(0)
    model = BNNet().to(T)
    model.bn1.eps = 1e-15
    x, y = batches(1)[0]
    F.cross_entropy(model(x), y).backward()
    w, g = model.conv1.weight.view(4, -1), model.conv1.weight.grad.view(4, -1)
    yw = unit(w)[0]
    assert ((yw * g).sum(dim=1).abs() < 1e-9 * g.norm(dim=1)).all()
    torch.testing.assert_close(project(yw, g), g, rtol=0, atol=1e-9 * float(g.norm()))
    ortho = 2 * 0.1 * ((yw @ yw.T) @ yw - yw)
    assert (yw * ortho).sum(dim=1).abs().min() > 1e-3
    torch.testing.assert_close((yw * project(yw, g + ortho)).sum(dim=1), torch.zeros(4, dtype=T), **GEOMETRY)


@pytest.mark.parametrize("name,buffer", [("sgd-g", "momentum_buffer"), ("adam-g", "exp_avg")])
def test_weights_stay_unit_rows_and_the_momentum_stays_tangent(name, buffer):
    torch.manual_seed(0)
    model = BNNet().to(T)
    opt = make(name, model, lr=0.05, options={"grassmann_lr_ratio": 10.0})
    for x, y in batches(6):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        w = model.conv1.weight.view(4, -1)
        torch.testing.assert_close(w.norm(dim=1), torch.ones(4, dtype=T), **GEOMETRY)
        tau = opt.state[model.conv1.weight][buffer]
        assert tau.abs().max() > 1e-3
        torch.testing.assert_close((tau * w).sum(dim=1), torch.zeros(4, dtype=T), **GEOMETRY)


def test_unit_rows_at_construction_leave_the_function_unchanged():
    """The authors' unit initialization: the rows are rescaled, the training forward is
    the same (up to BN's ε, here 1e-15)."""
    torch.manual_seed(0)
    model = BNNet().to(T)
    model.bn1.eps = 1e-15
    x = batches(1)[0][0]
    before = model(x)
    make("sgd-g", model, lr=0.1)
    torch.testing.assert_close(model.conv1.weight.view(4, -1).norm(dim=1), torch.ones(4, dtype=T))
    torch.testing.assert_close(model(x), before)


def test_a_zero_gradient_leaves_the_point_where_it_is():
    w = nn.Parameter(torch.tensor([[3.0, 4.0, 0.0]], dtype=T))
    opt = make("sgd-g", [{"params": [w], "grassmann": True}], lr=0.1)
    w.grad = torch.zeros_like(w)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([[0.6, 0.8, 0.0]], dtype=T))


# -- which weights are on the manifold --------------------------------------------------------------


def _manifold_names(model, optimizer="sgd-g"):
    names = {id(p): n for n, p in model.named_parameters()}
    return sorted(names[id(p)] for p in manifold_weights(model, optimizer))


def test_only_undercomplete_weights_that_a_per_channel_norm_reads_alone_are_chosen():
    assert _manifold_names(BNNet()) == ["conv1.weight"]  # conv2 has 40 units for 4 inputs; fc feeds no norm


class ResidualReadsTheConv(nn.Module):
    """conv_a's output goes to a BN and to the residual sum (not scale invariant); conv_b's
    to a BN only; conv_c's to a GroupNorm (channels normalized together)."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(8, 4, 3, padding=1, bias=False), NormFactory("bn")(4)
        self.conv_b, self.bn_b = nn.Conv2d(4, 4, 3, padding=1, bias=False), NormFactory("bn")(4)
        self.conv_c, self.gn_c = nn.Conv2d(4, 4, 3, padding=1, bias=False), NormFactory.of("gn", norm_groups=2)(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        a = self.conv_a(x)
        x = F.relu(self.bn_a(a) + a)
        x = F.relu(self.bn_b(self.conv_b(x)))
        x = F.relu(self.gn_c(self.conv_c(x)))
        return self.fc(x.mean(dim=(2, 3)))


def test_a_layer_read_also_by_a_residual_or_normalized_jointly_stays_euclidean():
    assert _manifold_names(ResidualReadsTheConv()) == ["conv_b.weight"]


def _model(**changes):
    config = TrialConfig(dataset="synthetic", **changes)
    return build_model(config, dataset_source("synthetic"))


def test_in_the_resnet_every_undercomplete_conv_is_chosen_and_the_classifier_is_not():
    """Every conv of the CIFAR ResNet feeds a BN only; the 1×1 projection shortcuts (16 →
    32) and the stem on one input channel (9 inputs, 16 units) have more units than
    inputs, so they stay Euclidean by the authors' rule."""
    model = _model(arch="resnet", optimizer="sgd-g")
    names = _manifold_names(model)
    convs = {n: p for n, p in model.named_parameters() if p.dim() == 4}
    assert names == sorted(n for n, p in convs.items() if p.shape[0] < p[0].numel())
    shortcuts = [n for n in convs if "shortcut" in n]
    assert shortcuts and not set(shortcuts) & set(names)
    assert "stem.0.weight" not in names and not any(n.startswith("head") for n in names) and len(names) == 6


def test_the_trial_builds_euclidean_groups_first_and_the_manifold_at_the_ratio():
    config = TrialConfig(dataset="synthetic", optimizer="adam-g", lr=0.02, lr_scaling="none", weight_decay=1e-3,
                         weight_decay_mode="decoupled", grassmann_lr_ratio=4.0)
    model = build_model(config, dataset_source("synthetic"))
    opt = build_optimizer(config, model)
    flags = [g["grassmann"] for g in opt.param_groups]
    assert flags == sorted(flags) and flags[0] is False and flags[-1] is True
    manifold = [g for g in opt.param_groups if g["grassmann"]]
    assert all(g["lr"] == pytest.approx(0.08) and g["bench_decay"] == 0.0 for g in manifold)
    assert opt.param_groups[0]["lr"] == 0.02 and opt.param_groups[0]["bench_decay"] == 1e-3
    assert manifold[0]["betas"] == (0.9, 0.99) and manifold[0]["eps"] == 1e-8 and manifold[0]["clip"] == 0.1


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(norm="gn"), "its norm layers are gn, which do not make a single unit's weights scale invariant"),
        (dict(norm="none"), "it has no norm layer"),
        (dict(arch="vit", norm="bn"), "cannot trace this architecture"),
        (dict(conv="wn"), "conv=wn stores g and v"),
        (dict(train_only_norm=True), "train_only_norm freezes the weights"),
        (dict(momentum=0.0, nesterov=True), "Nesterov momentum needs momentum > 0"),
    ],
    ids=["gn", "no-norm", "vit", "weight-norm", "train-only-norm", "nesterov"],
)
@pytest.mark.parametrize("optimizer", ["sgd-g", "adam-g"])
def test_meaningless_combinations_are_refused_before_anything_runs(optimizer, changes, message):
    with pytest.raises(ConfigError, match=message) as caught:
        preflight(TrialConfig(dataset="synthetic", optimizer=optimizer, **changes))
    assert "\n" not in str(caught.value)


def test_options_are_read_only_by_the_grassmann_entries_and_keep_every_other_id():
    assert TrialConfig(optimizer="sgd", grassmann_clip=0.5).trial_id == TrialConfig(optimizer="sgd").trial_id
    assert TrialConfig(optimizer="adam", adamg_beta2=0.5).trial_id == TrialConfig(optimizer="adam").trial_id
    assert TrialConfig(optimizer="sgd-g", grassmann_clip=0.5).trial_id != TrialConfig(optimizer="sgd-g").trial_id
    assert "beta1" not in OPTIMIZERS.entry("sgd-g").option_names
    with pytest.raises(ConfigError, match="grassmann_ortho must be a number ≥ 0"):
        TrialConfig(optimizer="sgd-g", grassmann_ortho=-1.0)


# -- in training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgd-g", "adam-g"])
def test_a_state_dict_round_trip_continues_the_same_trajectory(name):
    torch.manual_seed(0)
    model = BNNet().to(T)
    opt = make(name, model, lr=0.05)
    data = batches(4)

    def step(m, o, batch):
        o.zero_grad()
        F.cross_entropy(m(batch[0]), batch[1]).backward()
        o.step()

    for batch in data[:2]:
        step(model, opt, batch)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = BNNet().to(T)
    resumed_opt = make(name, resumed, lr=0.05)
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["opt"])
    for batch in data[2:]:
        step(model, opt, batch)
        step(resumed, resumed_opt, batch)
    for a, b in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["sgd-g", "adam-g"])
def test_a_tiny_bn_network_trains_without_diverging(name):
    config = TrialConfig(dataset="synthetic", arch="cnn", width=8, depth=2, optimizer=name, lr=0.01,
                         lr_scaling="none", epochs=3, batch_size=32, wd_exclude_1d=True, nesterov=True)
    result = run_trial(config)
    assert result.status == "completed", result.error
    losses = [e["train_loss"] for e in result.epochs]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]

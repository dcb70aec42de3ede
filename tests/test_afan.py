"""A-FAN (bench/trial/afan.py) against the paper's equations and the authors' code.

The references, re-implemented here from VITA-Group/CV_A-FAN (commit bf6a5ae, on CPU: their
``.cuda()`` calls and ``Variable`` wrapper left out):

- ``Classification/attack_algo.py``: ``PGD`` (signed-gradient ascent on the loss of the
  network's layers from ``start_idx`` on, ``x_adv.data.add_(gamma * torch.sign(grad0.data))``,
  projected by ``linfball_proj`` → ``tensor_clamp`` when ``clip``);
- ``Classification/main_perturb.py``: ``train``'s step (the features up to ``perturb_idx``,
  detached; ``PGD``; the adversarial and the full clean passes; ``(criterion(output_adv,
  target) + criterion(output_clean, target)) / 2``), on ``resnet_s.py``'s network as one
  ``nn.Sequential`` cut by index (``sequential_model[start_point:end_point]``);
- ``Segmentation/attack_algo.py``: ``mix_feature`` (the moment exchange), which their
  segmentation and detection training apply to the adversarial features (``mix_feature(
  feature_map, adversarial)``, ``main_aug_final.py``).

The paper's equations (Chen et al. 2022, arXiv:2103.12171) are checked as properties: the
ascent stays in the ℓ∞ ball and raises the loss; the exchanged feature has the adversarial
feature's mean over the channels and its standard deviation.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError
from bench.provenance import code_fingerprint
from bench.spec import TrialConfig, trial_from_assignments
from bench.trial import build_model, preflight, run_trial
from bench.trial.afan import PIXEL, FeatureAugmentation, build_afan, exchange_moments, perturb, split
from bench.zoo.datasets import dataset_source

SOURCE = dataset_source("synthetic")  # 1×8×8 images, 10 classes
TINY = dict(dataset="synthetic", width=4, batch_size=32, epochs=1, train_subset=64, val_subset=32)


# -- the authors' code ------------------------------------------------------------------
def tensor_clamp(t, min, max, in_place=True):  # their names
    res = t if in_place else t.clone()
    idx = res.data < min
    res.data[idx] = min[idx]
    idx = res.data > max
    res.data[idx] = max[idx]
    return res


def linfball_proj(center, radius, t, in_place=True):
    return tensor_clamp(t, min=center - radius, max=center + radius, in_place=in_place)


def authors_pgd(x, loss_fn, y, model, steps, gamma, start_idx, layer_number, eps, clip):
    x_adv = x.clone().requires_grad_(True)  # randinit=False, as their command
    for _ in range(steps):
        out = model[start_idx:layer_number](x_adv)
        loss_adv0 = loss_fn(out, y)
        grad0 = torch.autograd.grad(loss_adv0, x_adv, only_inputs=True)[0]
        x_adv.data.add_(gamma * torch.sign(grad0.data))
        if clip:
            linfball_proj(x, eps, x_adv, in_place=True)
    return x_adv


def mix_feature(clean_feature, adv_feature):
    eps = 1e-5
    mean_cl = clean_feature.mean(dim=1, keepdim=True)
    std_cl = (clean_feature.var(dim=1, keepdim=True) + eps).sqrt()
    mean_adv = adv_feature.mean(dim=1, keepdim=True)
    std_adv = (adv_feature.var(dim=1, keepdim=True) + eps).sqrt()
    mix = (clean_feature - mean_cl) / std_cl
    return mix * std_adv + mean_adv


def authors_step(model, perturb_idx, x, target, *, steps, gamma, eps, clip, mix):
    """``main_perturb.py``'s step on ``model`` (an ``nn.Sequential``); the loss, after backward."""
    criterion = nn.CrossEntropyLoss()
    layer_number = len(model)
    feature_map = model[0:perturb_idx](x).detach()
    feature_map_adv = authors_pgd(feature_map, criterion, target, model, steps, gamma, perturb_idx, layer_number,
                                  eps, clip)
    if mix:
        feature_map_adv = mix_feature(feature_map, feature_map_adv)
    output_adv = model[perturb_idx:layer_number](feature_map_adv)
    output_clean = model[0:layer_number](x)
    loss = (criterion(output_adv, target) + criterion(output_clean, target)) / 2
    loss.backward()
    return loss


# -- helpers ----------------------------------------------------------------------------
def _model(**values):
    torch.manual_seed(0)
    return build_model(TrialConfig(**{**TINY, **values}), SOURCE)


def _batch(n=16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _as_sequential(resnet):
    """The harness's ResNet as the authors' one ``nn.Sequential`` (stem, blocks, pool, linear)."""
    return nn.Sequential(resnet.stem, *resnet.stages, *resnet.head)


# -- the ascent -----------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [None, 2.0])
def test_perturb_is_the_authors_pgd(eps):
    model = _as_sequential(_model(arch="resnet"))  # depth 8: stem, 3 blocks, head
    x, y = _batch()
    idx = 2  # the stem and the first stage
    feature = model[:idx](x).detach()
    ours_tail, theirs = copy.deepcopy(model[idx:]), copy.deepcopy(model)  # train mode: the tail's statistics move
    ours = perturb(ours_tail, feature, lambda out: F.cross_entropy(out, y), 5, 0.5 * PIXEL,
                   eps * PIXEL if eps is not None else None)
    reference = authors_pgd(feature, nn.CrossEntropyLoss(), y, theirs, 5, 0.5 / 255, idx, len(theirs),
                            (eps or 0) / 255, eps is not None)
    torch.testing.assert_close(ours, reference.detach(), rtol=0, atol=1e-7)
    for a, b in zip(ours_tail.state_dict().values(), theirs[idx:].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_ascent_stays_in_the_ball_and_raises_the_loss():
    model = _as_sequential(_model(arch="resnet")).eval()  # fixed statistics: the losses compare
    x, y = _batch()
    feature, tail = model[:2](x).detach(), model[2:]

    def loss(out):
        return F.cross_entropy(out, y)

    clean = loss(tail(feature))
    for eps in (0.01, 0.03):
        adversarial = perturb(tail, feature, loss, 5, 0.01, eps)
        assert (adversarial - feature).abs().max() <= eps + 1e-7
        assert loss(tail(adversarial)) > clean
    free = perturb(tail, feature, loss, 3, 0.01, None)  # no projection: T steps of γ at most
    assert (free - feature).abs().max() <= 3 * 0.01 + 1e-7
    assert loss(tail(free)) > clean
    assert all(p.grad is None for p in model.parameters())  # only the feature's gradient is taken


# -- the normalization ------------------------------------------------------------------
def test_exchange_moments_is_the_authors_mix_feature_and_carries_the_adversarial_moments():
    g = torch.Generator().manual_seed(2)
    clean = torch.randn(2, 3, 4, 4, generator=g)
    adversarial = 1.5 * clean + 0.3 * torch.randn(2, 3, 4, 4, generator=g) + 0.2
    ours = exchange_moments(clean, adversarial)
    torch.testing.assert_close(ours, mix_feature(clean, adversarial), rtol=1e-6, atol=1e-6)
    # ĥ = σ'·(h − μ)/σ + μ', moments over the channels with σ² = Var + 1e-5
    torch.testing.assert_close(ours.mean(1), adversarial.mean(1), rtol=0, atol=1e-6)
    var, var_adv = clean.var(1), adversarial.var(1)
    torch.testing.assert_close(ours.var(1), (var_adv + 1e-5) * var / (var + 1e-5), rtol=1e-5, atol=1e-6)


# -- the step -------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("eps", [None, 2.0])
def test_the_step_is_the_authors(normalize, eps):
    """Loss, gradients and the tail's BatchNorm statistics equal the authors' step (their
    classification step; with normalize, ``mix_feature`` applied as in their segmentation)."""
    network = _model(arch="resnet")
    theirs = _as_sequential(copy.deepcopy(network))
    config = TrialConfig(**TINY, arch="resnet", afan=True, afan_norm=normalize, afan_eps=eps)
    afan = build_afan(config, network)
    assert isinstance(afan, FeatureAugmentation)
    x, y = _batch()
    _, loss = afan.loss(x, y)
    loss.backward()
    reference = authors_step(theirs, 2, x, y, steps=5, gamma=0.5 / 255, eps=(eps or 0) / 255, clip=eps is not None,
                             mix=normalize)
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-7)
    ours = dict(_as_sequential(network).named_parameters())
    for name, param in theirs.named_parameters():
        torch.testing.assert_close(ours[name].grad, param.grad, rtol=1e-5, atol=1e-7, msg=name)
    ours_buffers = dict(_as_sequential(network).named_buffers())
    for name, buffer in theirs[2:].named_buffers():  # the tail's (a slice keeps the names); the authors run the head twice
        torch.testing.assert_close(ours_buffers[name], buffer, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(("arch", "values", "stages"), [
    ("resnet", {}, 3), ("resnet", {"norm": "mimic"}, 3), ("cnn", {}, 2), ("cnn", {"depth": 6}, 3),
])
def test_head_then_tail_is_the_network(arch, values, stages):
    model = _model(arch=arch, **values).eval()
    x, _ = _batch(4)
    for stage in range(1, stages + 1):
        head, tail = split(TrialConfig(**TINY, arch=arch, **values, afan=True, afan_stage=stage), model)
        torch.testing.assert_close(tail(head(x)), model(x), rtol=0, atol=0)
        assert {id(p) for p in [*head.parameters(), *tail.parameters()]} == {id(p) for p in model.parameters()}
    with pytest.raises(ConfigError, match=f"has {stages} stages"):
        split(TrialConfig(**TINY, arch=arch, **values, afan=True, afan_stage=stages + 1), model)


# -- a trial ------------------------------------------------------------------------------
def test_a_trial_trains_with_afan_and_differs_from_the_plain_one():
    for arch in ("resnet", "cnn"):
        plain = TrialConfig(**TINY, arch=arch)
        with_afan = plain.replace(afan=True)
        a, b = run_trial(plain), run_trial(with_afan)
        assert a.status == b.status == "completed", b.error
        assert a.epochs[0]["train_loss"] != b.epochs[0]["train_loss"]
        assert "option:afan" in b.env["code"] and "option:afan" not in a.env["code"]


def test_ids_are_unchanged_when_off_and_carry_only_what_is_chosen():
    plain = TrialConfig(**TINY, arch="resnet")
    assert plain.replace(afan=False).trial_id == plain.trial_id
    assert not any(k.startswith("afan") for k in plain.canonical())
    on = plain.replace(afan=True)
    assert {k for k in on.canonical() if k.startswith("afan")} == {"afan"}
    assert on.replace(afan_steps=3).canonical()["afan_steps"] == 3
    assert "option:afan" in code_fingerprint(on) and "option:afan" not in code_fingerprint(plain)


# -- mistakes -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    {"afan_steps": 0}, {"afan_step_size": 0}, {"afan_eps": 0}, {"afan_weight": 0}, {"afan_weight": 1},
    {"afan_stage": 0}, {"afan_steps": 2.5},
])
def test_bad_values_are_refused(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        TrialConfig(**TINY, arch="resnet", afan=True, **bad)


def test_options_without_afan_do_nothing():
    with pytest.raises(ConfigError, match="afan_steps.*does nothing"):
        trial_from_assignments({**TINY, "arch": "resnet", "afan_steps": 3})


@pytest.mark.parametrize(("values", "message"), [
    ({"arch": "vit"}, "stages are defined for arch=resnet and arch=cnn .*not for arch=vit"),
    ({"arch": "mlp"}, "not for arch=mlp"),
    ({"arch": "resnet", "afan_stage": 4}, "afan_stage=4, but this resnet has 3 stages"),
    ({"arch": "cnn", "depth": 1}, "has 0 stages"),
    ({"arch": "resnet", "compile": True}, "compile=false"),
])
def test_what_afan_cannot_cut_is_refused_before_anything_runs(values, message):
    with pytest.raises(ConfigError, match=message):
        preflight(TrialConfig(**{**TINY, **values}, afan=True))

"""Adversarial Feature Augmentation and Normalization (A-FAN) in the training step.

Chen, Cheng, Gan, Wang, Wang, Wang & Liu, "Adversarial Feature Augmentation and
Normalization for Visual Recognition", TMLR 2022, arXiv:2103.12171. The network is cut
at the output of a stage, f = tail ∘ head. Each training step:

1. Adversarial feature augmentation (A-FA): the clean feature h = head(x) is perturbed by
   projected gradient ascent on the loss of the tail (PGD in feature space), started at h
   (no random start):

       h⁰ = h,    hᵗ⁺¹ = Π(hᵗ + γ·sign(∇ₕ L(tail(hᵗ), y))),    t = 0 … T − 1

   Π the projection onto the ℓ∞ ball ‖h' − h‖∞ ≤ ε (``afan_eps``), or none (null, the
   default: the authors' command runs without it, and the feature then moves at most T·γ).
2. Adversarial feature normalization (A-FN, ``afan_norm``): the clean feature, normalized
   by its own moments, takes the adversarial feature's,

       ĥ = σ(h') · (h − μ(h)) / σ(h) + μ(h'),    σ(·) = √(Var(·) + 10⁻⁵)

   μ and Var (unbiased) taken over the channels at each position of each example; without
   it ĥ = h'.
3. The loss is (1 − w)·L(tail(h), y) + w·L(tail(ĥ), y), w = ``afan_weight``. ĥ is
   detached: the adversarial term trains the tail only, the clean one the whole network.

As in the authors' code (VITA-Group/CV_A-FAN): the ascent and the stage are their
``Classification/attack_algo.py`` (``PGD``) and ``Classification/main_perturb.py``
(``train``: ``feature_map`` detached, ``PGD``, then ``(criterion(output_adv, target) +
criterion(output_clean, target)) / 2``); the normalization is their ``mix_feature``
(``Segmentation/attack_algo.py``, the same in ``Detection/attack_algo.py``), applied to the
adversarial features of their segmentation and detection training (``main_aug_final.py``,
``train_aug_final.py``, ``--mix_layer 11``): their classification code performs the
augmentation only (its README says so); ``afan_norm: false`` is that code. The paper's
abstract speaks of statistics "from batch normalization"; the released code takes the
moments over the channels (the positional normalization of MoEx), which is followed here.
Every pass runs in training mode, so the tail's BatchNorm statistics follow the PGD passes
too, as the authors' ``model.train()`` loop does; the head runs once per step, where their
``train`` runs it twice (its detached features, then the clean output), which only moves
the head's running statistics twice toward the same batch's (the gradients are the same).

Defaults, the authors' classification command (``Classification/cmd/run_perturb.sh`` with
``main_perturb.py``'s defaults, ResNet-56 on CIFAR-10): the output of the first stage
(``--perturb_idx 13``: stem and the first stage's nine blocks), T = 5 steps of γ = 0.5/255
(``--gamma 0.5``, divided by 255 in their code; ``afan_step_size`` and ``afan_eps`` are in
those units, 1/255 of a feature unit), no projection (``--clip`` not given; their ε would be
2/255), no random start, w = ½. The normalization's ε = 10⁻⁵ is ``mix_feature``'s.

Stages: ``resnet``'s three stages of residual blocks (the authors' ResNet-56 and the
harness's CIFAR-style ResNet are the same network); for ``cnn``, whose layers the paper
does not have, a stage is the convs before each 2×2 max-pool (its output: the input of that
pool). Other architectures are refused, and so is ``compile`` (it compiles the whole model,
and A-FAN runs it in two parts). The authors train in float32; under bf16 or fp16 autocast
the features are half-precision, whose resolution near 1 (2⁻⁸, 2⁻¹¹) is coarser than a step
of 0.5/255 ≈ 2⁻⁹, so there a step is partly rounded away. Written by hand: no library offers
feature-space PGD or this moment exchange (about twenty lines of tensor operations).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import ConfigError
from bench.spec import TrialConfig
from bench.zoo.archs.resnet import ResNet

PIXEL = 1 / 255  # afan_step_size and afan_eps are in these units, as the authors' --gamma and --eps
MOMENT_EPS = 1e-5  # added to the variance in the moment exchange (the authors' mix_feature)


def perturb(tail: nn.Module, feature: Tensor, loss: Callable[[Tensor], Tensor], steps: int, step_size: float,
            eps: float | None) -> Tensor:
    """The adversarial feature: ``steps`` signed-gradient ascent steps of ``step_size`` on
    ``loss(tail(h'))`` from h' = ``feature``, each projected onto the ℓ∞ ball of radius
    ``eps`` around it (None: no projection). Returned detached; no gradient reaches the
    parameters (only the feature's is taken)."""
    feature = feature.detach()
    adversarial = feature.clone().requires_grad_(True)
    for _ in range(steps):
        (grad,) = torch.autograd.grad(loss(tail(adversarial)), adversarial)
        with torch.no_grad():
            adversarial.add_(grad.sign(), alpha=step_size)
            if eps is not None:
                torch.clamp(adversarial, feature - eps, feature + eps, out=adversarial)
    return adversarial.detach()


def exchange_moments(clean: Tensor, adversarial: Tensor, eps: float = MOMENT_EPS) -> Tensor:
    """A-FN: ``clean`` normalized by its mean and standard deviation over the channels (dim
    1, at each position of each example) and given ``adversarial``'s: σ'·(h − μ)/σ + μ'."""
    var, mean = torch.var_mean(clean, dim=1, keepdim=True)
    var_adv, mean_adv = torch.var_mean(adversarial, dim=1, keepdim=True)
    return (clean - mean) / (var + eps).sqrt() * (var_adv + eps).sqrt() + mean_adv


class FeatureAugmentation:
    """A trial's A-FAN: the network cut at a stage, and the loss of a training step."""

    def __init__(self, head: nn.Module, tail: nn.Module, *, steps: int, step_size: float, eps: float | None,
                 weight: float, normalize: bool) -> None:
        self.head, self.tail = head, tail
        self.steps, self.step_size, self.eps = steps, step_size, eps
        self.weight, self.normalize = weight, normalize

    def loss(self, x: Tensor, target: Tensor, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
        """The clean logits and the step's loss, (1 − w)·L(clean) + w·L(adversarial); the
        adversarial pass before the clean one, as in the authors' step."""

        def criterion(logits: Tensor) -> Tensor:
            return F.cross_entropy(logits, target, label_smoothing=label_smoothing)

        feature = self.head(x)
        adversarial = perturb(self.tail, feature, criterion, self.steps, self.step_size, self.eps)
        if self.normalize:
            adversarial = exchange_moments(feature.detach(), adversarial)
        adversarial_loss = criterion(self.tail(adversarial))
        logits = self.tail(feature)
        return logits, (1 - self.weight) * criterion(logits) + self.weight * adversarial_loss


def _unwrapped(model: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """The architecture's network and the layers a norm added after it (MimicNorm's last
    BatchNorm: ``nn.Sequential(network, last)``, :func:`bench.zoo.norms.mimic.wrap`)."""
    if isinstance(model, nn.Sequential) and len(model) == 2 and isinstance(model[1], nn.BatchNorm1d):
        return model[0], [model[1]]
    return model, []


def _resnet_stages(network: nn.Module) -> list[tuple[list[nn.Module], list[nn.Module]]]:
    assert isinstance(network, ResNet)
    blocks = list(network.stages)
    per_stage = len(blocks) // 3
    return [([network.stem, *blocks[: k * per_stage]], [*blocks[k * per_stage :], network.head]) for k in (1, 2, 3)]


def _cnn_stages(network: nn.Module) -> list[tuple[list[nn.Module], list[nn.Module]]]:
    layers = list(network)
    pools = [i for i, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d)]
    return [(layers[:i], layers[i:]) for i in pools]


STAGES = {"resnet": _resnet_stages, "cnn": _cnn_stages}  # the architectures A-FAN cuts, and where


def split(config: TrialConfig, model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(head, tail): ``model`` cut at the output of stage ``afan_stage``, sharing its layers."""
    check_afan(config)
    network, after = _unwrapped(model)
    stages = STAGES[config.arch](network)
    if config.afan_stage > len(stages):
        cnn = " (a cnn's stage is the convs before a 2×2 max-pool, one after every second conv)" if config.arch == "cnn" else ""
        raise ConfigError(
            f"afan_stage={config.afan_stage}, but this {config.arch} has {len(stages)} stages{cnn}. "
            + (f"Choose afan_stage from 1 to {len(stages)}." if stages else "Use depth ≥ 2, or turn afan off.")
        )
    head, tail = stages[config.afan_stage - 1]
    return nn.Sequential(*head), nn.Sequential(*tail, *after)


def check_afan(config: TrialConfig) -> None:
    """Refuses A-FAN where it is not defined: an architecture without stages, torch.compile."""
    if not config.afan:
        return
    if config.arch not in STAGES:
        raise ConfigError(
            f"afan perturbs the output of a stage of the network (the authors perturb the output of ResNet-56's "
            f"first stage); stages are defined for arch={' and arch='.join(STAGES)} (resnet: its three stages of "
            f"residual blocks; cnn: the convs before each max-pool), not for arch={config.arch}. Use one of those, "
            "or turn afan off."
        )
    if config.compile:
        raise ConfigError(
            "afan runs the network in two parts (the head up to the perturbed stage, then the tail several times), "
            "and compile=true compiles the whole model as one; run afan with compile=false."
        )


def build_afan(config: TrialConfig, model: nn.Module) -> FeatureAugmentation | None:
    """The trial's A-FAN on ``model`` (None when ``afan`` is off)."""
    if not config.afan:
        return None
    head, tail = split(config, model)
    eps = config.afan_eps * PIXEL if config.afan_eps is not None else None
    return FeatureAugmentation(head, tail, steps=config.afan_steps, step_size=config.afan_step_size * PIXEL, eps=eps,
                               weight=config.afan_weight, normalize=config.afan_norm)

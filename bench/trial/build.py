"""What one trial trains: the model, optimizer, schedule and augmentation its config names.

Each is built by its registry (:meth:`bench.zoo.registry.Registry.build`), which passes
an entry exactly the options it declares, so nothing here maps config fields to keyword
arguments. What stacks on any entry is applied here: MimicNorm's model-level change,
"train only the norm layers", the weight-decay form, LAWN, Singular Value Bounding, the
orthogonal starts of SVB and orthonormal decay, backward error modulation.
"""

from __future__ import annotations

import contextlib
import inspect
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.errors import ConfigError
from bench.spec import TrialConfig
from bench.trial.afan import build_afan
from bench.trial.ema import check_ema
from bench.zoo.activations import ActivationFactory
from bench.zoo.augment import Augment, AugmentContext
from bench.zoo.convs import ConvFactory, ConvKind
from bench.zoo.datasets import DatasetSource, dataset_source
from bench.zoo.norms import NormFactory, is_norm_module
from bench.zoo.optimizers import make as make_optimizer
from bench.zoo.registry import ACTIVATIONS, ARCHS, AUGMENTS, CONVS, NORMS
from bench.zoo.schedules import schedule_factor


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return check_device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_device(device: str, *, available: bool = True) -> torch.device:
    """The torch device named ``device``, refused with one paragraph when torch does not
    know it or, with ``available``, when this machine has none of it (``cuda`` without a
    GPU): checked before anything runs, not as a failed trial."""
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"Unknown torch device {device!r}. Use cpu, cuda (or cuda:N for one GPU) or mps, or leave --device "
            "unset to use a GPU when there is one."
        ) from None
    present = {"cuda": torch.cuda.is_available, "mps": lambda: torch.backends.mps.is_available()}
    if available and chosen.type in present and not present[chosen.type]():
        raise ConfigError(
            f"--device {device} asks for a {chosen.type} device, but torch sees none on this machine. "
            "Use --device cpu, or leave --device unset to use a GPU when there is one."
        )
    if available and chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0."
        )
    return chosen


def autocast(config: TrialConfig, device: torch.device) -> Any:
    """The config's precision for forward passes and the loss: ``torch.autocast`` to bf16
    or fp16, a no-op context for fp32."""
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if config.precision not in dtypes:
        return contextlib.nullcontext()  # a disabled autocast still costs microseconds per step
    return torch.autocast(device.type, dtype=dtypes[config.precision])


def grad_scaler(config: TrialConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs its loss scaled so small gradients do not underflow (bf16 has fp32's
    range and needs none); None otherwise."""
    return torch.amp.GradScaler(device.type) if config.precision == "fp16" else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def norm_factory(config: TrialConfig) -> NormFactory:
    return NormFactory(config.norm, NORMS.entry(config.norm).kwargs(config))


def activation_factory(config: TrialConfig) -> ActivationFactory | None:
    """The config's activation; None for ``activation: null`` (the architecture's own).
    An architecture whose builder takes no ``activation`` (a plugin's written without
    one) builds its own activations and refuses a chosen one."""
    entry = ACTIVATIONS.chosen(config)
    if entry is None:
        return None
    if "activation" not in inspect.signature(ARCHS.get(config.arch)).parameters:
        raise ConfigError(
            f"arch={config.arch} builds its own activations: its builder takes no activation factory, so "
            f"activation={entry.name} would be ignored. Leave activation unset (null) with arch={config.arch}, or "
            "give its builder an `activation: ActivationFactory` keyword (bench/zoo/archs/__init__.py)."
        )
    return ActivationFactory(entry.name, entry.kwargs(config))


def conv_factory(config: TrialConfig) -> ConvFactory:
    """The config's conv reparametrization; a model-level norm may bring its own (MimicNorm's
    centred convs: ``info['conv']``), which no other conv may replace."""
    forced = NORMS.entry(config.norm).info.get("conv")
    if forced and config.conv != "standard":
        raise ConfigError(
            f"norm={config.norm} brings its own conv ({forced!r}); conv={config.conv!r} cannot be combined with it. "
            f"Leave conv unset with norm={config.norm}."
        )
    name = forced or config.conv
    return ConvFactory(name, tuple(CONVS.entry(name).kwargs(config).items()))


def conv_kind(config: TrialConfig) -> ConvKind:
    return conv_factory(config).kind


def build_model(config: TrialConfig, source: DatasetSource) -> nn.Module:
    """The architecture with the config's norm, conv and activation; width, depth and
    activation left unset (null) take the builder's defaults. Model-level techniques are
    applied here: MimicNorm (centred convs and a last BatchNorm) and "train only the norm
    layers" (Frankle et al. 2020)."""
    chosen = {k: v for k, v in (("width", config.width), ("depth", config.depth),
                                ("activation", activation_factory(config))) if v is not None}
    norm, conv = norm_factory(config), conv_factory(config)
    model = ARCHS.build(
        config.arch, config, in_channels=source.in_channels, num_classes=source.num_classes,
        image_size=source.image_size, norm=norm, conv=conv, **chosen,
    )
    prepare = conv.kind.prepare
    if prepare is not None:
        prepare(model)
    if "model" in NORMS.entry(config.norm).tags:
        from bench.zoo.norms import mimic

        model = mimic.wrap(model, source.num_classes, norm)
    constrain_model(config, model)
    if config.train_only_norm:
        freeze_all_but_norms(model)
    return model


def constrain_model(config: TrialConfig, model: nn.Module) -> None:
    """The weight constraints' model-level parts: the orthogonal start of Singular Value
    Bounding (Jia et al. 2017, Algorithm 1) or of orthonormal decay (Xie et al. 2017, §4),
    and backward error modulation (Xie et al. 2017, §3.3)."""
    if config.svb and config.svb_init:
        from bench.zoo.optimizers.svb import orthogonal_init

        orthogonal_init(model)
    if config.weight_decay_mode == "orthonormal" and config.ortho_init:
        from bench.zoo.optimizers.orthonormal import orthonormal_init

        orthonormal_init(model)
    if config.error_modulation:
        from bench.zoo.optimizers.modulation import Modulation

        Modulation(model, config.error_modulation)


def build_augment(
    config: TrialConfig, image_size: int, num_classes: int, pixel_range: tuple[tuple[float, ...], tuple[float, ...]] | None = None
) -> Augment:
    """The config's augmentation, ``(images, labels, generator) -> (images, targets)``;
    ``pixel_range`` is the training images' per-channel (min, max), from
    :func:`bench.zoo.augment.value_range` (None: build only, to validate the options).
    Mixing augmentations return class probabilities as targets: the training loss is the
    cross-entropy against them, and the training accuracy counts a prediction correct when
    it is the target's most probable class (the dominant label)."""
    low, high = pixel_range if pixel_range is not None else (None, None)
    context = AugmentContext(image_size=image_size, num_classes=num_classes, low=low, high=high)
    return AUGMENTS.build(config.augment, config, context)


def freeze_all_but_norms(model: nn.Module) -> None:
    """Train only BatchNorm (Frankle et al. 2020, arXiv:2003.00152): every weight stays at
    its random initialization except the norm layers' affine γ and β."""
    norm_params = {id(p) for m in model.modules() if is_norm_module(m) for p in m.parameters()}
    if not norm_params:
        raise ConfigError(
            "train_only_norm=true trains only the norm layers' γ and β, but this model has none (norm=none, "
            "norm_affine=false, or a normalizer-free architecture). Choose a norm with an affine transform, e.g. bn."
        )
    for p in model.parameters():
        p.requires_grad_(id(p) in norm_params)


def build_optimizer(config: TrialConfig, model: nn.Module, steps: int = 1) -> torch.optim.Optimizer:
    """The config's optimizer over the model's trainable parameters, with its weight-decay
    form and, when asked, LAWN (free phase measured in optimizer steps) and Singular Value
    Bounding (period measured in optimizer steps) stacked on it."""
    from bench.zoo.optimizers.lawn import Lawn, final_layer_weights
    from bench.zoo.registry import OPTIMIZERS

    optimizer = make_optimizer(
        config.optimizer,
        model,
        lr=config.effective_lr,
        weight_decay=config.weight_decay,
        weight_decay_mode=config.weight_decay_mode,
        exclude_1d=config.wd_exclude_1d,
        shift_eps=config.wd_shift_eps,
        options=OPTIMIZERS.entry(config.optimizer).kwargs(config),
    )
    if config.lawn:
        Lawn(optimizer, final_layer_weights(model, config.lawn_layers), free_steps=round(config.lawn_free_epochs * steps))
    if config.svb:
        from bench.zoo.optimizers.svb import Svb

        Svb(optimizer, model, eps=config.svb_eps, period=max(1, round(config.svb_period * steps)),
            bbn_eps=config.svb_bbn_eps)
    return optimizer


def steps_per_epoch(config: TrialConfig, train_size: int) -> int:
    """Full batches per epoch: the last partial batch is dropped, so every step sees
    exactly ``batch_size`` examples (BatchNorm statistics stay comparable)."""
    return train_size // config.batch_size


def build_schedule(config: TrialConfig, optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(config, steps))


def preflight(config: TrialConfig) -> None:
    """Checks that need the zoo, done before any trial starts: the model builds with this
    norm (e.g. GroupNorm's groups divide every layer's channels), the optimizer and the
    schedule accept their options, the EMA model's statistics can be formed as asked, A-FAN's
    stage exists, and the batch fits the training set. Built on the meta device: no memory, no data."""
    source = dataset_source(config.dataset)
    train_size = min(source.train_size, config.train_subset or source.train_size)
    if config.batch_size > train_size:
        raise ConfigError(
            f"batch_size={config.batch_size} is larger than the training set ({train_size} images of "
            f"{config.dataset}{' after train_subset' if config.train_subset else ''}); no full batch fits."
        )
    if config.arch == "mlp" and config.norm == "bn" and config.batch_size == 1:
        raise ConfigError(
            "arch=mlp with norm=bn needs batch_size ≥ 2: the MLP's BatchNorm sees one value per feature in a "
            "batch of 1, so it has no batch statistics to normalize with (training fails at the first step). "
            "Use batch_size ≥ 2, or a norm without batch statistics (gn, ln) for batch size 1."
        )
    steps = steps_per_epoch(config, train_size)
    build_augment(config, source.image_size, source.num_classes)
    with torch.device("meta"):
        model = build_model(config, source)
        optimizer = build_optimizer(config, model, steps)
    build_schedule(config, optimizer, steps)
    check_ema(config, model)
    build_afan(config, model)  # refuses an architecture without stages, a stage it does not have


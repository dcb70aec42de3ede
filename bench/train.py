"""One trial: build data, model, optimizer and schedule from a TrialConfig, train, report.

This module knows nothing of Ray or of the store: :func:`run_trial` takes a config and a
callback that receives each epoch's metrics, and returns a :class:`TrialResult`. The loop
is the plain one (the torchvision-references shape): the whole dataset is a tensor on the
device, batches are index slices of a seeded permutation, augmentation is batched on the
device, no loader workers.

Outcomes: ``completed``; ``diverged`` when the training loss is NaN/inf or exceeds
``diverge_factor`` × the first step's loss (the step is recorded); ``failed`` for any
exception, with its traceback. A trial never raises.
"""

from __future__ import annotations

import math
import random
import resource
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.data import DATASETS, DatasetSource, Splits, load_dataset
from bench.errors import ConfigError
from bench.provenance import environment
from bench.spec import ARCH_OPTIONS, TrialConfig
from bench.zoo import mimic
from bench.zoo.agc import clip_gradients
from bench.steplog import SUMMARY_KEYS, StepLog, StepReport, grad_norm as gradient_norm
from bench.stability import StabilityParams
from bench.zoo.archs import ARCHS, first_layer
from bench.zoo.augment import AUGMENTS, Augment, AugmentContext, target_classes, value_range
from bench.zoo.convs import ConvFactory, weight_norm_data_init
from bench.zoo.norms import NormFactory, RenormSchedule, is_norm_module
from bench.zoo.lawn import Lawn, final_layer_weights
from bench.zoo.optimizers import make as make_optimizer
from bench.zoo.schedules import SCHEDULES

Report = Callable[[dict[str, Any]], None]
EVAL_BATCH = 1024


@dataclass
class TrialResult:
    status: str  # completed | diverged | failed
    summary: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    env: dict[str, Any] = field(default_factory=dict)


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def norm_factory(config: TrialConfig) -> NormFactory:
    return NormFactory(
        config.norm,
        groups=config.norm_groups,
        group_size=config.norm_group_size,
        eps=config.norm_eps,
        momentum=config.norm_momentum,
        affine=config.norm_affine,
        virtual_batch=config.norm_virtual_batch,
        renorm=RenormSchedule(
            config.renorm_rmax, config.renorm_dmax, config.renorm_start, config.renorm_rmax_at, config.renorm_dmax_at
        ),
    )


def build_model(config: TrialConfig, source: DatasetSource) -> nn.Module:
    """The architecture with the config's norm and conv; options left unset take the
    builder's defaults. Model-level techniques are applied here: MimicNorm (centred convs
    and a last BatchNorm) and "train only the norm layers" (Frankle et al. 2020)."""
    options: dict[str, Any] = {k: v for k, v in (("width", config.width), ("depth", config.depth)) if v is not None}
    options.update({name: getattr(config, name) for name in ARCH_OPTIONS.get(config.arch, ())})
    norm, conv = norm_factory(config), ConvFactory(config.conv)
    if config.norm == "mimic":
        if config.conv != "standard":
            raise ConfigError(
                f"MimicNorm brings its own conv (weight-centred, '{mimic.CONV}'); conv={config.conv!r} cannot be "
                "combined with it. Leave conv unset with norm=mimic."
            )
        conv = ConvFactory(mimic.CONV)
    model = ARCHS.get(config.arch)(
        in_channels=source.in_channels, num_classes=source.num_classes, image_size=source.image_size, norm=norm, conv=conv, **options
    )
    if config.norm == "mimic":
        model = mimic.wrap(model, source.num_classes, norm)
    if config.train_only_norm:
        freeze_all_but_norms(model)
    return model


def build_augment(
    config: TrialConfig, image_size: int, num_classes: int, pixel_range: tuple[tuple[float, ...], tuple[float, ...]] | None = None
) -> Augment:
    """The config's augmentation, ``(images, labels, generator) -> (images, targets)``;
    ``pixel_range`` is the training images' per-channel (min, max), from :func:`value_range`
    (None: build only, to validate the options). Mixing augmentations return class probabilities as targets:
    the training loss is the cross-entropy against them, and the training accuracy counts
    a prediction correct when it is the target's most probable class (the dominant label)."""
    low, high = pixel_range if pixel_range is not None else (None, None)
    context = AugmentContext(
        image_size=image_size,
        num_classes=num_classes,
        low=low,
        high=high,
        mixup_alpha=config.mixup_alpha,
        cutmix_alpha=config.cutmix_alpha,
        autoaugment_policy=config.autoaugment_policy,
        randaugment_ops=config.randaugment_ops,
        randaugment_magnitude=config.randaugment_magnitude,
    )
    return AUGMENTS.get(config.augment)(context)


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
    form and, when asked, LAWN stacked on it (free phase measured in optimizer steps)."""
    optimizer = make_optimizer(
        config.optimizer,
        model,
        weight_decay=config.weight_decay,
        weight_decay_mode=config.weight_decay_mode,
        exclude_1d=config.wd_exclude_1d,
        lr=config.effective_lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        beta1=config.beta1,
        beta2=config.beta2,
        eps=config.optimizer_eps,
        rmsprop_alpha=config.rmsprop_alpha,
        adadelta_rho=config.adadelta_rho,
        adax_beta2=config.adax_beta2,
        lars_eta=config.lars_eta,
        adabound_final_lr=config.adabound_final_lr,
        adabound_gamma=config.adabound_gamma,
    )
    if config.lawn:
        Lawn(optimizer, final_layer_weights(model, config.lawn_layers), free_steps=round(config.lawn_free_epochs * steps))
    return optimizer


def steps_per_epoch(config: TrialConfig, train_size: int) -> int:
    """Full batches per epoch: the last partial batch is dropped, so every step sees
    exactly ``batch_size`` examples (BatchNorm statistics stay comparable)."""
    return train_size // config.batch_size


def schedule_factor(config: TrialConfig, steps: int) -> Callable[[int], float]:
    """The config's schedule as a function of the optimizer step (``steps`` per epoch)."""
    return SCHEDULES.get(config.schedule)(
        total_steps=steps * config.epochs,
        steps_per_epoch=steps,
        warmup_steps=round(config.warmup_epochs * steps),
        milestones=config.lr_milestones,
        gamma=config.lr_gamma,
        sgdr_t0=config.sgdr_t0,
        sgdr_t_mult=config.sgdr_t_mult,
        poly_power=config.poly_power,
        onecycle_pct=config.onecycle_pct,
        onecycle_div=config.onecycle_div,
        onecycle_final_div=config.onecycle_final_div,
    )


def schedule_curve(config: TrialConfig, steps_per_epoch: int) -> tuple[list[float], list[float]]:
    """(epoch of each step, learning rate at that step) over the whole run: what
    ``bench zoo schedules --plot`` draws and the ``lr-schedule`` report section shows."""
    factor = schedule_factor(config, steps_per_epoch)
    total = steps_per_epoch * config.epochs
    return [s / steps_per_epoch for s in range(total)], [config.effective_lr * factor(s) for s in range(total)]


def build_schedule(config: TrialConfig, optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(config, steps))


def preflight(config: TrialConfig) -> None:
    """Checks that need the zoo, done before any trial starts: the model builds with this
    norm (e.g. GroupNorm's groups divide every layer's channels), the optimizer and the
    schedule accept their options, and the batch fits the training set. Built on the
    meta device: no memory, no data."""
    source = DATASETS.get(config.dataset)
    train_size = min(source.train_size, config.train_subset or source.train_size)
    if config.batch_size > train_size:
        raise ConfigError(
            f"batch_size={config.batch_size} is larger than the training set ({train_size} images of "
            f"{config.dataset}{' after train_subset' if config.train_subset else ''}); no full batch fits."
        )
    steps = steps_per_epoch(config, train_size)
    build_augment(config, source.image_size, source.num_classes)
    with torch.device("meta"):
        model = build_model(config, source)
        optimizer = build_optimizer(config, model, steps)
    build_schedule(config, optimizer, steps)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(x), EVAL_BATCH):
        logits = model(x[i : i + EVAL_BATCH])
        target = y[i : i + EVAL_BATCH]
        loss_sum += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    return loss_sum.item() / len(x), correct.item() / len(x)


def run_trial(
    config: TrialConfig,
    report: Report | None = None,
    *,
    data: Splits | None = None,
    data_dir: str | None = None,
    device: str | None = None,
    report_steps: StepReport | None = None,
) -> TrialResult:
    """Train one trial to the end of its budget; never raises. ``report`` gets each
    epoch's metrics; with ``config.log_steps``, ``report_steps`` gets the per-step records
    (once per epoch, before that epoch's metrics, and at divergence)."""
    result = TrialResult(status="failed")
    started = time.perf_counter()
    try:
        chosen = pick_device(device)
        result.env = environment(str(chosen))
        _train(config, result, report or (lambda _: None), report_steps or (lambda _: None), data, data_dir, chosen)
    except Exception:  # noqa: BLE001 - any failure is a trial outcome, the grid goes on
        result.status = "failed"
        result.error = traceback.format_exc()
    result.summary["wall_seconds"] = time.perf_counter() - started
    return result


def _train(
    config: TrialConfig,
    result: TrialResult,
    report: Report,
    report_steps: StepReport,
    data: Splits | None,
    data_dir: str | None,
    device: torch.device,
) -> None:
    seed_everything(config.seed)
    if data is None:
        data = load_dataset(config.dataset, data_dir=data_dir, train_subset=config.train_subset, val_subset=config.val_subset)
    data = data.to(device)
    model = build_model(config, DATASETS.get(config.dataset)).to(device)
    steps = steps_per_epoch(config, len(data.train_x))
    if steps < 1:
        raise ConfigError(f"batch_size={config.batch_size} exceeds the {len(data.train_x)} training images.")
    optimizer = build_optimizer(config, model, steps)
    scheduler = build_schedule(config, optimizer, steps)
    augment = build_augment(config, data.image_size, data.num_classes, value_range(data.train_x))
    gen = torch.Generator(device=device).manual_seed(config.seed)
    if config.wn_init:
        # the paper initializes on one minibatch; a larger one (up to 512) gives steadier statistics
        init_idx = torch.randperm(len(data.train_x), generator=gen, device=device)[: max(config.batch_size, 512)]
        weight_norm_data_init(model, data.train_x[init_idx])
    params = [p for p in model.parameters() if p.requires_grad]
    summary = result.summary
    summary.update(effective_lr=config.effective_lr, steps_per_epoch=steps, device=str(device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    steplog = StepLog(report_steps, first_layer(model)) if config.log_steps else None
    first_loss: float | None = None
    step = 0
    best_val = -math.inf
    train_seconds = 0.0
    for epoch in range(1, config.epochs + 1):
        model.train()
        _sync(device)
        t0 = time.perf_counter()
        order = torch.randperm(len(data.train_x), generator=gen, device=device)
        loss_sum = torch.zeros((), device=device)
        grad_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        lr_now = optimizer.param_groups[0]["lr"]
        for i in range(steps):
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            x, target = augment(data.train_x[idx], data.train_y[idx], gen)
            logits = model(x)
            loss = F.cross_entropy(logits, target, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = gradient_norm(params)
            if config.agc_clip > 0:
                clip_gradients(model, config.agc_clip)
            value = loss.item()
            if first_loss is None:
                first_loss = value
            hits = (logits.argmax(1) == target_classes(target)).sum()
            if steplog is not None:
                steplog.record(step, epoch, value, hits, len(idx), grad_norm, optimizer.param_groups[0]["lr"])
            if not math.isfinite(value) or value > config.diverge_factor * max(first_loss, 1e-8):
                result.status = "diverged"
                summary.update(diverged_step=step, diverged_epoch=epoch, diverged_loss=value if math.isfinite(value) else None)
                summary.update(_final(result.epochs, best_val, step, train_seconds, device))
                _close_steplog(steplog, config, summary)
                return
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += loss.detach()
            grad_sum += grad_norm.detach()
            correct += hits
        _sync(device)
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        val_loss, val_acc = evaluate(model, data.val_x, data.val_y)
        best_val = max(best_val, val_acc)
        metrics = {
            "epoch": epoch,
            "step": step,
            "train_loss": loss_sum.item() / steps,
            "train_acc": correct.item() / (steps * config.batch_size),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr_now,
            "grad_norm": grad_sum.item() / steps,
            "epoch_seconds": time.perf_counter() - t0,
            "train_seconds": seconds,
            "samples_per_s": steps * config.batch_size / seconds if seconds > 0 else None,
            "peak_mem_mb": _peak_memory_mb(device),
        }
        result.epochs.append(metrics)
        if steplog is not None:
            steplog.flush()  # the epoch's steps land before its metrics
        report(metrics)
    result.status = "completed"
    summary.update(_final(result.epochs, best_val, step, train_seconds, device))
    _close_steplog(steplog, config, summary)


def _close_steplog(steplog: StepLog | None, config: TrialConfig, summary: dict[str, Any]) -> None:
    """Flushes the last steps and adds the run's stability metrics to its summary
    (the divergence rule is the trainer's own, so its factor is the config's)."""
    if steplog is None:
        return
    steplog.flush()
    metrics = steplog.stability(StabilityParams(diverge_factor=config.diverge_factor))
    summary.update({k: metrics[k] for k in SUMMARY_KEYS if metrics.get(k) is not None})


def _final(epochs: list[dict[str, Any]], best_val: float, step: int, train_seconds: float, device: torch.device) -> dict[str, Any]:
    last = epochs[-1] if epochs else {}
    return {
        "epochs_done": len(epochs),
        "steps": step,
        "final_val_acc": last.get("val_acc"),
        "final_val_loss": last.get("val_loss"),
        "final_train_loss": last.get("train_loss"),
        "final_train_acc": last.get("train_acc"),
        "best_val_acc": best_val if epochs else None,
        "train_seconds": train_seconds,
        "samples_per_s": (sum(e["samples_per_s"] * e["train_seconds"] for e in epochs) / train_seconds) if epochs and train_seconds else None,
        "peak_mem_mb": _peak_memory_mb(device),
    }

"""One trial: build data, model, optimizer and schedule from a TrialConfig, train, report.

This module knows nothing of Ray or of the store: :func:`run_trial` takes a config and a
callback that receives each epoch's metrics, and returns a :class:`TrialResult`. The loop
is the plain one (the torchvision-references shape): the whole dataset is a tensor on the
device, batches are index slices of a seeded permutation, augmentation is batched on the
device, no loader workers.

Outcomes: ``completed``; ``diverged`` when the training loss is NaN/inf or exceeds
``diverge_factor`` × the first step's loss (the step is recorded); ``failed`` for any
exception, with its traceback. A trial never raises. The callbacks that receive its
metrics are isolated: an exception in one (a store that cannot take a write) is logged
and training goes on, so a problem outside training never becomes a trial's outcome.
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError
from bench.metrics import declared_summary
from bench.provenance import environment
from bench.spec import TrialConfig
from bench.trial.build import (
    build_augment,
    build_model,
    build_optimizer,
    build_schedule,
    conv_kind,
    pick_device,
    seed_everything,
    steps_per_epoch,
)
from bench.trial.spikes import StabilityParams
from bench.trial.steplog import SUMMARY_KEYS, StepLog, StepReport, grad_norm as gradient_norm
from bench.zoo.archs import first_layer
from bench.zoo.augment import target_classes, value_range
from bench.zoo.datasets import Splits, dataset_source, load_dataset
from bench.zoo.optimizers.agc import clip_gradients

Report = Callable[[dict[str, Any]], None]
EVAL_BATCH = 1024
log = logging.getLogger(__name__)


def isolated(callback: Callable[[Any], None] | None, what: str) -> Callable[[Any], None]:
    """``callback``, with any exception it raises logged instead of raised (None: a no-op)."""
    if callback is None:
        return lambda _: None

    def call(value: Any) -> None:
        try:
            callback(value)
        except Exception as exc:  # noqa: BLE001 - the trial's outcome is training's alone
            log.warning("The %s callback raised %s: %s; training goes on.", what, type(exc).__name__, exc)

    return call


@dataclass
class TrialResult:
    status: str  # completed | diverged | failed
    summary: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    env: dict[str, Any] = field(default_factory=dict)


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
    (once per epoch, before that epoch's metrics, and at divergence). The result's ``env``
    is recorded as the trial runs: versions, commit, device, the fingerprints of the code
    it runs (``code``) and of the data it trains on (``data``)."""
    result = TrialResult(status="failed")
    started = time.perf_counter()
    try:
        chosen = pick_device(device)
        result.env = environment(str(chosen), config)
        _train(config, result, isolated(report, "epoch"), isolated(report_steps, "steps"), data, data_dir, chosen)
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
    result.env["data"] = data.fingerprint
    data = data.to(device)
    model = build_model(config, dataset_source(config.dataset)).to(device)
    steps = steps_per_epoch(config, len(data.train_x))
    if steps < 1:
        raise ConfigError(f"batch_size={config.batch_size} exceeds the {len(data.train_x)} training images.")
    optimizer = build_optimizer(config, model, steps)
    scheduler = build_schedule(config, optimizer, steps)
    augment = build_augment(config, data.image_size, data.num_classes, value_range(data.train_x))
    gen = torch.Generator(device=device).manual_seed(config.seed)
    data_init = conv_kind(config).data_init
    if data_init is not None:
        # weight norm's paper initializes on one minibatch; a larger one (up to 512) gives steadier statistics
        init_idx = torch.randperm(len(data.train_x), generator=gen, device=device)[: max(config.batch_size, 512)]
        data_init(model, data.train_x[init_idx])
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
    """The run metrics of the end of a trial (see :mod:`bench.metrics` for their definitions;
    a key not declared there raises)."""
    last = epochs[-1] if epochs else {}
    return declared_summary({
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
    })

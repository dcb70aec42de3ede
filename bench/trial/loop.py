"""One trial: build data, model, optimizer and schedule from a TrialConfig, train, report.

This module knows nothing of Ray or of the store: :func:`run_trial` takes a config and a
callback that receives each epoch's metrics, and returns a :class:`TrialResult`. The loop
is the plain one (the torchvision-references shape): the whole dataset is a tensor on the
device, batches are index slices of a seeded permutation, augmentation is batched on the
device, no loader workers. With ``ema_decay`` > 0 an exponential moving average of the model
(:mod:`bench.trial.ema`) is updated after every optimizer step and evaluated beside it. With
``afan`` the step's loss is A-FAN's (:mod:`bench.trial.afan`): the clean loss mixed with that
of a stage's output perturbed by PGD; the training loss recorded is that mixture.

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
from bench.trial.afan import build_afan
from bench.trial.build import (
    autocast,
    build_augment,
    build_model,
    build_optimizer,
    build_schedule,
    conv_kind,
    grad_scaler,
    pick_device,
    seed_everything,
    steps_per_epoch,
)
from bench.trial.checkpoint import Checkpoints, Position, deferred_signals, mismatch, restore, snapshot
from bench.trial.deploy import deployed_metrics
from bench.trial.ema import build_ema
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
    resumed_from: int | None = None  # the epoch a checkpoint resumed this attempt at (None: from the start)
    artifacts: dict[str, str] = field(default_factory=dict)  # kept files, by name (``weights``)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, channels_last: bool = False) -> tuple[float, float]:
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(x), EVAL_BATCH):
        batch = x[i : i + EVAL_BATCH]
        if channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        logits = model(batch)
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
    checkpoints: Checkpoints | None = None,
) -> TrialResult:
    """Train one trial to the end of its budget; never raises (but lets Ctrl-C and SIGTERM
    through). ``report`` gets each epoch's metrics; with ``config.log_steps``,
    ``report_steps`` gets the per-step records (once per epoch, before that epoch's
    metrics, and at divergence). The result's ``env`` is recorded as the trial runs:
    versions, commit, device, the fingerprints of the code it runs (``code``) and of the
    data it trains on (``data``).

    With ``checkpoints``, the trial resumes from the latest checkpoint it finds there (when
    it was made by this trial with this code and data), saves one after every epoch and,
    on SIGINT or SIGTERM in the main thread, one at the next step boundary before the
    signal goes on; a completed or diverged trial's checkpoints go (its final weights stay
    when the checkpoints keep them: ``result.artifacts``)."""
    result = TrialResult(status="failed")
    started = time.perf_counter()
    try:
        chosen = pick_device(device)
        result.env = environment(str(chosen), config)
        _train(
            config, result, isolated(report, "epoch"), isolated(report_steps, "steps"), data, data_dir, chosen, checkpoints
        )
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
    checkpoints: Checkpoints | None,
) -> None:
    seed_everything(config.seed)
    if data is None:
        data = load_dataset(config.dataset, data_dir=data_dir, train_subset=config.train_subset, val_subset=config.val_subset)
    result.env["data"] = data.fingerprint
    data = data.to(device)
    model = build_model(config, dataset_source(config.dataset)).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps = steps_per_epoch(config, len(data.train_x))
    if steps < 1:
        raise ConfigError(f"batch_size={config.batch_size} exceeds the {len(data.train_x)} training images.")
    optimizer = build_optimizer(config, model, steps)
    scheduler = build_schedule(config, optimizer, steps)
    augment = build_augment(config, data.image_size, data.num_classes, value_range(data.train_x))
    gen = torch.Generator(device=device).manual_seed(config.seed)
    identity = {"trial_id": config.trial_id, "code": result.env.get("code"), "data": data.fingerprint}
    state = _resumable(checkpoints, identity)
    data_init = conv_kind(config).data_init
    if data_init is not None and state is None:
        # weight norm's paper initializes on one minibatch; a larger one (up to 512) gives steadier statistics
        init_idx = torch.randperm(len(data.train_x), generator=gen, device=device)[: max(config.batch_size, 512)]
        data_init(model, data.train_x[init_idx])
    ema = build_ema(config, model)  # after any data-dependent init: the average starts from the initialized model
    afan = build_afan(config, model)
    params = [p for p in model.parameters() if p.requires_grad]
    summary = result.summary
    summary.update(effective_lr=config.effective_lr, steps_per_epoch=steps, device=str(device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    steplog = StepLog(report_steps, first_layer(model)) if config.log_steps else None
    pos = Position()
    if state is not None:
        pos = restore(state, model=model, optimizer=optimizer, scheduler=scheduler, generator=gen, device=device, ema=ema)
        result.epochs = list(state["epochs"])
        if steplog is not None and state["series"] is not None:
            steplog.series = state["series"]
        result.resumed_from = pos.epoch
    forward = torch.compile(model) if config.compile else model  # checkpoints hold the model's own state
    precision = autocast(config, device)
    scaler = grad_scaler(config, device)
    watch = DivergenceWatch(config.diverge_factor, device)
    watch.first_loss = pos.first_loss

    def save(at: Position) -> None:
        if checkpoints is not None:
            series = steplog.series if steplog is not None else None
            checkpoints.save(snapshot(
                at, identity=identity, model=model, optimizer=optimizer, scheduler=scheduler, generator=gen,
                epochs=result.epochs, series=series, ema=ema,
            ))

    def diverged(epoch: int, found: tuple[int, float]) -> None:
        step, loss = found
        result.status = "diverged"
        summary.update(diverged_step=step, diverged_epoch=epoch, diverged_loss=loss if math.isfinite(loss) else None)
        summary.update(_final(result.epochs, pos.best_val, step, pos.train_seconds, device))
        if steplog is not None:
            steplog.truncate(step)  # the steps a lazy check let run past the diverging one
        _close_steplog(steplog, config, summary)
        _finish(checkpoints, None, result)

    # read once: a config field costs microseconds, which add up at small batches
    batch, smoothing, clip, channels_last = config.batch_size, config.label_smoothing, config.agc_clip, config.channels_last
    with deferred_signals(enabled=checkpoints is not None) as signals:
        while pos.epoch <= config.epochs:
            epoch = pos.epoch
            model.train()
            _sync(device)
            t0 = time.perf_counter()
            if pos.order is None:  # a new epoch (else: one a checkpoint stopped in)
                pos.order = torch.randperm(len(data.train_x), generator=gen, device=device)
                pos.sums = {
                    "loss": torch.zeros((), device=device),
                    "grad": torch.zeros((), device=device),
                    "correct": torch.zeros((), device=device, dtype=torch.long),
                }
                pos.lr = optimizer.param_groups[0]["lr"]
            sums = pos.sums
            assert sums is not None
            for i in range(pos.offset, steps):
                if signals.requested:  # checkpoint here, at a step boundary, then stop
                    if (found := watch.check()) is not None:
                        return diverged(epoch, found)
                    _sync(device)
                    pos.offset, pos.seconds, pos.first_loss = i, pos.seconds + time.perf_counter() - t0, watch.first_loss
                    if steplog is not None:
                        steplog.flush()
                    save(pos)
                    signals.deliver()
                idx = pos.order[i * batch : (i + 1) * batch]
                x, target = augment(data.train_x[idx], data.train_y[idx], gen)
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with precision:
                    if afan is None:
                        logits = forward(x)
                        loss = F.cross_entropy(logits, target, label_smoothing=smoothing)
                    else:  # clean logits; the loss mixes the clean and the perturbed-feature passes
                        logits, loss = afan.loss(x, target, smoothing)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)  # the gradient norm and clipping see the true gradients
                else:
                    loss.backward()
                grad_norm = gradient_norm(params)
                if clip > 0:
                    clip_gradients(model, clip)
                loss = loss.detach()
                watch.see(pos.step, loss)
                hits = (logits.argmax(1) == target_classes(target)).sum()
                if steplog is not None:
                    steplog.record(pos.step, epoch, loss, hits, len(idx), grad_norm, optimizer.param_groups[0]["lr"])
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                if ema is not None:
                    ema.update(model)
                scheduler.step()
                pos.step += 1
                sums["loss"] += loss
                sums["grad"] += grad_norm.detach()
                sums["correct"] += hits
                if watch.due() and (found := watch.check()) is not None:
                    return diverged(epoch, found)
            if (found := watch.check()) is not None:  # the epoch's last steps, before it is evaluated
                return diverged(epoch, found)
            pos.first_loss = watch.first_loss
            _sync(device)
            seconds = pos.seconds + time.perf_counter() - t0
            pos.train_seconds += seconds
            with precision:
                val_loss, val_acc = evaluate(forward, data.val_x, data.val_y, channels_last=config.channels_last)
                if ema is not None:
                    averaged = ema.for_evaluation(data.train_x, pos.order, batch, channels_last)
                    ema_val_loss, ema_val_acc = evaluate(averaged, data.val_x, data.val_y, channels_last=channels_last)
            pos.best_val = max(pos.best_val, val_acc)
            metrics = {
                "epoch": epoch,
                "step": pos.step,
                "train_loss": sums["loss"].item() / steps,
                "train_acc": sums["correct"].item() / (steps * config.batch_size),
                "val_loss": val_loss,
                "val_acc": val_acc,
                **({"ema_val_loss": ema_val_loss, "ema_val_acc": ema_val_acc} if ema is not None else {}),
                "lr": pos.lr,
                "grad_norm": sums["grad"].item() / steps,
                "epoch_seconds": pos.seconds + time.perf_counter() - t0,
                "train_seconds": seconds,
                "samples_per_s": steps * config.batch_size / seconds if seconds > 0 else None,
                "peak_mem_mb": _peak_memory_mb(device),
            }
            result.epochs.append(metrics)
            if steplog is not None:
                steplog.flush()  # the epoch's steps land before its metrics
            report(metrics)
            pos = pos.next_epoch()
            save(pos)  # after the report: a kill between the two re-trains this epoch, identically
            if signals.requested:
                signals.deliver()
    result.status = "completed"
    summary.update(_final(result.epochs, pos.best_val, pos.step, pos.train_seconds, device))
    with precision:
        summary.update(declared_summary(
            deployed_metrics(config, model, data.val_x, data.val_y, evaluate, channels_last=config.channels_last)
        ))
    _close_steplog(steplog, config, summary)
    _finish(checkpoints, model, result)


CHECK_EVERY = 32  # optimizer steps between host checks for divergence (and at every epoch's end)


class DivergenceWatch:
    """Divergence, found without a host synchronisation per step.

    The loop hands each step's loss (a 0-d tensor, left on the device) to :meth:`see`;
    every :data:`CHECK_EVERY` steps and at each epoch's end, :meth:`check` stacks the
    steps seen since the last check and copies one answer to the host: the first step
    whose loss is NaN/inf or above ``factor`` × the first step's loss, with that loss. On
    an accelerator the host thus queues up to ``CHECK_EVERY`` steps ahead; training stops
    at most that many steps after a divergence, and the step and loss it reports are the
    exact ones (the comparison is made in float64, as on the host, except on MPS, which
    has none)."""

    def __init__(self, factor: float, device: torch.device) -> None:
        self.factor = factor
        self.first_loss: float | None = None  # the first step's loss, known after the first check
        self._steps: list[int] = []
        self._losses: list[torch.Tensor] = []
        self._dtype = torch.float32 if device.type == "mps" else torch.float64

    def see(self, step: int, loss: torch.Tensor) -> None:
        self._steps.append(step)
        self._losses.append(loss)

    def due(self) -> bool:
        return len(self._steps) >= CHECK_EVERY

    def check(self) -> tuple[int, float] | None:
        """The first diverging step seen since the last check, and its loss; None when there is none."""
        if not self._steps:
            return None
        losses = torch.stack(self._losses).to(self._dtype)
        if self.first_loss is None:  # this window starts the run: its first loss sets the bar
            first = losses[0]
            bar = self.factor * torch.clamp(first, min=1e-8)
        else:
            first, bar = None, self.factor * max(self.first_loss, 1e-8)
        bad = ~torch.isfinite(losses) | (losses > bar)
        # torch.argmax gives the first of equal maxima: the first diverging step
        found = [bad.any(), bad.to(losses.dtype).argmax()] + ([first] if first is not None else [])
        answer = torch.stack([t.to(losses.dtype) for t in found]).tolist()  # the one copy to the host
        if first is not None:
            self.first_loss = answer[2]
        steps, values = self._steps, losses
        self._steps, self._losses = [], []
        if not answer[0]:
            return None
        index = int(answer[1])
        return steps[index], float(values[index])


def _resumable(checkpoints: Checkpoints | None, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The latest checkpoint when it belongs to this trial, code and data; else None (why, logged)."""
    state = checkpoints.load() if checkpoints is not None else None
    if state is None:
        return None
    why = mismatch(state, identity)
    if why is not None:
        log.warning("Not resuming %s from its checkpoint: %s. It starts over.", identity["trial_id"], why)
        return None
    return state


def _finish(checkpoints: Checkpoints | None, model: nn.Module | None, result: TrialResult) -> None:
    """The trial is over: its checkpoints go; the final weights (``model``; None for a
    diverged trial) stay where checkpoints are kept."""
    if checkpoints is None:
        return
    try:
        result.artifacts = checkpoints.finish(model.state_dict() if model is not None else None)
    except Exception as exc:  # noqa: BLE001 - cleaning up never changes a trial's outcome
        log.warning("Could not clear the trial's checkpoints (%s: %s).", type(exc).__name__, exc)


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
        **({
            "final_ema_val_acc": last["ema_val_acc"],
            "best_ema_val_acc": max(e["ema_val_acc"] for e in epochs),
            "final_ema_val_loss": last["ema_val_loss"],
        } if "ema_val_acc" in last else {}),
        "train_seconds": train_seconds,
        "samples_per_s": (sum(e["samples_per_s"] * e["train_seconds"] for e in epochs) / train_seconds) if epochs and train_seconds else None,
        "peak_mem_mb": _peak_memory_mb(device),
    })

"""``bench grid --dry-run``: the trials of a study and what running them will cost.

The time estimate is measured, not guessed: each distinct model × batch size of the study
is timed for a few optimizer steps on random inputs of the dataset's shape, and for an
evaluation forward pass, with as many threads as a trial will get; a trial's time is its
steps times the step's, plus its evaluations (the validation split after every epoch,
twice with an EMA model) times the cost per image, and the study's wall-clock time that
sum divided by how many trials run side by side. Not in it: the data pipeline's
augmentation, starting each trial, and loading the data.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from bench.grid.planning import validate
from bench.spec import StudySpec, TrialConfig, is_sweep
from bench.trial import build_model, build_optimizer, pick_device, steps_per_epoch
from bench.trial.loop import EVAL_BATCH
from bench.zoo.datasets import dataset_source

if TYPE_CHECKING:
    from bench.grid.options import GridOptions

ROWS_LISTED = 200  # a grid of more trials prints its first rows and a summary, not every row
ROWS_SHOWN = 20
BOOKKEEPING = 1.05  # the harness's loop on top of the timed steps (within 5% of a bare loop: benchmarks/trial_loop.py)
EVAL_TIMED = 256  # images in a timed evaluation forward; the loop's batches take up to EVAL_BATCH
TIMING_FREE = ("seed", "lr", "epochs", "warmup_epochs", "lawn_free_epochs")  # fields that do not change a step's cost


def trial_steps(config: TrialConfig) -> int:
    """Optimizer steps the trial takes over all its epochs."""
    source = dataset_source(config.dataset)
    train = min(source.train_size, config.train_subset or source.train_size)
    return steps_per_epoch(config, train) * config.epochs


def trial_val_images(config: TrialConfig) -> int:
    """Validation images the trial evaluates over all its epochs (0 when the dataset does not
    say how many it has)."""
    source = dataset_source(config.dataset)
    val = min(source.val_size, config.val_subset or source.val_size)
    return val * config.epochs * (2 if config.ema_decay else 1)


def time_step(config: TrialConfig, device: torch.device, repeats: int = 5) -> tuple[float, float]:
    """Seconds per optimizer step of this model and batch size, and per image evaluated
    (medians of ``repeats``)."""
    source = dataset_source(config.dataset)
    model = build_model(config, source).to(device)
    optimizer = build_optimizer(config, model)
    x = torch.randn(config.batch_size, source.in_channels, source.image_size, source.image_size, device=device)
    y = torch.randint(0, source.num_classes, (config.batch_size,), device=device)
    times = []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    model.eval()
    batch = min(EVAL_BATCH, EVAL_TIMED)
    x = torch.randn(batch, source.in_channels, source.image_size, source.image_size, device=device)
    evals = []
    with torch.no_grad():
        for i in range(repeats // 2 + 2):
            t0 = time.perf_counter()
            model(x).sum().item()
            if i >= 1:
                evals.append((time.perf_counter() - t0) / batch)
    return sorted(times)[len(times) // 2], sorted(evals)[len(evals) // 2]


def concurrency(options: GridOptions) -> int:
    """How many trials run side by side on this machine."""
    if options.executor == "local":
        return 1
    cpus = os.cpu_count() or 1
    slots = max(1, math.floor(cpus / options.cpus_per_trial))
    return min(slots, options.max_concurrent or slots)


def shape_key(config: TrialConfig) -> str:
    """Trials with the same key cost the same per step: the seed, lr and epochs do not matter."""
    return json.dumps({k: v for k, v in config.to_dict().items() if k not in TIMING_FREE}, sort_keys=True)


def step_costs(
    trials: list[TrialConfig], device: torch.device, threads: int, keys: list[str] | None = None
) -> dict[str, tuple[float, float]]:
    """Seconds per step and per evaluated image of each distinct :func:`shape_key`
    (``keys``: the trials' keys, when known), timed with ``threads`` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    costs: dict[str, tuple[float, float]] = {}
    try:
        for config, key in zip(trials, keys or [shape_key(c) for c in trials]):
            if key not in costs:
                costs[key] = time_step(config, device)
    finally:
        torch.set_num_threads(previous)
    return costs


def describe_plan(spec: StudySpec, options: GridOptions, console: Console) -> dict[str, Any]:
    """Prints the study's trials with their measured cost and the totals; runs nothing."""
    trials = spec.expand()
    validate(trials)
    device = pick_device(options.device)
    threads = max(1, int(options.cpus_per_trial))
    keys = [shape_key(config) for config in trials]
    costs = step_costs(trials, device, threads, keys)
    swept = [k for v in spec.variants.values() for k, val in v.items() if is_sweep(k, val)]
    varying = list(dict.fromkeys([*spec.axes, *spec.zip, *swept]))
    variant_of = spec.variant_of() if spec.variants else {}
    extra = ["variant"] if spec.variants else []
    table = Table("#", "trial id", *extra, *varying, "seed", "eff. lr", "steps", "est. s", box=None)
    total_steps, total_seconds = 0, 0.0
    listed = len(trials) if len(trials) <= ROWS_LISTED else ROWS_SHOWN
    for i, (config, key) in enumerate(zip(trials, keys), 1):
        steps = trial_steps(config)
        per_step, per_image = costs[key]
        seconds = steps * per_step * BOOKKEEPING + trial_val_images(config) * per_image
        total_steps += steps
        total_seconds += seconds
        if i <= listed:
            values = [str(getattr(config, k)) for k in varying]
            labels = [variant_of[config.trial_id]] if spec.variants else []
            table.add_row(str(i), config.trial_id, *labels, *values, str(config.seed), f"{config.effective_lr:.4g}", str(steps), f"{seconds:.0f}")
    console.print(table)
    if listed < len(trials):
        console.print(_summary(spec, len(trials) - listed))
    slots = concurrency(options)
    wall = total_seconds / min(slots, max(1, len(trials)))
    console.print(
        f"[bold]{spec.key}[/]: {len(trials)} trials, {total_steps:,} optimizer steps; measured on {device} with "
        f"{threads} thread(s) per trial: ≈{total_seconds / 60:.1f} trial-minutes, ≈{wall / 60:.1f} min wall-clock "
        f"with {slots} trial(s) side by side. Nothing was run (dry run)."
    )
    if spec.tune:
        console.print(tuning_note(spec, trials))
    return {"trials": len(trials), "steps": total_steps, "trial_seconds": total_seconds, "wall_seconds": wall}


def _summary(spec: StudySpec, hidden: int) -> str:
    """What a large grid sweeps, in place of its unlisted rows."""
    swept = [f"{k} ({len(v)})" for k, v in spec.axes.items()] + [f"{k} ({len(v)})" for k, v in spec.zip.items()]
    parts = ", ".join(swept) or "no axes"
    variants = f"; {len(spec.variants)} variants" if spec.variants else ""
    return (f"… and {hidden:,} more trials, not listed (grids over {ROWS_LISTED} trials show their first {ROWS_SHOWN}): "
            f"axes {parts}{variants}; {len(spec.seeds)} seed(s).")


def tuning_note(spec: StudySpec, trials: list[TrialConfig]) -> str:
    """What the tuning round will add after the sweep."""
    over = spec.tune["over"]
    groups = {json.dumps({k: v for k, v in c.to_dict().items() if k not in (over, "seed")}, sort_keys=True) for c in trials}
    return (
        f"Then tuning: each of the {len(groups)} configurations re-run at its best {over} with seeds "
        f"{spec.tune['seeds']} ({len(groups) * len(spec.tune['seeds'])} more trials, about as long each)."
    )

"""Divergence found without a host synchronisation per step: the stored step and loss are
exact, training stops within CHECK_EVERY steps of it, and the host reads the device a
bounded number of times per epoch; precision and memory-format options."""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
import torch

import bench.trial.loop as loop
from bench.spec import TrialConfig
from bench.trial import run_trial
from bench.trial.loop import CHECK_EVERY, DivergenceWatch

CPU = torch.device("cpu")


def _watch(losses: list[float], factor: float = 10.0, every: int = CHECK_EVERY) -> tuple[int, float] | None:
    watch = DivergenceWatch(factor, CPU)
    for step, value in enumerate(losses):
        watch.see(step, torch.tensor(value))
        if (step + 1) % every == 0 and (found := watch.check()) is not None:
            return found
    return watch.check()


def test_the_watch_reports_the_first_diverging_step_and_its_loss() -> None:
    assert _watch([2.3] * 100) is None
    assert _watch([2.3] * 40 + [float("nan")] + [1.0] * 10) == (40, pytest.approx(float("nan"), nan_ok=True))
    assert _watch([2.3] * 70 + [23.1, 50.0] + [2.0] * 5) == (70, pytest.approx(23.1))
    assert _watch([2.5] * 70 + [25.0]) is None  # exactly 10 × the first loss is not above it
    assert _watch([2.3, 30.0, float("inf")]) == (1, pytest.approx(30.0))  # the first window sets the bar
    assert _watch([float("inf"), 1.0]) == (0, math.inf)
    assert _watch([1e-12, 1e-7 * 2]) == (1, pytest.approx(2e-7))  # the bar is factor × max(first, 1e-8)


def test_a_diverging_trial_stores_the_exact_step_and_stops_within_check_every_steps(monkeypatch) -> None:
    config = TrialConfig(dataset="digits", width=8, epochs=3, batch_size=16, lr=20.0, warmup_epochs=1, log_steps=True,
                         diverge_factor=3.0)
    forward_passes: list[int] = []
    real = loop.F.cross_entropy

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        forward_passes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop.F, "cross_entropy", counted)
    seen: list[dict[str, Any]] = []
    result = run_trial(config, report_steps=seen.extend)
    assert result.status == "diverged", result.error
    step, loss = result.summary["diverged_step"], result.summary["diverged_loss"]
    assert step > CHECK_EVERY  # found by a later check, not the first one
    first = seen[0]["loss"]
    bad = [r["step"] for r in seen if not math.isfinite(r["loss"]) or r["loss"] > 3.0 * max(first, 1e-8)]
    assert bad == [step] and seen[-1]["step"] == step  # the steps stop at the diverging one
    assert loss == seen[-1]["loss"] and result.summary["steps"] == step
    evaluations = result.summary["diverged_epoch"] - 1
    assert step + 1 <= len(forward_passes) - evaluations <= step + CHECK_EVERY


def test_the_host_reads_the_device_a_bounded_number_of_times_per_epoch(monkeypatch) -> None:
    config = TrialConfig(dataset="digits", width=8, epochs=2, batch_size=8, log_steps=True)
    reads: list[str] = []
    item, tolist = torch.Tensor.item, torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append("item") or item(self))
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append("tolist") or tolist(self))
    result = run_trial(config)
    steps = result.summary["steps_per_epoch"]
    assert result.status == "completed" and steps == 179
    per_epoch = len(reads) / config.epochs
    assert per_epoch <= steps / CHECK_EVERY + 12  # divergence checks, the step log, the epoch's metrics


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains_on_the_cpu(precision: str) -> None:
    config = TrialConfig(dataset="digits", width=8, epochs=2, precision=precision)
    result = run_trial(config)
    assert result.status == "completed", result.error
    assert result.summary["final_val_acc"] > 0.85
    assert config.trial_id != config.replace(precision="fp32").trial_id


def test_fp16_scales_the_loss_and_the_gradient_norm_is_the_true_one(monkeypatch) -> None:
    scaled: list[float] = []
    real = torch.amp.GradScaler.scale

    def scale(self, outputs):
        out = real(self, outputs)
        scaled.append(float((out / outputs).detach()))
        return out

    monkeypatch.setattr(torch.amp.GradScaler, "scale", scale)
    config = TrialConfig(dataset="digits", width=8, epochs=1, precision="fp16", log_steps=True)
    steps: list[dict[str, Any]] = []
    result = run_trial(config, report_steps=steps.extend)
    assert result.status == "completed" and scaled and min(scaled) > 1  # the loss was scaled for backward
    assert max(r["grad_norm"] for r in steps) < 100  # unscaled before it was measured


def test_channels_last_keeps_the_model_and_batches_in_that_format(monkeypatch) -> None:
    formats: list[bool] = []
    real = torch.nn.Conv2d._conv_forward

    def conv(self, x, weight, bias):
        formats.append(x.is_contiguous(memory_format=torch.channels_last) or x.shape[-1] == 1)
        return real(self, x, weight, bias)

    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", conv)
    result = run_trial(TrialConfig(dataset="digits", width=8, epochs=1, channels_last=True))
    assert result.status == "completed" and formats and all(formats)
    plain = run_trial(TrialConfig(dataset="digits", width=8, epochs=1))
    assert result.summary["final_val_acc"] == pytest.approx(plain.summary["final_val_acc"], abs=0.02)


def test_the_new_options_keep_every_existing_trial_id() -> None:
    config = TrialConfig(dataset="digits")
    assert config.replace(precision="fp32", channels_last=False, compile=False).trial_id == config.trial_id
    assert len({config.replace(**change).trial_id for change in ({}, {"channels_last": True}, {"compile": True})}) == 3


@pytest.mark.skipif(not os.environ.get("BENCH_SLOW_TESTS"),
                    reason="torch.compile takes about a minute on the CPU; BENCH_SLOW_TESTS=1 runs it")
def test_compile_trains_and_checkpoints_the_model_s_own_state(tmp_path) -> None:
    from bench.trial.checkpoint import DirectoryCheckpoints

    config = TrialConfig(dataset="digits", width=8, epochs=1, compile=True)
    result = run_trial(config, checkpoints=DirectoryCheckpoints(tmp_path / "t", keep=True))
    assert result.status == "completed", result.error
    weights = torch.load(result.artifacts["weights"], weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in weights)  # loadable into the plain model
    plain = run_trial(config.replace(compile=False))
    assert result.summary["final_val_acc"] == pytest.approx(plain.summary["final_val_acc"], abs=0.02)

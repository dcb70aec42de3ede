"""Per-step instrumentation: what the trainer records per step, when it hands it over,
and that it lands in the store through both executors."""

from __future__ import annotations

import math

import pytest
import torch

from bench.grid import GridOptions, Recorder, run_local
from bench.spec import TrialConfig
from bench.trial.steplog import STEP_FIELDS, StepLog
from bench.store import open_store
from bench.store.steps import steps_frame
from bench.trial import run_trial

TINY = dict(dataset="synthetic", arch="cnn", width=8, batch_size=32, epochs=2, lr=0.05)  # 512 images: 16 steps per epoch
VIT = dict(dataset="synthetic", arch="vit", width=16, depth=1, vit_heads=2, patch_size=4, batch_size=64, epochs=1, norm="ln",
           optimizer="adamw", lr=0.001)


def run_logged(**overrides):
    events: list[tuple[str, object]] = []
    config = TrialConfig(**{**TINY, **overrides, "log_steps": True})
    result = run_trial(
        config, lambda m: events.append(("epoch", m)), device="cpu", report_steps=lambda s: events.append(("steps", s))
    )
    return config, result, events


def test_log_steps_is_part_of_the_trial_identity():
    assert TrialConfig(**TINY).trial_id != TrialConfig(**TINY, log_steps=True).trial_id


def test_every_step_is_recorded_once_and_each_epochs_steps_come_before_its_metrics():
    config, result, events = run_logged()
    assert result.status == "completed", result.error
    assert [kind for kind, _ in events] == ["steps", "epoch", "steps", "epoch"]
    records = [r for kind, block in events if kind == "steps" for r in block]
    assert [r["step"] for r in records] == list(range(32))
    assert [r["epoch"] for r in records] == [1] * 16 + [2] * 16
    assert all(set(r) == {"step", "epoch", *STEP_FIELDS} for r in records)
    # the epoch's mean training loss is the mean of its steps' losses; the same for the accuracy
    epochs = [m for kind, m in events if kind == "epoch"]
    for e, metrics in enumerate(epochs, start=1):
        block = [r for r in records if r["epoch"] == e]
        assert metrics["train_loss"] == pytest.approx(sum(r["loss"] for r in block) / 16, rel=1e-5)
        assert metrics["train_acc"] == pytest.approx(sum(r["acc"] for r in block) / 16, rel=1e-6)
        assert metrics["grad_norm"] == pytest.approx(sum(r["grad_norm"] for r in block) / 16, rel=1e-5)
    # the lr of a step is the one it used: the cosine schedule's value before the step
    assert records[0]["lr"] == pytest.approx(0.05)
    assert records[-1]["lr"] < records[16]["lr"] < records[0]["lr"]
    assert all(0 < r["first_grad_norm"] <= r["grad_norm"] for r in records)
    # the stability metrics of the run are in its summary
    assert {"loss_spikes", "grad_spikes", "preceded_spikes", "max_acc_drop"} <= set(result.summary)


def test_without_log_steps_nothing_per_step_is_reported():
    seen = []
    run_trial(TrialConfig(**TINY), device="cpu", report_steps=seen.append)
    assert seen == []


def test_a_diverged_run_hands_over_its_steps_up_to_the_divergence():
    config, result, events = run_logged(lr=1e4, lr_scaling="none", norm="none", momentum=0.9, epochs=3)
    assert result.status == "diverged"
    records = [r for kind, block in events if kind == "steps" for r in block]
    assert records[-1]["step"] == result.summary["diverged_step"]
    assert [r["step"] for r in records] == list(range(len(records)))
    last = records[-1]["loss"]
    assert not math.isfinite(last) or last > config.diverge_factor * records[0]["loss"]


def test_a_frozen_patch_projection_has_no_first_layer_gradient():
    _, trained, events = run_logged(**VIT)
    assert trained.status == "completed", trained.error
    assert all(r["first_grad_norm"] > 0 for kind, b in events if kind == "steps" for r in b)
    _, frozen, events = run_logged(**VIT, vit_freeze_patch=True)
    assert frozen.status == "completed", frozen.error
    records = [r for kind, b in events if kind == "steps" for r in b]
    assert all(r["first_grad_norm"] is None for r in records) and all(r["grad_norm"] > 0 for r in records)
    assert "grad_spikes" not in frozen.summary and "loss_spikes" in frozen.summary


def test_the_steplog_flushes_with_one_host_copy_and_computes_stability():
    layer = torch.nn.Linear(2, 2)
    seen = []
    log = StepLog(seen.append, layer)
    for step in range(200):
        layer.weight.grad = torch.full((2, 2), 1.0)
        layer.bias.grad = torch.zeros(2)
        loss = 10.0 if step == 120 else 1.0
        log.record(step, 1, loss, torch.tensor(3), 4, torch.tensor(2.0), 0.1)
    log.flush()
    log.flush()  # nothing pending: no second report
    assert len(seen) == 1 and len(seen[0]) == 200
    assert seen[0][0]["acc"] == 0.75 and seen[0][0]["first_grad_norm"] == pytest.approx(2.0)
    from bench.trial.spikes import StabilityParams

    metrics = log.stability(StabilityParams())
    assert metrics["loss_spikes"] == 1 and metrics["loss_spike_steps"] == [120]
    assert metrics["max_acc_drop"] == 0


def test_the_local_executor_stores_the_steps(tmp_path):
    store = open_store(str(tmp_path / "s.sqlite"))
    config = TrialConfig(**TINY, log_steps=True)
    store.upsert_run(config.trial_id, {"config": config.to_dict(), "status": "pending"}, study="s")
    recorder = Recorder(store, "s", 1)
    run_local([config], recorder, GridOptions(executor="local", device="cpu"))
    frame = steps_frame(store.find_steps([config.trial_id]))
    assert list(frame["step"]) == list(range(32))
    assert {"loss", "acc", "grad_norm", "first_grad_norm", "lr", "epoch"} <= set(frame.columns)
    run = store.get_run(config.trial_id)
    assert run["status"] == "completed" and "loss_spikes" in run["summary"]
    # and the Python API reads them back joined with the run's config
    import bench

    joined = bench.load_results(study="s", store=store, steps=True)
    assert len(joined) == 32 and set(joined["batch_size"]) == {32} and set(joined["arch"]) == {"cnn"}
    with pytest.raises(ValueError, match="not both"):
        bench.load_results(study="s", store=store, steps=True, metrics=True)
    store.close()

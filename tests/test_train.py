from __future__ import annotations

import pytest
import torch

from bench.errors import ConfigError
from bench.spec import TrialConfig
from bench.trial import preflight, run_trial

TINY = dict(dataset="synthetic", arch="cnn", width=8, batch_size=32, epochs=2, lr=0.05)
EPOCH_KEYS = {"epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "grad_norm", "epoch_seconds",
              "train_seconds", "samples_per_s", "peak_mem_mb"}


def test_a_trial_reports_every_epoch_and_learns():
    seen = []
    result = run_trial(TrialConfig(**{**TINY, "epochs": 3}), seen.append, device="cpu")
    assert result.status == "completed", result.error
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    assert set(seen[0]) == EPOCH_KEYS
    assert seen[0]["step"] == 512 // 32 and seen[-1]["step"] == 3 * 16
    assert result.summary["final_val_acc"] == seen[-1]["val_acc"] > 0.5
    assert result.summary["epochs_done"] == 3 and result.summary["effective_lr"] == pytest.approx(0.05)
    assert result.env["torch"] == torch.__version__


def test_same_seed_same_numbers_other_seed_other_numbers():
    strip = lambda r: [{k: v for k, v in m.items() if "seconds" not in k and k not in ("samples_per_s", "peak_mem_mb")} for m in r.epochs]  # noqa: E731
    a = run_trial(TrialConfig(**TINY, augment="flip-crop"), device="cpu")
    b = run_trial(TrialConfig(**TINY, augment="flip-crop"), device="cpu")
    c = run_trial(TrialConfig(**TINY, augment="flip-crop", seed=1), device="cpu")
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)


def test_lr_follows_schedule_and_scaling():
    seen = []
    run_trial(TrialConfig(**{**TINY, "batch_size": 16}, lr_scaling="linear", lr_base_batch=32, schedule="constant"), seen.append)
    assert seen[0]["lr"] == pytest.approx(0.025)


def test_exploding_loss_is_detected_as_divergence_with_its_step():
    config = TrialConfig(**{**TINY, "lr": 1e4, "lr_scaling": "none", "norm": "none", "momentum": 0.9, "epochs": 3})
    result = run_trial(config, device="cpu")
    assert result.status == "diverged"
    assert 0 < result.summary["diverged_step"] < 3 * 16
    assert result.error is None


def test_nan_loss_is_divergence(monkeypatch):
    import bench.trial.loop as train_mod

    real = train_mod.F.cross_entropy
    calls = {"n": 0}

    def poisoned(logits, target, **kw):
        calls["n"] += 1
        loss = real(logits, target, **kw)
        return loss * float("nan") if calls["n"] == 5 and logits.requires_grad else loss

    monkeypatch.setattr(train_mod.F, "cross_entropy", poisoned)
    result = run_trial(TrialConfig(**TINY), device="cpu")
    assert result.status == "diverged" and result.summary["diverged_step"] == 4
    assert result.summary["diverged_loss"] is None


def test_an_exception_is_a_failed_trial_with_traceback(monkeypatch):
    import bench.trial.loop as train_mod

    def boom(*a, **k):
        raise RuntimeError("out of cheese")

    monkeypatch.setattr(train_mod, "build_optimizer", boom)
    result = run_trial(TrialConfig(**TINY), device="cpu")
    assert result.status == "failed"
    assert "Traceback" in result.error and "out of cheese" in result.error


def test_preflight_rejects_what_cannot_build():
    with pytest.raises(ConfigError, match="norm_groups=3"):
        preflight(TrialConfig(**{**TINY, "norm": "gn", "norm_groups": 3}))
    with pytest.raises(ConfigError, match="larger than the training set"):
        preflight(TrialConfig(**{**TINY, "batch_size": 4096}))
    with pytest.raises(ConfigError, match="6n\\+2"):
        preflight(TrialConfig(**{**TINY, "arch": "resnet", "depth": 9}))
    with pytest.raises(ConfigError, match="conv features"):
        preflight(TrialConfig(**{**TINY, "arch": "mlp", "norm": "in"}))
    preflight(TrialConfig(**{**TINY, "arch": "resnet", "depth": 14}))


def _model(**changes):
    from bench.zoo.datasets import DATASETS, dataset_source
    from bench.trial import build_model

    config = TrialConfig(**{**TINY, **changes})
    return config, build_model(config, dataset_source(config.dataset))


def test_mimicnorm_is_centred_convs_no_norm_layers_and_one_last_batchnorm():
    from bench.zoo.norms import is_norm_module

    _, model = _model(norm="mimic")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 1 and norms[0].num_features == 10
    assert isinstance(model[-1], torch.nn.BatchNorm1d) and is_norm_module(model[-1])  # after the classifier
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(type(m).__name__ != "Conv2d" for m in convs)  # the centred subclass, not a plain conv
    with pytest.raises(ConfigError, match=r"norm=mimic brings its own conv \('centered'\); conv='ws' cannot be combined"):
        _model(norm="mimic", conv="ws")


def test_train_only_norm_freezes_everything_but_gamma_and_beta():
    _, model = _model(norm="bn", train_only_norm=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(isinstance(dict(model.named_modules())[n.rsplit(".", 1)[0]], torch.nn.BatchNorm2d) for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = run_trial(TrialConfig(**{**TINY, "train_only_norm": True}), device="cpu")
    assert result.status == "completed"
    with pytest.raises(ConfigError, match="has none"):
        _model(norm="none", train_only_norm=True)
    assert before  # the frozen weights are checked on a trained model below


def test_frozen_weights_do_not_move_during_training(monkeypatch):
    import bench.trial.loop as train_mod

    built = {}
    real = train_mod.build_model

    def keep(config, source):
        built["model"] = real(config, source)
        built["init"] = {n: p.detach().clone() for n, p in built["model"].named_parameters()}
        return built["model"]

    monkeypatch.setattr(train_mod, "build_model", keep)
    assert run_trial(TrialConfig(**{**TINY, "train_only_norm": True}), device="cpu").status == "completed"
    for name, p in built["model"].named_parameters():
        moved = not torch.equal(p.detach(), built["init"][name])
        assert moved == p.requires_grad, name


def test_agc_is_applied_when_asked(monkeypatch):
    import bench.trial.loop as train_mod

    calls = []
    monkeypatch.setattr(train_mod, "clip_gradients", lambda model, clip: calls.append(clip))
    run_trial(TrialConfig(**{**TINY, "epochs": 1, "agc_clip": 0.02}), device="cpu")
    assert calls and set(calls) == {0.02} and len(calls) == 512 // 32
    calls.clear()
    run_trial(TrialConfig(**{**TINY, "epochs": 1}), device="cpu")
    assert calls == []


def test_weight_norm_data_init_runs_before_training(monkeypatch):
    import bench.trial.loop as train_mod

    seen = []
    import bench.zoo.convs as convs
    from bench.spec import trial_from_assignments

    monkeypatch.setattr(convs, "weight_norm_data_init", lambda model, x: seen.append(x.shape))
    run_trial(TrialConfig(**{**TINY, "epochs": 1, "norm": "none", "conv": "wn", "wn_init": True}), device="cpu")
    assert seen == [(512, 1, 8, 8)]
    with pytest.raises(ConfigError, match="`wn_init` does nothing for conv=standard: it is read only with conv=wn"):
        trial_from_assignments({**TINY, "wn_init": True})

"""The EMA model (bench/trial/ema.py) against EMAN's equations, the authors' code and torch.

The references, re-implemented here from their files:

- EMAN, the authors' teacher (amazon-science/exponential-moving-average-normalization,
  ``models/fixmatch.py``): ``FixMatch.__init__`` builds the EMA network as a copy of the
  student (parameters copied into a freshly built network, whose buffers are then the
  student's initial ones), and ``FixMatch.momentum_update_ema``, called after every
  ``optimizer.step()`` (``main_fixmatch.py``, ``train``), sets every state-dict entry
  ``v_ema ← v_ema·m + (1 − m)·v_main`` but ``num_batches_tracked``, which is copied
  (``models/moco.py``, ``MoCoEMAN._momentum_update_key_encoder``, is the same loop).
- The standard EMA of the weights, the same repository's ``models/moco.py``,
  ``MoCo._momentum_update_key_encoder`` (from facebookresearch/moco): the parameters only,
  ``θ_k ← θ_k·m + θ_q·(1 − m)``; the buffers here are the student's (``copy``).
- The paper's equations (Cai et al. 2021, arXiv:2101.08482, section 3): θ'ₜ = m·θ'ₜ₋₁ +
  (1 − m)·θₜ for the parameters and, for EMAN, μ'ₜ = m·μ'ₜ₋₁ + (1 − m)·μₜ and σ'²ₜ =
  m·σ'²ₜ₋₁ + (1 − m)·σ²ₜ for the statistics, computed here in float64 from the student's
  recorded states.
- An independent implementation: torch's ``torch.optim.swa_utils.AveragedModel`` with
  ``get_ema_multi_avg_fn(m)`` (``use_buffers=True``: parameters and buffers averaged;
  ``False``: parameters only).
- ``recompute``: the statistics by hand, the mean over the batches of each batch's mean
  and unbiased variance (the cumulative average torch's ``update_bn`` forms).
"""

from __future__ import annotations

import copy
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import bench.trial.loop as loop
from bench.cli import app
from bench.errors import ConfigError
from bench.metrics import EMA_METRICS, EPOCH_INDEX, EPOCH_METRICS, RUN_METRICS, summary_keys
from bench.spec import DEFAULTS, TrialConfig, load_spec, trial_from_assignments
from bench.trial import preflight, run_trial
from bench.trial.checkpoint import DirectoryCheckpoints
from bench.trial.ema import RECOMPUTE_BATCHES, ModelEma, build_ema

M = 0.8  # a small decay, so that the average differs visibly from both its start and the student
TIMING = {"epoch_seconds", "train_seconds", "samples_per_s", "peak_mem_mb", "wall_seconds"}
TINY = dict(dataset="synthetic", arch="cnn", width=8, batch_size=32, epochs=2, lr=0.05)


class AuthorsEman:
    """``models/fixmatch.py``'s EMA teacher: ``__init__`` and ``momentum_update_ema``."""

    def __init__(self, main: nn.Module, momentum: float) -> None:
        self.main, self.momentum = main, momentum
        self.ema = copy.deepcopy(main)  # a second network of the same build: the student's initial buffers
        for param_main, param_ema in zip(self.main.parameters(), self.ema.parameters()):
            param_ema.data.copy_(param_main.data)  # initialize
            param_ema.requires_grad = False  # not update by gradient

    @torch.no_grad()
    def momentum_update_ema(self) -> None:
        state_dict_main = self.main.state_dict()
        state_dict_ema = self.ema.state_dict()
        for (k_main, v_main), (k_ema, v_ema) in zip(state_dict_main.items(), state_dict_ema.items()):
            assert k_main == k_ema, "state_dict names are different!"
            assert v_main.shape == v_ema.shape, "state_dict shapes are different!"
            if "num_batches_tracked" in k_ema:
                v_ema.copy_(v_main)
            else:
                v_ema.copy_(v_ema * self.momentum + (1.0 - self.momentum) * v_main)


class AuthorsMocoKey:
    """``models/moco.py``'s key encoder: parameters copied at init, ``_momentum_update_key_encoder``."""

    def __init__(self, encoder_q: nn.Module, m: float) -> None:
        self.encoder_q, self.m = encoder_q, m
        self.encoder_k = copy.deepcopy(encoder_q)
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data.copy_(param_q.data)  # initialize
            param_k.requires_grad = False  # not update by gradient

    @torch.no_grad()
    def _momentum_update_key_encoder(self) -> None:
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data = param_k.data * self.m + param_q.data * (1.0 - self.m)


def student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))


def train(model: nn.Module, steps: int, after_step: Any) -> list[dict[str, torch.Tensor]]:
    """SGD steps on inputs whose distribution drifts (so the running statistics move);
    ``after_step()`` after each optimizer step. Returns the student's state after init and each step."""
    g = torch.Generator().manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    states = [{k: v.detach().clone().double() for k, v in model.state_dict().items()}]
    model.train()
    for t in range(steps):
        x = torch.randn(8, 1, 6, 6, generator=g) * (1 + 0.3 * t) + 0.5 * t
        y = torch.randint(0, 4, (8,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        after_step()
        states.append({k: v.detach().clone().double() for k, v in model.state_dict().items()})
    return states


# -- the update ---------------------------------------------------------------------------


def test_eman_equals_the_authors_momentum_update_ema_and_the_papers_equations():
    main = student()
    ours = ModelEma(main, M, "eman")
    authors = AuthorsEman(main, M)
    states = train(main, 12, lambda: (ours.update(main), authors.momentum_update_ema()))

    got, want = ours.module.state_dict(), authors.ema.state_dict()
    assert list(got) == list(want)
    for key in got:
        torch.testing.assert_close(got[key], want[key], msg=key)
    assert got["1.num_batches_tracked"] == main.state_dict()["1.num_batches_tracked"] == 12  # copied, as theirs

    # the paper's recursions, from the student's states: θ', μ' and σ'² are EMAs of θ, μ, σ²
    for key in ("0.weight", "1.weight", "1.running_mean", "1.running_var", "4.bias"):
        average = states[0][key]
        for state in states[1:]:
            average = M * average + (1 - M) * state[key]
        torch.testing.assert_close(got[key].double(), average, msg=key)
        assert not torch.allclose(got[key].double(), states[-1][key], atol=1e-3), f"{key} is the student's, not an EMA"


def test_copy_averages_the_parameters_as_mocos_key_encoder_and_takes_the_students_buffers():
    main = student()
    ours = ModelEma(main, M, "copy")
    authors = AuthorsMocoKey(main, M)
    train(main, 12, lambda: (ours.update(main), authors._momentum_update_key_encoder()))

    for (name, p), q in zip(ours.module.named_parameters(), authors.encoder_k.parameters()):
        torch.testing.assert_close(p, q, msg=name)
    for (name, b), s in zip(ours.module.named_buffers(), main.buffers()):
        assert torch.equal(b, s), f"{name} is not the student's"


@pytest.mark.parametrize("norm", ["eman", "copy"])
def test_the_update_equals_torchs_averaged_model(norm):
    main = student()
    ours = ModelEma(main, M, norm)
    multi = torch.optim.swa_utils.get_ema_multi_avg_fn(M)
    torch_ema = torch.optim.swa_utils.AveragedModel(main, multi_avg_fn=multi, use_buffers=norm == "eman")
    torch_ema.update_parameters(main)  # its first update copies: the average starts at the initialized student

    train(main, 12, lambda: (ours.update(main), torch_ema.update_parameters(main)))
    theirs = dict(torch_ema.module.named_parameters())
    if norm == "eman":
        theirs.update((k, v) for k, v in torch_ema.module.named_buffers() if v.is_floating_point())
    got = ours.module.state_dict()
    for key, value in theirs.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)  # the same foreach lerp, bit for bit


@pytest.mark.parametrize("norm", ["eman", "copy", "recompute"])
def test_decay_0_is_the_student_itself(norm):
    main = student()
    ours = ModelEma(main, 0.0, norm)
    train(main, 5, lambda: ours.update(main))
    for (key, value), (_, mine) in zip(main.state_dict().items(), ours.module.state_dict().items()):
        assert torch.equal(value, mine), key  # torch's lerp with weight 1 is the end point exactly


def test_decay_0_keeps_no_ema_model_and_the_trial_its_id():
    assert DEFAULTS["ema_decay"] == 0.0 and DEFAULTS["ema_norm"] == "eman"  # pinned: ids leave defaults out
    plain = TrialConfig()
    assert plain.trial_id == "44136fa355b3678a"  # the id pinned by tests/test_spec.py
    assert TrialConfig(ema_decay=0).trial_id == plain.trial_id
    assert TrialConfig(ema_norm="copy").trial_id == plain.trial_id  # read only with ema_decay > 0
    on = TrialConfig(ema_decay=0.999)
    assert on.canonical() == {"ema_decay": 0.999} and on.trial_id != plain.trial_id
    assert TrialConfig(ema_decay=0.999, ema_norm="copy").canonical() == {"ema_decay": 0.999, "ema_norm": "copy"}
    assert build_ema(plain, student()) is None


# -- recompute ----------------------------------------------------------------------------


def test_recompute_reestimates_batchnorm_on_the_first_batches_and_leaves_the_random_state_alone():
    torch.manual_seed(0)
    main = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Dropout(0.5), nn.Flatten(), nn.Linear(3 * 4, 2))
    ours = ModelEma(main, M, "recompute")
    batch = 2
    images = torch.randn(2 * RECOMPUTE_BATCHES + 7, 1, 4, 4) * 3 + 1
    order = torch.randperm(len(images))
    with torch.no_grad():
        main[0].weight.mul_(2)  # the student moves; the average follows part of the way
    ours.update(main)

    state = torch.get_rng_state()
    evaluated = ours.for_evaluation(images, order, batch, channels_last=False)
    assert torch.equal(torch.get_rng_state(), state)  # the dropout of the training-mode passes drew from a fork
    assert evaluated is ours.module and not evaluated.training

    with torch.no_grad():
        features = [ours.module[0](images[order[i * batch : (i + 1) * batch]]) for i in range(RECOMPUTE_BATCHES)]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in features])
    variances = torch.stack([f.transpose(0, 1).reshape(3, -1).var(dim=1) for f in features])  # unbiased, as BatchNorm's
    bn = ours.module[1]
    torch.testing.assert_close(bn.running_mean, means.mean(0))
    torch.testing.assert_close(bn.running_var, variances.mean(0))
    assert bn.momentum == main[1].momentum  # restored after the cumulative average
    assert not torch.allclose(bn.running_mean, main[1].running_mean)


def test_recompute_uses_the_whole_epoch_when_it_has_fewer_batches():
    torch.manual_seed(0)
    main = nn.Sequential(nn.BatchNorm2d(1))
    ours = ModelEma(main, M, "recompute")
    images = torch.randn(7, 1, 2, 2)
    ours.for_evaluation(images, torch.arange(7), 3, channels_last=False)  # 2 full batches; the 7th image is left out
    means = torch.stack([images[0:3].mean(), images[3:6].mean()])
    torch.testing.assert_close(ours.module[0].running_mean, means.mean().reshape(1))


def test_recompute_is_refused_for_norms_with_statistics_of_their_own():
    config = TrialConfig(dataset="synthetic", norm="mabn", ema_decay=0.9, ema_norm="recompute")
    with pytest.raises(ConfigError) as info:
        preflight(config)
    message = str(info.value)
    assert "norm=mabn keeps its statistics in buffers of its own (MovingAverageBatchNorm)" in message
    assert "Use ema_norm=eman (their EMAs) or ema_norm=copy" in message and "\n" not in message
    for ok in (config.replace(ema_norm="eman"), config.replace(norm="bn"), config.replace(norm="gn")):
        preflight(ok)


# -- user mistakes --------------------------------------------------------------------------


def test_ema_options_without_ema_decay_are_refused_before_anything_runs(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"`ema_norm` does nothing for ema_decay=0.0: it is read only with ema_decay > 0"):
        trial_from_assignments({"ema_norm": "copy"})
    trial_from_assignments({"ema_norm": "copy", "ema_decay": 0.99})

    spec = tmp_path / "s.yaml"
    spec.write_text(textwrap.dedent("""
        name: s
        base: {dataset: synthetic, ema_norm: recompute}
        axes: {norm: [bn, gn]}
    """))
    with pytest.raises(ConfigError, match=r"`ema_norm` does nothing .* ema_decay > 0"):
        load_spec(spec).expand()
    spec.write_text(textwrap.dedent("""
        name: s
        base: {dataset: synthetic, ema_norm: copy}
        axes: {ema_decay: [0, 0.99]}
    """))
    off, on = load_spec(spec).expand()  # one trial reads it: the study is fine, the trial without EMA keeps its id
    assert off.trial_id == TrialConfig(dataset="synthetic").trial_id and on.canonical()["ema_norm"] == "copy"

    with pytest.raises(ConfigError, match=r"ema_decay must be a number ≥ 0 and < 1; got ema_decay=1.0"):
        TrialConfig(ema_decay=1)
    with pytest.raises(ConfigError, match=r"ema_norm must be one of eman, copy, recompute"):
        TrialConfig(ema_decay=0.9, ema_norm="swa")

    result = CliRunner().invoke(app, ["train", "--set", "ema_norm=copy"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "ema_decay > 0" in " ".join(result.output.split())


# -- in a trial -----------------------------------------------------------------------------


def _student(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in TIMING and k not in EMA_METRICS}


@pytest.fixture(scope="module")
def trials() -> dict[str | None, tuple[Any, list[dict[str, Any]]]]:
    """The tiny trial without an EMA model (None) and with each ``ema_norm``: result, reported epochs."""
    out = {}
    for norm in (None, "eman", "copy", "recompute"):
        epochs: list[dict[str, Any]] = []
        extra = {"ema_decay": 0.9, "ema_norm": norm} if norm else {}
        result = run_trial(TrialConfig(**TINY, **extra), epochs.append, device="cpu")
        assert result.status == "completed", result.error
        out[norm] = result, epochs
    return out


@pytest.mark.parametrize("norm", ["eman", "copy", "recompute"])
def test_a_trial_records_the_ema_models_metrics_and_trains_the_student_as_without(norm, trials):
    result, epochs = trials[norm]
    without_ema, _ = trials[None]
    assert epochs == result.epochs and len(epochs) == 2
    for doc in epochs:
        assert set(doc) == set(EPOCH_METRICS) | set(EPOCH_INDEX)  # every per-epoch metric, the EMA model's included
        assert 0 <= doc["ema_val_acc"] <= 1 and doc["ema_val_loss"] > 0
    summary = result.summary
    assert set(summary) <= summary_keys() and {m for m in EMA_METRICS if m in RUN_METRICS} <= set(summary)
    assert summary["final_ema_val_acc"] == epochs[-1]["ema_val_acc"]
    assert summary["final_ema_val_loss"] == epochs[-1]["ema_val_loss"]
    assert summary["best_ema_val_acc"] == max(e["ema_val_acc"] for e in epochs)
    # the EMA model only watches: the student's numbers are those of the run without it, bit for bit
    assert [_student(e) for e in result.epochs] == [_student(e) for e in without_ema.epochs]
    assert _student(result.summary) == _student(without_ema.summary)
    assert not set(EMA_METRICS) & (set(without_ema.summary) | set(without_ema.epochs[0]))


def test_the_three_statistics_give_three_ema_models(trials):
    """On a BatchNorm network the three ways differ (with GroupNorm they would not)."""
    losses = {norm: trials[norm][0].summary["final_ema_val_loss"] for norm in ("eman", "copy", "recompute")}
    assert len(set(losses.values())) == 3, losses


@pytest.mark.parametrize("norm", ["eman", "recompute"])
def test_a_trial_with_an_ema_model_resumes_bit_identically(norm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = TrialConfig(**TINY, ema_decay=0.9, ema_norm=norm)
    uninterrupted = run_trial(config, device="cpu")
    assert uninterrupted.status == "completed", uninterrupted.error

    checkpoints = DirectoryCheckpoints(tmp_path / "t")
    real, calls = loop.F.cross_entropy, []

    def loss(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 16 + 2 + 9:  # inside step 9 of epoch 2 (epoch 1: 16 steps, the two models' validation)
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop.F, "cross_entropy", loss)
    with pytest.raises(KeyboardInterrupt):
        run_trial(config, checkpoints=checkpoints, device="cpu")
    monkeypatch.setattr(loop.F, "cross_entropy", real)
    state = checkpoints.load()
    assert (state["position"]["epoch"], state["position"]["offset"]) == (2, 9)  # the step it was in finished
    assert not torch.equal(state["ema"]["module.16.weight"], state["model"]["16.weight"])  # the average, not the student

    resumed = run_trial(config, checkpoints=checkpoints, device="cpu")
    assert resumed.status == "completed" and resumed.resumed_from == 2
    training = lambda m: {k: v for k, v in m.items() if k not in TIMING}
    assert [training(m) for m in resumed.epochs] == [training(m) for m in uninterrupted.epochs]
    assert training(resumed.summary) == training(uninterrupted.summary)

"""Trial checkpoints: a trial stopped anywhere resumes where it stopped and ends with
bit-identical metrics (CPU); checkpoints of other code or data are not resumed; a kill -9
of a grid driver mid-trial loses at most the epoch it was in; kept weights are artifacts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import bench.trial.loop as loop
from bench.cli import app
from bench.spec import TrialConfig, load_spec
from bench.store import EmbeddedStore
from bench.trial import run_trial
from bench.trial.checkpoint import DirectoryCheckpoints, checkpoint_dir

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
TIMING = {"epoch_seconds", "train_seconds", "samples_per_s", "peak_mem_mb", "wall_seconds"}

# Stateful on purpose: Batch Renorm counts its steps, LAWN holds norms fixed after its
# free phase, AdamW keeps moments, the warm-up cosine schedule its position, log_steps the
# step series the stability metrics are computed from.
CONFIG = TrialConfig(
    dataset="digits", arch="cnn", width=8, epochs=4, batch_size=64, norm="brn", optimizer="adamw", lr=0.003,
    schedule="cosine", warmup_epochs=1, lawn=True, lawn_free_epochs=1.5, log_steps=True, augment="mixup",
)


def _training(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in TIMING}


class Stop(BaseException):
    """Ends a trial as a killed process would: not a trial outcome."""


def _stop_at_report(epoch: int):
    def report(metrics: dict[str, Any]) -> None:
        if metrics["epoch"] == epoch:
            raise Stop

    return report


@pytest.fixture(scope="module")
def uninterrupted() -> Any:
    return run_trial(CONFIG)


def test_a_trial_stopped_after_epoch_2_of_4_resumes_bit_identically(tmp_path: Path, uninterrupted: Any) -> None:
    assert uninterrupted.status == "completed", uninterrupted.error
    checkpoints = DirectoryCheckpoints(tmp_path / "t")
    with pytest.raises(Stop):  # stopped while reporting epoch 3: the last checkpoint is epoch 2's
        run_trial(CONFIG, _stop_at_report(3), checkpoints=checkpoints)
    assert checkpoints.load()["position"]["epoch"] == 3

    seen: list[dict[str, Any]] = []
    resumed = run_trial(CONFIG, seen.append, checkpoints=checkpoints)
    assert resumed.status == "completed" and resumed.resumed_from == 3
    assert [m["epoch"] for m in seen] == [3, 4]  # epochs 1 and 2 are not trained (or reported) again
    assert [_training(m) for m in resumed.epochs] == [_training(m) for m in uninterrupted.epochs]
    assert _training(resumed.summary) == _training(uninterrupted.summary)
    assert not (tmp_path / "t").exists()  # a completed trial's checkpoints go


def test_sigint_mid_epoch_checkpoints_at_a_step_boundary_and_resumes_bit_identically(
    tmp_path: Path, uninterrupted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints = DirectoryCheckpoints(tmp_path / "t")
    real, calls = loop.F.cross_entropy, []

    def loss(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 40:  # the loss of step 39 (epoch 1 is 22 steps and one validation pass), inside the step
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop.F, "cross_entropy", loss)
    with pytest.raises(KeyboardInterrupt):
        run_trial(CONFIG, checkpoints=checkpoints)
    monkeypatch.setattr(loop.F, "cross_entropy", real)
    position = checkpoints.load()["position"]
    assert uninterrupted.summary["steps_per_epoch"] == 22
    assert (position["epoch"], position["offset"], position["step"]) == (2, 17, 39)  # the step it was in finished

    resumed = run_trial(CONFIG, checkpoints=checkpoints)
    assert resumed.status == "completed" and resumed.resumed_from == 2
    assert [_training(m) for m in resumed.epochs] == [_training(m) for m in uninterrupted.epochs]
    assert _training(resumed.summary) == _training(uninterrupted.summary)


def test_a_checkpoint_of_other_code_or_another_trial_is_not_resumed(tmp_path: Path, uninterrupted: Any) -> None:
    checkpoints = DirectoryCheckpoints(tmp_path / "t")
    with pytest.raises(Stop):
        run_trial(CONFIG, _stop_at_report(2), checkpoints=checkpoints)
    state = checkpoints.load()
    checkpoints.save({**state, "code": "other"})
    again = run_trial(CONFIG, checkpoints=checkpoints)
    assert again.resumed_from is None and again.status == "completed"
    assert [_training(m) for m in again.epochs] == [_training(m) for m in uninterrupted.epochs]

    other = CONFIG.replace(seed=1)
    checkpoints.save(state)
    assert run_trial(other.replace(epochs=2), checkpoints=checkpoints).resumed_from is None


def test_a_damaged_checkpoint_means_starting_over(tmp_path: Path) -> None:
    checkpoints = DirectoryCheckpoints(tmp_path / "t")
    checkpoints.path.parent.mkdir(parents=True)
    checkpoints.path.write_bytes(b"not a checkpoint")
    result = run_trial(CONFIG.replace(epochs=2), checkpoints=checkpoints)
    assert result.status == "completed" and result.resumed_from is None


def test_kept_weights_are_the_final_model(tmp_path: Path) -> None:
    config = CONFIG.replace(epochs=1, lawn=False)
    result = run_trial(config, checkpoints=DirectoryCheckpoints(tmp_path / "t", keep=True))
    weights = torch.load(result.artifacts["weights"], weights_only=True)
    assert not (tmp_path / "t" / "state.pt").exists()
    from bench.trial.build import build_model
    from bench.zoo.datasets import dataset_source

    model = build_model(config, dataset_source(config.dataset))
    model.load_state_dict(weights)
    assert weights.keys() == model.state_dict().keys()


SPEC = """
    name: killed
    base: {dataset: digits, arch: cnn, width: 16, epochs: 8, batch_size: 32, log_steps: true}
    axes:
      norm: [bn]
"""


def test_kill_9_of_a_grid_mid_trial_resumes_from_its_checkpoint_bit_identically(tmp_path: Path) -> None:
    spec_path = tmp_path / "killed.yaml"
    spec_path.write_text(textwrap.dedent(SPEC))
    (trial,) = load_spec(str(spec_path)).expand()
    store_path = tmp_path / "grid.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "bench.cli", "--store", str(store_path), "grid", str(spec_path),
               "--executor", "local", "--no-report"]
    driver = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        checkpoint = _wait_for_checkpoint(driver, store_path, trial.trial_id, epoch=3)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    with EmbeddedStore(store_path) as store:
        killed_at = store.get_run(trial.trial_id)["checkpoint"]["epoch"]
    assert 3 <= killed_at <= 8 and Path(checkpoint["path"]).is_file()

    result = runner.invoke(app, ["--store", str(store_path), "grid", str(spec_path), "--executor", "local", "--no-report"])
    assert result.exit_code == 0, result.output
    reference = runner.invoke(app, ["--store", str(tmp_path / "ref.sqlite"), "grid", str(spec_path), "--executor", "local",
                                    "--no-report"])
    assert reference.exit_code == 0, reference.output
    with EmbeddedStore(store_path) as store, EmbeddedStore(tmp_path / "ref.sqlite") as ref:
        run, expected = store.get_run(trial.trial_id), ref.get_run(trial.trial_id)
        assert run["status"] == "completed" and run["attempts"] == 2
        assert run["history"][-1]["resumed_from"] == killed_at
        assert run["checkpoint"] is None and not Path(checkpoint["path"]).exists()
        got = sorted(store.get_metrics(trial.trial_id), key=lambda m: m["epoch"])
        want = sorted(ref.get_metrics(trial.trial_id), key=lambda m: m["epoch"])
        assert [m["epoch"] for m in got] == list(range(1, 9))
        assert [_training(m) for m in got] == [_training(m) for m in want]
        assert _training(run["summary"]) == _training(expected["summary"])
        steps = store.find_steps([trial.trial_id])
        assert len(steps) == 8 * 44 and steps == ref.find_steps([trial.trial_id])


def _wait_for_checkpoint(driver: subprocess.Popen, store_path: Path, trial_id: str, epoch: int) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if driver.poll() is not None:
            raise AssertionError(f"the grid ended before it could be killed: {driver.stderr.read().decode()}")
        if store_path.exists():
            with EmbeddedStore(store_path) as store:
                run = store.get_run(trial_id) or {}
            if (run.get("checkpoint") or {}).get("epoch", 0) >= epoch:
                return run["checkpoint"]
        time.sleep(0.02)
    raise AssertionError("the trial never reached its checkpoint")


def test_keep_checkpoints_records_the_weights_and_results_show_prints_them(tmp_path: Path) -> None:
    spec_path = tmp_path / "kept.yaml"
    spec_path.write_text(textwrap.dedent(SPEC).replace("epochs: 8", "epochs: 1"))
    result = runner.invoke(app, ["grid", str(spec_path), "--executor", "local", "--no-report", "--keep-checkpoints"])
    assert result.exit_code == 0, result.output
    (trial,) = load_spec(str(spec_path)).expand()
    with EmbeddedStore(os.environ["BENCH_STORE"]) as store:
        run = store.get_run(trial.trial_id)
    path = Path(run["artifacts"]["weights"])
    assert path == checkpoint_dir() / trial.trial_id / "weights.pt" and path.is_file()
    shown = runner.invoke(app, ["results", "show", trial.trial_id])
    assert shown.exit_code == 0 and "artifact: weights" in shown.output and trial.trial_id in shown.output

"""The one adapter to Ray Tune.

Ray's API has changed often across versions; every Ray call of the project is here, so
the trainer runs and is tested without Ray, and a Ray upgrade touches one file.

One Tune trial per TrialConfig (a grid search over trial ids). Each trial reports one
result per epoch (preceded, with ``log_steps``, by one carrying that epoch's step records)
and a final one; a driver-side :class:`ray.tune.Callback` forwards them
to the :class:`~bench.grid.recorder.Recorder`, which writes to the store as results come.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.zoo.plugins import Plugin, import_on_worker, loaded, ray_py_modules
from bench.spec import TrialConfig
from bench.trial import TrialResult, run_trial

if TYPE_CHECKING:
    from bench.grid.options import GridOptions
    from bench.grid.recorder import Recorder

# Offline and quiet by default; a user's own settings win.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "100")

import ray  # noqa: E402
from ray import tune  # noqa: E402


log = logging.getLogger(__name__)


class StoreCallback(tune.Callback):
    """Runs in the driver: forwards trial events to the recorder as they come. A store
    error never reaches Tune (it would end the whole grid): it is logged and counted by
    the recorder, and the trials go on."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder: Recorder | None = recorder

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config with the experiment state; the recorder holds a
        # database connection and lives only in this driver process.
        return {"recorder": None}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not self.recorder:
            return
        trial_id = trial.config["trial_id"]
        try:
            self.recorder.started(trial_id)
        except BenchError as exc:  # not claimed: the trial runs on, its results unrecorded
            self.recorder.write_errors.append(f"start {trial_id}: {exc}")
            log.warning("Could not record the start of %s: %s", trial_id, exc)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if not self.recorder:
            return
        trial_id = trial.config["trial_id"]
        if result.get("event") == "epoch":
            self.recorder.epoch(trial_id, dict(result["metrics"]))
        elif result.get("event") == "steps":
            self.recorder.steps(trial_id, list(result["steps"]))
        elif result.get("event") == "final":
            outcome = TrialResult(
                status=result["status"], summary=dict(result["summary"]), error=result.get("error"), env=dict(result.get("env") or {})
            )
            self.recorder.finished(trial_id, outcome)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        trial_id = trial.config["trial_id"]
        if self.recorder and trial_id in self.recorder.active:
            self.recorder.crashed(trial_id, _error_text(trial))


def _trainable(
    params: dict[str, Any], configs: dict[str, TrialConfig], data_dir: str | None, device: str | None,
    plugins: list[Plugin] | None = None,
) -> None:
    """Runs on a Ray worker: one trial, reporting each epoch, then the outcome. The driver's
    plugins are imported first (Ray shipped their code: ``py_modules``)."""
    import torch

    import_on_worker(plugins or [])

    threads = int(float(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    torch.set_num_threads(max(1, threads))
    config = configs[params["trial_id"]]
    result = run_trial(
        config,
        lambda m: tune.report({"event": "epoch", "metrics": m}),
        data_dir=data_dir,
        device=device,
        report_steps=lambda steps: tune.report({"event": "steps", "steps": steps}),
    )
    tune.report(
        {"event": "final", "status": result.status, "summary": result.summary, "error": result.error, "env": result.env}
    )


def _connect(address: str | None) -> bool:
    """Starts a local Ray runtime, or joins a cluster (``--address`` / RAY_ADDRESS), with
    the loaded plugins' code in the runtime environment (``py_modules``: Ray copies it to
    every worker, on every node). Returns whether this call started Ray (and so should shut
    it down)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    modules = ray_py_modules()
    try:
        ray.init(
            address=address,
            runtime_env={"py_modules": modules} if modules else None,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
            configure_logging=True,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BenchError(
            f"Could not join the Ray cluster at {address!r}: {exc}. Start it with `ray start --head` "
            "(or check the address), or leave --address and RAY_ADDRESS unset to run on this machine."
        ) from None
    return True


def run_with_tune(todo: list[TrialConfig], recorder: Recorder, options: GridOptions) -> None:
    """Runs the trials on Ray Tune (a local runtime, or the cluster at ``options.address``)."""
    configs = {c.trial_id: c for c in todo}

    started = _connect(options.address)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(
                _trainable, configs=configs, data_dir=_absolute(options.data_dir), device=options.device,
                plugins=loaded(),
            ),
            {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial},
        )
        storage = Path(os.environ.get("BENCH_RAY_DIR") or Path(tempfile.gettempdir()) / "bench-ray").resolve()
        tuner = tune.Tuner(
            trainable,
            param_space={"trial_id": tune.grid_search(list(configs))},
            tune_config=tune.TuneConfig(max_concurrent_trials=options.max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(
                name=f"bench-{recorder.study.replace('@', '-')}",
                storage_path=str(storage),
                verbose=0,
                callbacks=[StoreCallback(recorder)],
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
        tuner.fit()
    finally:
        if started:
            ray.shutdown()


def _absolute(path: str | None) -> str | None:
    """Workers may start in another directory: pass data paths absolute."""
    return str(Path(path).expanduser().resolve()) if path else None


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None) or getattr(getattr(trial, "run_metadata", None), "error_filename", None)
    if path and Path(path).is_file():
        return Path(path).read_text()
    return f"The Ray worker running this trial stopped without a result ({getattr(trial, 'status', 'unknown')})."

"""The adapter to Ray Tune (with :mod:`bench.grid.cluster`, which joins a cluster and
checks its nodes).

Ray's API has changed often across versions; every Ray call of the project is in these
two modules, so the trainer runs and is tested without Ray, and a Ray upgrade touches
only them.

One Tune trial per TrialConfig (a grid search over trial ids). Each trial first reports
where it runs (the driver stops it there when it could not claim it: :class:`ClaimGate`),
then one result per epoch (preceded, with ``log_steps``, by one carrying that epoch's
step records) followed by its checkpoint, and a final one; a driver-side
:class:`ray.tune.Callback` forwards them to the :class:`~bench.grid.recorder.Recorder`,
which writes to the store as results come. Tune retries a trial whose worker or node is
lost (``--retries``) from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.grid.cluster import check_nodes_have_data, check_nodes_share_storage, connect, node_identity
from bench.grid.options import AUTO_GPUS_PER_TRIAL
from bench.spec import TrialConfig
from bench.store.base import FINISHED_STATUSES, runs_by_id
from bench.trial import TrialResult, run_trial
from bench.trial.checkpoint import STATE_FILE, WEIGHTS_FILE, load_file, save_file
from bench.zoo.plugins import Plugin, import_on_worker, loaded, ray_py_modules

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
from ray.tune import Checkpoint  # noqa: E402
from ray.tune.stopper import Stopper  # noqa: E402


log = logging.getLogger(__name__)


class StoreCallback(tune.Callback):
    """Runs in the driver: forwards trial events to the recorder as they come. A store
    error never reaches Tune (it would end the whole grid): it is logged and counted by
    the recorder, and the trials go on.

    Checkpoints: each one a trial reports is recorded as the run's ``checkpoint`` (so a
    later grid resumes from it); a finished trial's is deleted unless ``keep`` (then its
    final weights, reported last, are the run's ``weights`` artifact). A trial whose
    worker or node is lost is retried by Tune from its last checkpoint: the lost attempt
    goes into the run's history."""

    def __init__(self, recorder: Recorder, keep: bool = False) -> None:
        self.recorder: Recorder | None = recorder
        self.keep = keep
        self._reported: dict[str, dict[str, Any]] = {}  # trial id → the last checkpoint event
        self._latest: dict[str, Checkpoint] = {}  # trial id → its latest state checkpoint
        self._weights: dict[str, str] = {}  # trial id → where its kept weights are

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config with the experiment state; the recorder holds a
        # database connection and lives only in this driver process.
        return {"recorder": None, "keep": self.keep, "_reported": {}, "_latest": {}, "_weights": {}}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not self.recorder:
            return
        trial_id = trial.config["trial_id"]
        try:
            self.recorder.started(trial_id)  # refused: the trial is stopped at its first report (ClaimGate)
        except BenchError as exc:  # not claimed: the trial runs on, its results unrecorded
            self.recorder.write_errors.append(f"start {trial_id}: {exc}")
            log.warning("Could not record the start of %s: %s", trial_id, exc)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if not self.recorder:
            return
        trial_id = trial.config["trial_id"]
        event = result.get("event")
        if event == "start":
            self.recorder.ran_on(trial_id, dict(result["node"]))
        elif event in ("checkpoint", "weights"):
            self._reported[trial_id] = {k: result.get(k) for k in ("event", "epoch", "step")}
        elif event == "epoch":
            self.recorder.epoch(trial_id, dict(result["metrics"]))
        elif event == "steps":
            self.recorder.steps(trial_id, list(result["steps"]))
        elif event == "final":
            outcome = TrialResult(
                status=result["status"], summary=dict(result["summary"]), error=result.get("error"),
                env=dict(result.get("env") or {}), resumed_from=result.get("resumed_from"),
                artifacts={"weights": self._weights.pop(trial_id)} if trial_id in self._weights else {},
            )
            if outcome.status in FINISHED_STATUSES:
                self._discard(trial_id)
            self.recorder.finished(trial_id, outcome)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Checkpoint, **info: Any) -> None:
        if not self.recorder:
            return
        trial_id = trial.config["trial_id"]
        reported = self._reported.pop(trial_id, {})
        if reported.get("event") == "weights":
            self._weights[trial_id] = f"{checkpoint.path.rstrip('/')}/{WEIGHTS_FILE}"  # the file, as locally
            self._latest.pop(trial_id, None)  # Tune, keeping one checkpoint per trial, deleted the state
            return
        self._latest[trial_id] = checkpoint
        self.recorder.checkpointed(trial_id, {"path": checkpoint.path, "epoch": reported.get("epoch"), "step": reported.get("step")})

    def _discard(self, trial_id: str) -> None:
        """A finished trial's last state checkpoint goes (Tune keeps one per trial)."""
        checkpoint = self._latest.pop(trial_id, None)
        if checkpoint is None:
            return
        try:
            checkpoint.filesystem.delete_dir(checkpoint.path)
        except Exception as exc:  # noqa: BLE001 - a leftover file never changes an outcome
            log.warning("Could not delete the checkpoint %s: %s", checkpoint.path, exc)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.recorder:
            self.recorder.lost(trial.config["trial_id"], _error_text(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        trial_id = trial.config["trial_id"]
        if self.recorder and trial_id in self.recorder.active:
            self.recorder.crashed(trial_id, _error_text(trial))


class ClaimGate(Stopper):
    """Stops, at its first report and before it trains, a trial whose claim the driver
    could not make (another grid holds it): refused work costs no compute."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder: Recorder | None = recorder

    def __getstate__(self) -> dict[str, Any]:
        return {"recorder": None}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if self.recorder is None or result.get("event") != "start":
            return False
        return result["run_id"] not in self.recorder.active

    def stop_all(self) -> bool:
        return False


class TuneCheckpoints:
    """A trial's checkpoints through Ray Tune's checkpoint API: each save is reported to
    Tune, which persists it in the run's storage (``BENCH_RAY_DIR``: a directory every
    node sees, or a cloud URI, on a cluster) and restores it when the trial is retried.
    ``resume`` is the checkpoint a stored run points to (a grid that was stopped)."""

    def __init__(self, keep: bool, resume: str | None) -> None:
        self.keep, self.resume = keep, resume

    def load(self) -> dict[str, Any] | None:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None and self.resume and Path(self.resume).is_file():  # the local executor's
            return load_file(Path(self.resume))
        if checkpoint is None and self.resume:
            try:
                checkpoint = Checkpoint(self.resume)
            except Exception as exc:  # noqa: BLE001 - an unreachable checkpoint means starting over
                log.warning("The checkpoint %s cannot be opened here (%s); the trial starts over.", self.resume, exc)
        if checkpoint is None:
            return None
        try:
            with checkpoint.as_directory() as directory:
                return load_file(Path(directory) / STATE_FILE)
        except Exception as exc:  # noqa: BLE001
            log.warning("The checkpoint %s cannot be read here (%s); the trial starts over.", checkpoint.path, exc)
            return None

    def save(self, state: dict[str, Any]) -> None:
        where = state["position"]
        self._report(STATE_FILE, state, {"event": "checkpoint", "epoch": where["epoch"], "step": where["step"]})

    def finish(self, weights: dict[str, Any] | None) -> dict[str, str]:
        if weights is not None and self.keep:
            self._report(WEIGHTS_FILE, weights, {"event": "weights"})  # the driver records where Tune put it
        return {}

    @staticmethod
    def _report(name: str, value: Any, event: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as directory:
            save_file(value, Path(directory) / name)
            tune.report(event, checkpoint=Checkpoint.from_directory(directory))  # persisted before it returns


def _trainable(
    params: dict[str, Any], configs: dict[str, TrialConfig], data_dir: str | None, device: str | None,
    plugins: list[Plugin] | None = None, keep: bool = False, resume: dict[str, str] | None = None,
) -> None:
    """Runs on a Ray worker: one trial, reporting each epoch, then the outcome. The driver's
    plugins are imported first (Ray shipped their code: ``py_modules``). The first report
    says where it runs; the driver stops the trial there when it could not claim it."""
    import torch

    import_on_worker(plugins or [])

    threads = int(float(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    torch.set_num_threads(max(1, threads))
    trial_id = params["trial_id"]
    tune.report({"event": "start", "run_id": trial_id, "node": node_identity()})  # Tune owns "trial_id"
    config = configs[trial_id]
    result = run_trial(
        config,
        lambda m: tune.report({"event": "epoch", "metrics": m}),
        data_dir=data_dir,
        device=device,
        report_steps=lambda steps: tune.report({"event": "steps", "steps": steps}),
        checkpoints=TuneCheckpoints(keep, (resume or {}).get(trial_id)),
    )
    tune.report({
        "event": "final", "status": result.status, "summary": result.summary, "error": result.error, "env": result.env,
        "resumed_from": result.resumed_from,
    })


def run_with_tune(todo: list[TrialConfig], recorder: Recorder, options: GridOptions) -> None:
    """Runs the trials on Ray Tune (a local runtime, or the cluster at ``options.address``).
    A trial whose worker or node is lost is retried ``options.retries`` times, each time
    from its last checkpoint; one stopped with its grid resumes from the checkpoint its run
    points to."""
    configs = {c.trial_id: c for c in todo}
    resume = {
        run["_id"]: run["checkpoint"]["path"] for run in runs_by_id(recorder.store, list(configs))
        if isinstance(run.get("checkpoint"), dict) and run["checkpoint"].get("path")
    }

    started = connect(options.address, runtime_env=_runtime_env())
    # Tune installs its own SIGINT handler (stop the experiment gracefully) and leaves it in
    # place when the run ends; a caller in the same process would have its next Ctrl-C swallowed.
    main = threading.current_thread() is threading.main_thread()
    interrupt = signal.getsignal(signal.SIGINT) if main else None
    try:
        if options.address or os.environ.get("RAY_ADDRESS"):  # a cluster: what every node must see
            check_nodes_have_data(sorted({c.dataset for c in todo}), _absolute(options.data_dir))
            check_nodes_share_storage(ray_storage())
        trainable = tune.with_resources(
            tune.with_parameters(
                _trainable, configs=configs, data_dir=_absolute(options.data_dir), device=options.device,
                plugins=loaded(), keep=options.keep_checkpoints, resume=resume,
            ),
            {"cpu": options.cpus_per_trial, "gpu": gpus_per_trial(options)},
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"trial_id": tune.grid_search(list(configs))},
            tune_config=tune.TuneConfig(max_concurrent_trials=options.max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(
                name=f"bench-{recorder.study.replace('@', '-')}",
                storage_path=ray_storage(),
                verbose=0,
                callbacks=[StoreCallback(recorder, keep=options.keep_checkpoints)],
                stop=ClaimGate(recorder),
                failure_config=tune.FailureConfig(max_failures=options.retries, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
        tuner.fit()
    finally:
        if main and interrupt is not None:
            signal.signal(signal.SIGINT, interrupt)
        if started:
            ray.shutdown()


def gpus_per_trial(options: GridOptions) -> float:
    """The GPUs each trial reserves: the option when given; else, on a cluster with GPUs,
    :data:`~bench.grid.options.AUTO_GPUS_PER_TRIAL` (without a reservation Ray hides the
    GPUs from a trial, which would then train on the CPU), and none without GPUs."""
    if options.gpus_per_trial is not None:
        return options.gpus_per_trial
    return AUTO_GPUS_PER_TRIAL if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def ray_storage() -> str:
    """Where Tune keeps trial state and checkpoints: ``$BENCH_RAY_DIR`` (on a cluster, a
    directory every node sees, or a cloud URI such as ``s3://bucket/bench``), else
    ``bench-ray`` in the temporary directory."""
    configured = os.environ.get("BENCH_RAY_DIR")
    if configured and "://" in configured:
        return configured
    return str(Path(configured or Path(tempfile.gettempdir()) / "bench-ray").expanduser().resolve())


def _runtime_env() -> dict[str, Any] | None:
    """The loaded plugins' code in the runtime environment (``py_modules``: Ray copies it
    to every worker, on every node)."""
    modules = ray_py_modules()
    return {"py_modules": modules} if modules else None


def _absolute(path: str | None) -> str | None:
    """Workers may start in another directory: pass data paths absolute."""
    return str(Path(path).expanduser().resolve()) if path else None


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None) or getattr(getattr(trial, "run_metadata", None), "error_filename", None)
    if path and Path(path).is_file():
        return Path(path).read_text()
    return f"The Ray worker running this trial stopped without a result ({getattr(trial, 'status', 'unknown')})."

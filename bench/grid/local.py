"""Trials run in this process: the ``local`` executor and ``bench train``.

Both go through :func:`run_recorded`, the one path that runs a trial and records it:
claim it, train it, and write each epoch, its steps and the outcome as they come.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.grid.planning import QUEUED, trial_fields
from bench.grid.recorder import Recorder
from bench.spec import TrialConfig
from bench.trial import TrialResult, run_trial

if TYPE_CHECKING:
    from bench.trial.checkpoint import DirectoryCheckpoints
    from bench.grid.options import GridOptions
    from bench.store import ResultStore

EpochCallback = Callable[[dict[str, Any]], None]


def run_recorded(
    config: TrialConfig,
    recorder: Recorder,
    *,
    on_epoch: EpochCallback | None = None,
    data_dir: str | None = None,
    device: str | None = None,
    keep_checkpoints: bool = False,
) -> TrialResult | None:
    """Trains ``config`` here and records it through ``recorder``; ``on_epoch`` sees each
    epoch's metrics too. Returns None, having trained nothing, when the recorder cannot
    claim the trial (another grid runs it, or finished it meanwhile).

    The trial checkpoints into ``$BENCH_CHECKPOINT_DIR/<trial id>`` after each epoch (and
    at Ctrl-C or SIGTERM) and resumes from there when it was interrupted before; the run
    points to its checkpoint while it has one. ``keep_checkpoints`` keeps the final
    weights there (the run's ``artifacts``)."""
    from bench.trial.checkpoint import DirectoryCheckpoints, checkpoint_dir  # torch

    trial_id = config.trial_id
    if not recorder.started(trial_id):
        return None
    recorder.ran_on(trial_id, {"hostname": socket.gethostname()})
    checkpoints = RecordedCheckpoints(DirectoryCheckpoints(checkpoint_dir() / trial_id, keep=keep_checkpoints), recorder, trial_id)

    def epoch(metrics: dict[str, Any]) -> None:
        if on_epoch is not None:
            on_epoch(metrics)
        recorder.epoch(trial_id, metrics)

    result = run_trial(
        config, epoch, data_dir=data_dir, device=device, report_steps=lambda records: recorder.steps(trial_id, records),
        checkpoints=checkpoints,
    )
    recorder.finished(trial_id, result)
    return result


class RecordedCheckpoints:
    """A trial's checkpoint directory whose saves the run points to (``checkpoint``)."""

    def __init__(self, inner: DirectoryCheckpoints, recorder: Recorder, trial_id: str) -> None:
        self.inner, self.recorder, self.trial_id = inner, recorder, trial_id

    def load(self) -> dict[str, Any] | None:
        return self.inner.load()

    def save(self, state: dict[str, Any]) -> None:
        self.inner.save(state)
        where = state["position"]
        self.recorder.checkpointed(
            self.trial_id, {"path": str(self.inner.path), "epoch": where["epoch"], "step": where["step"]}
        )

    def finish(self, weights: Any) -> dict[str, str]:
        return self.inner.finish(weights)


def run_local(todo: list[TrialConfig], recorder: Recorder, options: GridOptions) -> None:
    """The ``local`` executor: the trials one after another in this process."""
    for config in todo:
        run_recorded(
            config, recorder, data_dir=options.data_dir, device=options.device, keep_checkpoints=options.keep_checkpoints
        )


def run_one(
    config: TrialConfig,
    store: ResultStore | None,
    *,
    on_epoch: EpochCallback | None = None,
    data_dir: str | None = None,
    device: str | None = None,
) -> TrialResult:
    """One trial in this process, in no study (``bench train``), recorded in ``store``
    (None: not recorded). A finished trial runs again; one that a live grid runs is refused."""
    if store is None:
        return run_trial(config, on_epoch, data_dir=data_dir, device=device)
    store.upsert_run(config.trial_id, trial_fields(config), on_insert=QUEUED)
    recorder = Recorder(store, "", 1)
    try:
        result = run_recorded(config, recorder, on_epoch=on_epoch, data_dir=data_dir, device=device)
    finally:
        recorder.interrupt_unfinished()
    if result is None:
        raise BenchError(
            f"Trial {config.trial_id} is running in another live grid (its heartbeat is fresh), so it was not "
            "trained here. Wait for that grid to finish it, or train it without recording it (bench train --no-save)."
        )
    return result

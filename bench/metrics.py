"""The one table of metrics: every number a trial records, with its label, unit, direction,
scope and how a report shows it.

Two scopes:

- ``run``: one number per trial, a key of the run's ``summary`` (written at the end of the
  trial, or when it diverges). ``--where KEY…`` reads it at ``summary.KEY``; a report
  section's ``metric`` option takes it (pivot, scaling, ranking).
- ``epoch``: one number per epoch, a key of the run's per-epoch ``metrics`` documents, which
  :data:`EPOCH_INDEX` (epoch, step) places; ``curves`` and ``time-to-accuracy`` take it.

Accuracies are stored as fractions (unit ``fraction``) and shown in percent, so
differences between them read in percentage points. Times are seconds of
``time.perf_counter``; memory is in MiB (2²⁰ bytes, labelled MB). Some run metrics exist
only for some runs: the ``diverged_*`` ones for diverged runs, the stability ones
(``needs_steps``) for runs with ``log_steps: true``, the EMA model's (``needs_ema``) for runs
with ``ema_decay`` > 0 (:mod:`bench.trial.ema`), the inference form's (``needs_deploy``) for
completed runs of an architecture that deploys another network (:mod:`bench.trial.deploy`).

Not metrics: the summary's ``device`` (text, in :data:`SUMMARY_FIELDS`: queryable, not
tabulated), and what the ``time-to-accuracy`` section computes (epoch, optimizer steps and
training seconds to first reach a target): those depend on the target a section names and
are computed from the per-epoch metrics above, never stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bench.errors import UnknownNameError

RUN = "run"
EPOCH = "epoch"
SCOPES = (RUN, EPOCH)


@dataclass(frozen=True)
class Metric:
    """One metric: what it is, where it is stored and how it is shown."""

    name: str
    label: str  # shown in tables and on axes, with the shown unit
    scope: str = RUN  # RUN: a summary key; EPOCH: a key of each per-epoch metrics document
    unit: str = ""  # of the stored value ("" for a pure number)
    higher_is_better: bool = True
    scale: float = 1.0  # stored value × scale = shown value
    digits: int = 1  # decimals shown
    delta_unit: str = ""  # of a difference of two shown values, when the label's unit does not say it
    definition: str = ""
    derived: bool = False  # also stored under the run's ``derived`` when the trial is registered
    needs_steps: bool = False  # computed from the per-step records (``log_steps: true``)
    needs_ema: bool = False  # the EMA model's, recorded by runs with one (``ema_decay`` > 0)
    needs_deploy: bool = False  # the inference form's, recorded by runs of an architecture with one (bench/trial/deploy.py)

    def title(self) -> str:
        return self.label[0].upper() + self.label[1:]

    @property
    def direction(self) -> str:
        """``higher`` or ``lower``: which values are better."""
        return "higher" if self.higher_is_better else "lower"

    @property
    def path(self) -> str:
        """Where a run document holds it (run scope): ``summary.NAME``, or ``derived.NAME``
        for a value known before the trial runs, so that pending runs match too."""
        return f"{'derived' if self.derived else 'summary'}.{self.name}"


_ACC = dict(unit="fraction", scale=100.0, delta_unit="points")
_LOSS = dict(unit="nats", higher_is_better=False, digits=3)
_SECONDS = dict(unit="s", higher_is_better=False)
_COUNT = dict(unit="spikes", higher_is_better=False, needs_steps=True)
_EMA = dict(needs_ema=True)

METRICS: tuple[Metric, ...] = (
    # -- run: outcome
    Metric("final_val_acc", "final validation accuracy (%)", **_ACC,
           definition="top-1 accuracy on the validation split after the last completed epoch"),
    Metric("best_val_acc", "best validation accuracy (%)", **_ACC,
           definition="the highest validation accuracy over the completed epochs"),
    Metric("final_train_acc", "final training accuracy (%)", **_ACC,
           definition="top-1 accuracy on the last epoch's training batches, as trained (augmented)"),
    Metric("final_val_loss", "final validation loss", **_LOSS,
           definition="mean cross-entropy on the validation split after the last completed epoch"),
    Metric("final_train_loss", "final training loss", **_LOSS,
           definition="mean training loss (label smoothing included) over the last epoch's batches"),
    # -- run: the EMA model's (runs with ema_decay > 0; see bench/trial/ema.py)
    Metric("final_ema_val_acc", "final EMA validation accuracy (%)", **_ACC, **_EMA,
           definition="top-1 accuracy on the validation split of the EMA model after the last completed epoch"),
    Metric("best_ema_val_acc", "best EMA validation accuracy (%)", **_ACC, **_EMA,
           definition="the EMA model's highest validation accuracy over the completed epochs"),
    Metric("final_ema_val_loss", "final EMA validation loss", **_LOSS, **_EMA,
           definition="the EMA model's mean cross-entropy on the validation split after the last completed epoch"),
    # -- run: the inference form's (architectures that deploy another network; see bench/trial/deploy.py)
    Metric("deployed_val_acc", "deployed validation accuracy (%)", **_ACC, needs_deploy=True,
           definition="top-1 accuracy on the validation split of the architecture's inference form (RepVGG: "
                      "branches fused) built from the final weights"),
    Metric("deployed_val_loss", "deployed validation loss", **_LOSS, needs_deploy=True,
           definition="the inference form's mean cross-entropy on the validation split"),
    Metric("deployed_logit_error", "deployed logit error", higher_is_better=False, digits=7, needs_deploy=True,
           definition="largest absolute difference of the inference form's and the trained network's validation "
                      "logits, relative to the largest logit magnitude (the same function: rounding only)"),
    # -- run: cost
    Metric("samples_per_s", "training throughput (samples/s)", unit="samples/s", digits=0,
           definition="training examples per second of training time, over all completed epochs"),
    Metric("train_seconds", "training time (s)", **_SECONDS,
           definition="training time summed over the epochs, evaluation excluded"),
    Metric("wall_seconds", "wall-clock time (s)", **_SECONDS,
           definition="the whole trial: data, model, training and evaluation"),
    Metric("steps", "optimizer steps", unit="steps", higher_is_better=False, digits=0,
           definition="optimizer steps taken (a diverged run stops before the diverging step's update)"),
    Metric("epochs_done", "epochs done", unit="epochs", digits=0, definition="epochs completed"),
    Metric("peak_mem_mb", "peak memory (MB)", unit="MiB", higher_is_better=False, digits=0,
           definition="peak CUDA memory allocated on a GPU; peak resident memory of the process otherwise"),
    # -- run: set-up
    Metric("effective_lr", "effective learning rate", digits=4, derived=True,
           definition="the learning rate after the batch-size scaling rule (lr_scaling)"),
    Metric("steps_per_epoch", "optimizer steps per epoch", unit="steps", higher_is_better=False, digits=0,
           definition="full batches per epoch: training examples // batch_size"),
    # -- run: divergence (diverged runs only)
    Metric("diverged_step", "divergence step", unit="step", digits=0,
           definition="0-based optimizer step whose loss was not finite or above diverge_factor × the first loss"),
    Metric("diverged_epoch", "divergence epoch", unit="epoch", digits=0,
           definition="1-based epoch of that step"),
    Metric("diverged_loss", "loss at divergence", **_LOSS,
           definition="the training loss of that step (absent when not finite)"),
    # -- run: stability (runs with log_steps: true; see bench/trial/spikes.py)
    Metric("loss_spikes", "loss spikes", **_COUNT,
           definition="runs of consecutive steps whose loss exceeds 2 × the median of the 50 steps before"),
    Metric("grad_spikes", "first-layer gradient spikes", **_COUNT,
           definition="spikes of the first layer's gradient norm (absent when that layer is frozen)"),
    Metric("preceded_spikes", "loss spikes preceded by a gradient spike", **_COUNT,
           definition="loss spikes that a first-layer gradient spike precedes by 1 to 10 steps"),
    Metric("max_acc_drop", "largest training-accuracy drop (points)", unit="fraction", higher_is_better=False,
           scale=100.0, needs_steps=True,
           definition="deepest fall of the smoothed per-batch training accuracy below its best so far"),
    # -- epoch
    Metric("val_acc", "validation accuracy (%)", EPOCH, **_ACC,
           definition="top-1 accuracy on the validation split after the epoch"),
    Metric("ema_val_acc", "EMA validation accuracy (%)", EPOCH, **_ACC, **_EMA,
           definition="top-1 accuracy on the validation split of the EMA model after the epoch"),
    Metric("ema_val_loss", "EMA validation loss", EPOCH, **_LOSS, **_EMA,
           definition="the EMA model's mean cross-entropy on the validation split after the epoch"),
    Metric("train_acc", "training accuracy (%)", EPOCH, **_ACC,
           definition="top-1 accuracy on the epoch's training batches, as trained (augmented)"),
    Metric("val_loss", "validation loss", EPOCH, **_LOSS,
           definition="mean cross-entropy on the validation split after the epoch"),
    Metric("train_loss", "training loss", EPOCH, **_LOSS,
           definition="mean training loss (label smoothing included) over the epoch's batches"),
    Metric("lr", "learning rate", EPOCH, digits=4, definition="the learning rate of the epoch's first step"),
    Metric("grad_norm", "gradient norm", EPOCH, higher_is_better=False, digits=3,
           definition="mean over the epoch's steps of the global gradient norm ‖g‖₂, before any clipping"),
    Metric("epoch_seconds", "epoch time (s)", EPOCH, **_SECONDS, definition="training and evaluation of the epoch"),
    Metric("train_seconds", "training time per epoch (s)", EPOCH, **_SECONDS,
           definition="training time of the epoch, evaluation excluded"),
    Metric("samples_per_s", "training throughput (samples/s)", EPOCH, unit="samples/s", digits=0,
           definition="training examples per second of the epoch's training time"),
    Metric("peak_mem_mb", "peak memory (MB)", EPOCH, unit="MiB", higher_is_better=False, digits=0,
           definition="peak memory since the trial started, as the run metric"),
)

RUN_METRICS: dict[str, Metric] = {m.name: m for m in METRICS if m.scope == RUN}
EPOCH_METRICS: dict[str, Metric] = {m.name: m for m in METRICS if m.scope == EPOCH}

#: The keys that place a per-epoch metrics document (besides its run_id): not metrics.
EPOCH_INDEX: dict[str, str] = {
    "epoch": "1-based epoch number",
    "step": "optimizer steps done by the end of the epoch (cumulative)",
}

#: Summary keys that are not numbers: queryable with ``--where``, never tabulated.
SUMMARY_FIELDS: dict[str, str] = {
    "device": "the torch device the trial trained on, e.g. cpu or cuda:0",
}

#: The run metrics computed from the per-step records (``log_steps: true``).
STABILITY_METRICS: tuple[str, ...] = tuple(m.name for m in RUN_METRICS.values() if m.needs_steps)

#: The metrics of the EMA model, both scopes (runs with ``ema_decay`` > 0).
EMA_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.needs_ema)


def run_metric(name: str) -> Metric:
    """The run metric ``name`` (one number per trial, a summary key)."""
    if name not in RUN_METRICS:
        raise UnknownNameError("run metric", name, RUN_METRICS)
    return RUN_METRICS[name]


def epoch_metric(name: str) -> Metric:
    """The per-epoch metric ``name`` (a key of each per-epoch metrics document)."""
    if name not in EPOCH_METRICS:
        raise UnknownNameError("per-epoch metric", name, EPOCH_METRICS)
    return EPOCH_METRICS[name]


def summary_keys() -> set[str]:
    """Every key a run's summary may hold: the run metrics and :data:`SUMMARY_FIELDS`."""
    return {*RUN_METRICS, *SUMMARY_FIELDS}


def declared_summary(values: Mapping[str, object]) -> dict[str, object]:
    """``values`` as a dict, after checking that every key is a declared summary key
    (a :class:`ValueError` names the undeclared ones: add them to :data:`METRICS` first)."""
    unknown = sorted(set(values) - summary_keys())
    if unknown:
        raise ValueError(f"Summary keys {', '.join(unknown)} are not declared in bench/metrics.py.")
    return dict(values)

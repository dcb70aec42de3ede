"""The metrics a report can show: their label, display scale and direction.

Run metrics are one number per trial (its ``summary``); epoch metrics are recorded once per
epoch (the ``metrics`` documents). Accuracies are stored as fractions and shown in percent,
so differences between accuracies read in percentage points.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import UnknownNameError


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    scale: float = 1.0  # stored value × scale = shown value
    higher_is_better: bool = True
    digits: int = 1  # decimals shown
    unit: str = ""  # of a difference of two shown values

    def title(self) -> str:
        return self.label[0].upper() + self.label[1:]


_ACC = dict(scale=100.0, unit="points")
RUN_METRICS = {
    m.name: m
    for m in (
        Metric("final_val_acc", "final validation accuracy (%)", **_ACC),
        Metric("best_val_acc", "best validation accuracy (%)", **_ACC),
        Metric("final_train_acc", "final training accuracy (%)", **_ACC),
        Metric("final_val_loss", "final validation loss", higher_is_better=False, digits=3),
        Metric("final_train_loss", "final training loss", higher_is_better=False, digits=3),
        Metric("samples_per_s", "training throughput (samples/s)", digits=0),
        Metric("train_seconds", "training time (s)", higher_is_better=False),
        Metric("wall_seconds", "wall-clock time (s)", higher_is_better=False),
        Metric("steps", "optimizer steps", higher_is_better=False, digits=0),
        Metric("epochs_done", "epochs done", digits=0),
        Metric("peak_mem_mb", "peak memory (MB)", higher_is_better=False, digits=0),
        Metric("effective_lr", "effective learning rate", digits=4),
    )
}
EPOCH_METRICS = {
    m.name: m
    for m in (
        Metric("val_acc", "validation accuracy (%)", **_ACC),
        Metric("train_acc", "training accuracy (%)", **_ACC),
        Metric("val_loss", "validation loss", higher_is_better=False, digits=3),
        Metric("train_loss", "training loss", higher_is_better=False, digits=3),
        Metric("lr", "learning rate", digits=4),
        Metric("grad_norm", "gradient norm", higher_is_better=False, digits=3),
        Metric("epoch_seconds", "epoch time (s)", higher_is_better=False),
        Metric("train_seconds", "training time per epoch (s)", higher_is_better=False),
        Metric("samples_per_s", "training throughput (samples/s)", digits=0),
        Metric("peak_mem_mb", "peak memory (MB)", higher_is_better=False, digits=0),
    )
}


def run_metric(name: str) -> Metric:
    if name not in RUN_METRICS:
        raise UnknownNameError("run metric", name, RUN_METRICS)
    return RUN_METRICS[name]


def epoch_metric(name: str) -> Metric:
    if name not in EPOCH_METRICS:
        raise UnknownNameError("per-epoch metric", name, EPOCH_METRICS)
    return EPOCH_METRICS[name]

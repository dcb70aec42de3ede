"""Per-step instrumentation of a training run (``log_steps: true``).

Every optimizer step records: the training loss, the accuracy of the batch, the global
gradient norm (all parameters, before any clipping), the gradient norm of the first layer
(the one that sees the pixels: a ViT's patch projection, whose gradient MoCo v3 watches)
and the learning rate the step used. Values stay on the device as 0-d tensors and are
copied to the host once per flush (once per epoch, and at divergence), so the
instrumentation adds no synchronisation per step (the loop makes none either).

At the end of the run :meth:`StepLog.stability` turns the whole series into the run's
stability metrics (:mod:`bench.trial.spikes`), which go into the run's summary; the report
recomputes them from the stored steps when it is asked for other thresholds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.metrics import STABILITY_METRICS
from bench.trial.spikes import StabilityParams, stability

StepReport = Callable[[list[dict[str, Any]]], None]

#: The fields of one step record, besides ``step`` (0-based optimizer step) and ``epoch``.
STEP_FIELDS = ("loss", "acc", "grad_norm", "first_grad_norm", "lr")

#: The stability metrics copied into a run's summary: the run metrics of bench.metrics that need steps.
SUMMARY_KEYS = STABILITY_METRICS


def grad_norm(params: list[nn.Parameter]) -> torch.Tensor | None:
    """‖g‖₂ over the gradients of ``params`` (None when none has a gradient, e.g. frozen)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class StepLog:
    """Collects step records; ``flush`` hands the pending ones to ``report``."""

    def __init__(self, report: StepReport, first_layer: nn.Module) -> None:
        self.report = report
        self.first_params = list(first_layer.parameters())
        self._pending: list[tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, float]] = []
        self.series: dict[str, list[float | None]] = {"step": [], **{name: [] for name in STEP_FIELDS}}

    def record(
        self, step: int, epoch: int, loss: torch.Tensor | float, correct: torch.Tensor, batch: int,
        global_norm: torch.Tensor | None, lr: float,
    ) -> None:
        """One step: ``loss`` a 0-d tensor on the device (or a number), ``correct`` the
        batch's correct count. Nothing is copied to the host here."""
        first = grad_norm(self.first_params)
        loss = loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
        self._pending.append((step, epoch, loss, correct.detach() / batch, global_norm, first, lr))

    def truncate(self, last_step: int) -> None:
        """Drops the pending records after ``last_step`` (steps a lazy divergence check
        let run past the diverging one)."""
        self._pending = [p for p in self._pending if p[0] <= last_step]

    def flush(self) -> None:
        if not self._pending:
            return
        # one device→host copy for the whole block
        tensors = [t for (_, _, loss, acc, g, f, _) in self._pending for t in (loss, acc, g, f) if t is not None]
        values = iter(torch.stack([t.float().to(tensors[0].device) for t in tensors]).tolist())
        records = []
        for step, epoch, _loss, acc, g, f, lr in self._pending:
            record = {
                "step": step,
                "epoch": epoch,
                "loss": next(values),
                "acc": next(values),
                "grad_norm": next(values) if g is not None else None,
                "first_grad_norm": next(values) if f is not None else None,
                "lr": lr,
            }
            records.append(record)
            for name in self.series:
                self.series[name].append(record[name])
        self._pending.clear()
        self.report(records)

    def stability(self, params: StabilityParams) -> dict[str, Any]:
        """The stability metrics of the steps so far (see :func:`bench.trial.spikes.stability`)."""
        import pandas as pd

        if not self.series["step"]:
            return {}
        index = pd.Index(self.series["step"], name="step")
        frame = pd.DataFrame({k: v for k, v in self.series.items() if k != "step"}, index=index, dtype=float)
        first = frame["first_grad_norm"]
        return stability(frame["loss"], frame["acc"], None if first.isna().all() else first.fillna(0.0), params)

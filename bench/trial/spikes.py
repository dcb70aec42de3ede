"""Training-stability metrics of one run, from its per-step series (pure functions).

Inputs are per-step series: a :class:`pandas.Series` whose index is the optimizer step, or
any 1-D array (steps 0, 1, 2, ...). Nothing here trains or reads the store; the functions
take numbers and return numbers, so a report can recompute them from stored series with
other parameters.

Definitions (``t`` an index position, ``x`` the series):

- **Running median** m_t = median(x_{t−w}, …, x_{t−1}): the ``window`` = w steps *before*
  t (the current value is excluded, so a spike does not raise its own reference). It is
  undefined for the first w steps.
- **Spike step**: x_t > k · m_t, at a position t ≥ max(``warmup``, w) (early training,
  where the loss falls fastest, is ignored). Non-finite values are never spike steps
  (that is divergence). A **spike** is a maximal run of consecutive spike steps: a loss
  that stays high for three steps is one spike. The number of loss spikes counts these
  runs.
- **Largest accuracy drop**: with s the accuracy smoothed by a trailing mean over
  ``smooth`` steps (s_t = mean(a_{t−smooth+1}, …, a_t), undefined before a full window),
  drop = max over t of (max_{u ≤ t} s_u − s_t): the deepest fall of the smoothed training
  accuracy below its best value so far. Reported with the steps of that best value
  (``peak_step``) and of the bottom (``trough_step``); 0 for an accuracy that never falls.
- **Divergence step**: the first step whose loss is NaN or ±inf, or exceeds ``factor`` ×
  the first finite loss (the trainer's rule with ``diverge_factor``); None if none.
- **Preceded loss spike**: a loss spike starting at step s is preceded by a first-layer
  gradient-norm spike (spikes of the gradient-norm series, same definition) that starts
  at a position g with ``min_lag`` ≤ pos(s) − g ≤ ``max_lag``; the lag is counted in
  steps and the nearest such gradient spike is reported. With the default ``min_lag`` = 1
  a gradient spike at the very step of the loss spike does not count as preceding it
  (both come from the same parameters). This is the pattern Chen, Xie & He 2021 (MoCo v3,
  arXiv:2104.02057) report for ViT training: the gradient of the patch projection spikes
  first, the loss follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

Values = pd.Series | np.ndarray | Sequence[float]


@dataclass(frozen=True)
class Spike:
    """A run of consecutive spike steps (steps are index labels of the series)."""

    start: Any  # step of the first spike step
    end: Any  # step of the last spike step
    peak: Any  # step of the largest value in the run
    ratio: float  # largest x_t / m_t in the run


@dataclass(frozen=True)
class AccuracyDrop:
    size: float  # max_{u ≤ t} s_u − s_t at its largest (0 when the accuracy never falls)
    peak_step: Any  # step of the best smoothed accuracy before the drop (None: no defined value)
    trough_step: Any  # step at the bottom of the drop


@dataclass(frozen=True)
class Precedence:
    """A loss spike and the first-layer gradient-norm spike that precedes it."""

    loss_step: Any  # start step of the loss spike
    grad_step: Any  # start step of the gradient-norm spike
    lag: int  # positions between the two (loss − grad), ≥ min_lag


@dataclass(frozen=True)
class StabilityParams:
    k: float = 2.0  # a spike step exceeds k × the running median
    window: int = 50  # steps in the running median (before the current step)
    warmup: int = 50  # positions before this are never spike steps
    grad_k: float | None = None  # k for the gradient-norm series (None: the same k)
    acc_smooth: int = 10  # trailing-mean steps smoothing the accuracy
    diverge_factor: float = 10.0  # divergence: loss above this × the first finite loss
    min_lag: int = 1  # a gradient spike precedes a loss spike by at least ...
    max_lag: int = 10  # ... and at most this many steps

    def __post_init__(self) -> None:
        if not self.k > 1 or (self.grad_k is not None and not self.grad_k > 1):
            raise ValueError(f"spike thresholds must be > 1 × the running median; got k={self.k}, grad_k={self.grad_k}")
        if self.window < 1 or self.acc_smooth < 1 or self.warmup < 0:
            raise ValueError(f"window and acc_smooth must be ≥ 1 and warmup ≥ 0; got {self}")
        if not 0 <= self.min_lag <= self.max_lag:
            raise ValueError(f"lags must satisfy 0 ≤ min_lag ≤ max_lag; got {self.min_lag}, {self.max_lag}")
        if not self.diverge_factor > 1:
            raise ValueError(f"diverge_factor must be > 1; got {self.diverge_factor}")


def as_series(values: Values) -> pd.Series:
    """A float series indexed by step (arrays get steps 0, 1, 2, ...); ±inf become NaN."""
    series = values.astype(float) if isinstance(values, pd.Series) else pd.Series(np.asarray(values, dtype=float))
    return series.replace([np.inf, -np.inf], np.nan)


def running_median(values: Values, window: int = 50) -> pd.Series:
    """m_t: the median of the ``window`` values before position t (NaN before a full window;
    non-finite values in the window are skipped)."""
    series = as_series(values)
    return series.rolling(window, min_periods=window).median().shift(1)


def find_spikes(values: Values, *, k: float = 2.0, window: int = 50, warmup: int = 50) -> list[Spike]:
    """The spikes of a series: runs of consecutive steps with x_t > k · m_t (module docstring)."""
    series = as_series(values)
    ratio = (series / running_median(series, window)).to_numpy()
    flagged = np.nan_to_num(ratio, nan=0.0) > k
    flagged[: max(warmup, window)] = False
    spikes: list[Spike] = []
    positions = np.flatnonzero(flagged)
    if not len(positions):
        return spikes
    breaks = np.flatnonzero(np.diff(positions) > 1)
    starts = np.r_[positions[0], positions[breaks + 1]]
    ends = np.r_[positions[breaks], positions[-1]]
    index = series.index
    values_np = series.to_numpy()
    for a, b in zip(starts, ends):
        peak = a + int(np.argmax(values_np[a : b + 1]))
        spikes.append(Spike(index[a], index[b], index[peak], float(np.max(ratio[a : b + 1]))))
    return spikes


def largest_accuracy_drop(acc: Values, *, smooth: int = 10) -> AccuracyDrop:
    """max over t of (max_{u ≤ t} s_u − s_t), s the trailing ``smooth``-step mean (module docstring)."""
    series = as_series(acc)
    smoothed = series.rolling(smooth, min_periods=smooth).mean()
    s = smoothed.to_numpy()
    defined = np.flatnonzero(~np.isnan(s))
    if not len(defined):
        return AccuracyDrop(0.0, None, None)
    s = s[defined]
    best = np.maximum.accumulate(s)
    drops = best - s
    trough = int(np.argmax(drops))
    peak = int(np.argmax(s[: trough + 1]))  # first position reaching the best value so far
    index = series.index[defined]
    if drops[trough] <= 0:
        return AccuracyDrop(0.0, index[peak], index[peak])
    return AccuracyDrop(float(drops[trough]), index[peak], index[trough])


def divergence_step(loss: Values, *, factor: float = 10.0) -> Any:
    """The first step whose loss is NaN/inf or above ``factor`` × the first finite loss."""
    raw = loss if isinstance(loss, pd.Series) else pd.Series(np.asarray(loss, dtype=float))
    values = raw.to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    finite = np.flatnonzero(~bad)
    if len(finite):
        bad |= np.where(bad, False, values > factor * max(values[finite[0]], 1e-8))
    hits = np.flatnonzero(bad)
    return raw.index[hits[0]] if len(hits) else None


def preceded_spikes(
    loss_spikes: Sequence[Spike], grad_spikes: Sequence[Spike], index: pd.Index, *, min_lag: int = 1, max_lag: int = 10
) -> list[Precedence]:
    """Loss spikes with a gradient-norm spike starting ``min_lag``…``max_lag`` positions
    earlier (the nearest one); ``index`` is the shared step index of both series."""
    position = {step: i for i, step in enumerate(index)}
    grad_starts = np.array(sorted(position[g.start] for g in grad_spikes), dtype=np.int64)
    found: list[Precedence] = []
    for spike in loss_spikes:
        s = position[spike.start]
        lags = s - grad_starts
        ok = (lags >= min_lag) & (lags <= max_lag)
        if ok.any():
            lag = int(lags[ok].min())
            found.append(Precedence(spike.start, index[s - lag], lag))
    return found


def stability(
    loss: Values,
    acc: Values | None = None,
    grad_norm: Values | None = None,
    params: StabilityParams = StabilityParams(),
) -> dict[str, Any]:
    """Every metric of one run, as a JSON-friendly dict.

    Keys: ``loss_spikes`` (count), ``loss_spike_steps`` (start steps), ``diverged_step``;
    with ``acc``: ``max_acc_drop``, ``max_acc_drop_peak_step``, ``max_acc_drop_step``; with
    ``grad_norm`` (the first layer's, on the same steps as ``loss``): ``grad_spikes``,
    ``grad_spike_steps``, ``preceded_spikes`` (count), ``preceded_spike_steps``,
    ``preceded_lags`` and ``preceded_fraction`` (of the loss spikes; None without any).
    """
    loss_s = as_series(loss)
    spikes = find_spikes(loss_s, k=params.k, window=params.window, warmup=params.warmup)
    out: dict[str, Any] = {
        "loss_spikes": len(spikes),
        "loss_spike_steps": [_plain(s.start) for s in spikes],
        "diverged_step": _plain(divergence_step(loss, factor=params.diverge_factor)),
    }
    if acc is not None:
        drop = largest_accuracy_drop(acc, smooth=params.acc_smooth)
        out.update(
            max_acc_drop=drop.size, max_acc_drop_peak_step=_plain(drop.peak_step), max_acc_drop_step=_plain(drop.trough_step)
        )
    if grad_norm is not None:
        grad_s = as_series(grad_norm)
        if not grad_s.index.equals(loss_s.index):
            raise ValueError("the gradient-norm series must be indexed by the same steps as the loss")
        grads = find_spikes(grad_s, k=params.grad_k or params.k, window=params.window, warmup=params.warmup)
        pairs = preceded_spikes(spikes, grads, loss_s.index, min_lag=params.min_lag, max_lag=params.max_lag)
        out.update(
            grad_spikes=len(grads),
            grad_spike_steps=[_plain(g.start) for g in grads],
            preceded_spikes=len(pairs),
            preceded_spike_steps=[_plain(p.loss_step) for p in pairs],
            preceded_lags=[p.lag for p in pairs],
            preceded_fraction=len(pairs) / len(spikes) if spikes else None,
        )
    return out


def _plain(value: Any) -> Any:
    """numpy scalars → Python numbers (JSON documents)."""
    return value.item() if isinstance(value, np.generic) else value

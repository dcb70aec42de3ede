"""What a study holds equal between its trials, and whether the trials bear it out.

A spec declares ``budget: epochs | steps | seconds``. The report states it, checks it where
the runs can tell (the configured epochs; the optimizer steps and training seconds the
completed trials took) and says plainly when it is not true, then states what was not held
equal: with equal epochs, smaller batches take more steps.
"""

from __future__ import annotations

import pandas as pd

from bench.report.format import number

SECONDS_TOLERANCE = 0.10  # a seconds budget holds when the trials' training times are within ±10% of their median


def _values(runs: pd.DataFrame, column: str, *, completed: bool) -> pd.Series:
    if column not in runs:
        return pd.Series(dtype=float)
    data = runs[runs["status"] == "completed"] if completed else runs
    return pd.to_numeric(data[column], errors="coerce").dropna()


def _range(values: pd.Series, digits: int, unit: str) -> str:
    if values.empty:
        return ""
    low, high = values.min(), values.max()
    if low == high:
        return f"{number(low, digits)} {unit}"
    return f"{number(low, digits)} to {number(high, digits)} {unit}"


def budget_lines(budget: str | None, runs: pd.DataFrame) -> list[str]:
    """Markdown bullet lines for the report's set-up: the declared budget and its check,
    then what varies."""
    epochs = _values(runs, "epochs", completed=False)
    steps = _values(runs, "steps", completed=True)
    seconds = _values(runs, "train_seconds", completed=True)
    measured = {
        "epochs": (epochs, f"{_range(epochs, 0, 'epochs')} configured"),
        "steps": (steps, _range(steps, 0, "optimizer steps")),
        "seconds": (seconds, _range(seconds, 1, "s of training")),
    }
    lines: list[str] = []
    if budget is None:
        lines.append("- Budget: not declared (a spec states what its trials hold equal with `budget: epochs | steps | seconds`).")
    else:
        lines.append(f"- {_check(budget, epochs, steps, seconds, runs)}")
    others = {k: v for k, v in measured.items() if k != budget and len(v[0])}
    same = [text for values, text in others.values() if values.nunique() == 1]
    varies = [text for values, text in others.values() if values.nunique() > 1]
    if same and budget:
        lines.append("- Also equal: " + "; ".join(same) + " per trial.")
    if varies or (same and not budget):
        label = "Not held equal" if budget else "Per trial"
        lines.append(f"- {label}: " + "; ".join(varies if budget else same + varies) + " (steps and seconds of the completed trials).")
    return lines


def _check(budget: str, epochs: pd.Series, steps: pd.Series, seconds: pd.Series, runs: pd.DataFrame) -> str:
    declared = f"declared `budget: {budget}`"
    if budget == "epochs":
        if epochs.empty:
            return f"Held equal: epochs ({declared}; no trial to check it on)."
        if epochs.nunique() == 1:
            value = int(epochs.iloc[0])
            short = _stopped_early(runs, value)
            return f"Held equal: {value} epochs per trial ({declared}; checked: every trial is configured for {value}){short}."
        counts = ", ".join(f"{int(v)} ({n} trials)" for v, n in epochs.value_counts().sort_index().items())
        return f"**Not held equal** although {declared}: the trials are configured for {counts} epochs."
    if budget == "steps":
        if steps.empty:
            return f"Held equal: optimizer steps ({declared}; no completed trial to check it on)."
        if steps.nunique() == 1:
            return f"Held equal: {number(steps.iloc[0], 0)} optimizer steps per trial ({declared}; checked on the {len(steps)} completed trials)."
        return f"**Not held equal** although {declared}: the completed trials took {_range(steps, 0, 'optimizer steps')}."
    if seconds.empty:
        return f"Held equal: training seconds ({declared}; no completed trial to check it on)."
    median = seconds.median()
    spread = max(abs(seconds.max() - median), abs(median - seconds.min())) / median if median > 0 else 0.0
    if spread <= SECONDS_TOLERANCE:
        return (
            f"Held equal: about {number(median, 1)} s of training per trial ({declared}; checked: the "
            f"{len(seconds)} completed trials are within ±{SECONDS_TOLERANCE:.0%} of it)."
        )
    return (
        f"**Not held equal** although {declared}: the completed trials trained for {_range(seconds, 1, 's')} "
        f"(up to {spread:.0%} from the median, beyond the ±{SECONDS_TOLERANCE:.0%} tolerance)."
    )


def _stopped_early(runs: pd.DataFrame, epochs: int) -> str:
    if "epochs_done" not in runs:
        return ""
    done = pd.to_numeric(runs["epochs_done"], errors="coerce")
    stopped = runs[(runs["status"] != "pending") & done.notna() & (done < epochs)]
    if stopped.empty:
        return ""
    counts = stopped["status"].value_counts()
    detail = ", ".join(f"{n} {s}" for s, n in counts.items())
    return f"; {len(stopped)} trial{'s' if len(stopped) != 1 else ''} stopped before the last epoch ({detail})"


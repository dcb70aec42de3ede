"""The report's column-wise computations equal their row-by-row definitions.

At 100,000 runs a report cannot afford a Python call per run and column, so the keys of
configurations (``config_keys``), the outcome of each run (``with_outcome``), the cells of
a table (``aggregate``) and the per-epoch join (``join_runs``) work per group of equal
values, on numpy arrays. Each is checked here against the definition it replaced, kept
below as the reference, on a study's runs (every config field, several seeds, failed,
diverged, pending and collapsed runs) and on frames made to break them: missing values,
1 / 1.0 / True in one object column, (1, 2) and (1.0, 2), keys that are NaN, seeds a cell
holds twice.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.report import claims
from bench.report.frame import join_runs, outcome, runs_frame, with_outcome
from bench.report.stats import describe, interval
from bench.report.tables import CELL_COLUMNS, OUTCOMES, aggregate
from bench.spec import CONFIG_FIELDS, load_spec

SPEC = """name: wide
base: {dataset: digits, arch: cnn, epochs: 2}
axes: {norm: [bn, gn, ln], batch_size: [8, 32], lr: [0.05, 0.1]}
seeds: [0, 1, 2]
report: {kind: pivot, rows: norm, columns: batch_size, metric: final_val_acc}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """A study's runs as the report reads them: every config field, and each outcome."""
    path = Path(tmp_path_factory.mktemp("spec")) / "wide.yaml"
    path.write_text(SPEC)
    rng = random.Random(0)
    docs = []
    for i, trial in enumerate(load_spec(str(path)).expand()):
        status = ("completed", "completed", "completed", "diverged", "failed", "pending")[i % 6]
        accuracy = rng.choice([0.05, 0.11, 0.5, 0.93]) if status == "completed" else None
        doc = {"_id": trial.trial_id, "status": status, "study": ["wide"], "config": trial.to_dict(),
               "derived": {"effective_lr": trial.effective_lr}}
        if status != "pending":
            doc["summary"] = {"final_val_acc": accuracy, "epochs_done": 2}
        if status == "failed":
            doc["error"] = "Traceback\nValueError: boom"
        docs.append(doc)
    docs[1]["config"]["lr_milestones"] = [1.0, 2]  # equal to [1, 2], spelled differently
    docs[2]["config"]["lr_milestones"] = [1, 2]
    docs[3]["config"].pop("momentum")  # a run stored before a field existed reads its default
    return runs_frame(docs)


def mixed() -> pd.DataFrame:
    return pd.DataFrame({
        "norm": pd.array(["gn", "bn", None, "gn", "bn", "gn"], dtype="str"),
        "batch_size": [8, 16, 8, 8, np.nan, 8],
        "lr": [0.1, float("nan"), 2.0, 0.1, 0.1, 0.1],
        "momentum": [1, 1.0, True, float("nan"), None, 1],
        "lr_milestones": [(1, 2), (1.0, 2), None, (1, 2), (1, 2), [1, 2]],
        "status": pd.array(["completed", "completed", "pending", "diverged", "completed", None], dtype="str"),
        "seed": [0, 0, 1, 2, 3, 0],
        "final_val_acc": [0.05, 0.7, np.nan, 0.1, "x", 0.9],
        "dataset": pd.array(["digits", "digits", None, "cifar100", "digits", "digits"], dtype="str"),
        "val_subset": [None, 100, None, 50.0, True, None],
        "variant": ["a", "b", None, "a", "a", "a"],
    }, index=[5, 7, 9, 11, 13, 15])


def equal(a: pd.DataFrame | pd.Series, b: pd.DataFrame | pd.Series) -> None:
    if isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b, check_exact=True)
    else:
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        assert list(a.dtypes) == list(b.dtypes)


# --------------------------------------------------------------------------- the definitions


def config_keys_by_row(runs: pd.DataFrame) -> pd.Series:
    columns = [c for c in (*CONFIG_FIELDS, "variant") if c in runs and c != "seed"]
    if not columns:
        return pd.Series([""] * len(runs), index=runs.index)
    parts = [runs[column].map(lambda v, d=CONFIG_FIELDS[column].default if column in CONFIG_FIELDS else None: claims._key(v, d))
             for column in columns]
    return pd.concat(parts, axis=1).agg("\x1f".join, axis=1)


def aggregate_by_cell(frame: pd.DataFrame, keys: str | list[str], metric: str, *, ci: str = "none", level: float = 0.95) -> pd.DataFrame:
    keys = [keys] if isinstance(keys, str) else list(keys)
    if frame.empty:
        return pd.DataFrame(columns=[*keys, *CELL_COLUMNS])
    frame = with_outcome(frame)
    records = []
    for group_keys, group in frame.groupby(keys, sort=True, dropna=False):
        group_keys = group_keys if isinstance(group_keys, tuple) else (group_keys,)
        done = group[group["status"] == "completed"]
        values = pd.to_numeric(done[metric], errors="coerce") if metric in done else pd.Series(dtype=float)
        done = done.assign(_value=values)[values.notna()]
        summary = describe(done["_value"].to_numpy())
        low, high = interval(done["_value"].to_numpy(), ci, level)
        per_seed = done.groupby("seed")["_value"] if "seed" in done else None
        records.append({
            **dict(zip(keys, group_keys)), "mean": summary.mean, "std": summary.std, "n": summary.n, "total": int(len(group)),
            **{o: int((group["status"] == o).sum()) for o in OUTCOMES},
            "collapsed": int(((group["status"] == "completed") & (group["outcome"] == "collapsed")).sum()),
            "pending": int((~group["status"].isin(OUTCOMES)).sum()), "ci_low": low, "ci_high": high,
            "values": {int(s): float(v) for s, v in per_seed.mean().items()} if per_seed is not None else {},
            "pooled_seeds": int((per_seed.size() > 1).sum()) if per_seed is not None else 0,
        })
    return pd.DataFrame.from_records(records)


# --------------------------------------------------------------------------- the checks


def test_config_keys_equal_the_keys_spelled_row_by_row(runs: pd.DataFrame) -> None:
    for frame in (runs, runs.iloc[::-1], runs.iloc[:0], mixed(), mixed().iloc[1:], mixed()[["seed"]]):
        expected, got = config_keys_by_row(frame), claims.config_keys(frame)
        if isinstance(expected, pd.Series):
            equal(expected, got)
        else:  # no rows: what the row-wise join gives, as it was
            assert got.empty and list(got.columns) == list(expected.columns)
    pairs = pd.DataFrame({"momentum": [1, 1.0, True, None, np.nan], "lr_milestones": [(1, 2), (1, 2), (1, 2), (1.0, 2), [1, 2]]})
    keys = claims.config_keys(pairs).tolist()
    assert keys[0] == keys[1] != keys[2]  # 1 and 1.0 are one value, True another
    assert keys[3] == keys[4].replace("[1, 2]", "(1.0, 2)") != keys[0]  # missing reads the default; (1.0, 2) is not (1, 2)
    assert claims.config_keys(runs).nunique() == 14  # 12 configurations, two runs of which with other lr_milestones


def test_with_outcome_equals_the_outcome_of_each_run(runs: pd.DataFrame) -> None:
    for frame in (runs, mixed(), mixed().drop(columns=["dataset", "val_subset"]), runs.iloc[:0]):
        got = with_outcome(frame)
        assert got["outcome"].dtype == object
        assert got["outcome"].tolist() == [outcome(row) for row in frame.to_dict("records")]
    assert "collapsed" in with_outcome(runs)["outcome"].tolist()


@pytest.mark.parametrize("ci", ["none", "t", "bootstrap"])
def test_aggregate_equals_the_cells_built_group_by_group(runs: pd.DataFrame, ci: str) -> None:
    frames = [runs, runs.sample(frac=1, random_state=1), mixed(), mixed().drop(columns="seed"),
              mixed().assign(seed=[0.0, 1.0, np.nan, 2.0, 3.0, 1.0]), runs.iloc[:0]]
    for frame in frames:
        for keys in ("norm", ["norm", "batch_size"], ["batch_size", "lr"]):
            equal(aggregate(frame, keys, "final_val_acc", ci=ci), aggregate_by_cell(frame, keys, "final_val_acc", ci=ci))
    assert (aggregate(runs, "norm", "final_val_acc")["pooled_seeds"] > 0).all()  # a cell per norm pools its configurations
    assert (aggregate(runs, ["norm", "batch_size", "lr"], "final_val_acc")["pooled_seeds"] == 0).all()


def test_join_runs_equals_the_merge(runs: pd.DataFrame) -> None:
    ids = runs["run_id"].tolist()
    epochs = pd.DataFrame({"run_id": pd.array([i for i in sorted(ids) for _ in range(3)], dtype="str"),
                           "epoch": [e for _ in ids for e in (1, 2, 3)], "val_acc": np.linspace(0, 1, 3 * len(ids))})
    for rows in (epochs, epochs.sample(frac=1, random_state=0), epochs.iloc[5:40]):
        keep = [c for c in runs.columns if c not in rows.columns or c == "run_id"]
        equal(join_runs(rows, runs), rows.merge(runs[keep], on="run_id", how="left"))
    stray = pd.concat([epochs, epochs.iloc[:1].assign(run_id="not-a-run")], ignore_index=True)  # what merge does with it
    twice = pd.concat([runs, runs.iloc[:1]], ignore_index=True)
    for rows, frame in ((stray, runs), (epochs, twice)):
        keep = [c for c in frame.columns if c not in rows.columns or c == "run_id"]
        equal(join_runs(rows, frame), rows.merge(frame[keep], on="run_id", how="left"))

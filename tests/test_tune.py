"""Variant sweeps and the tuned second phase of a study (the DeepOBS protocol)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import ConfigError
from bench.grid.tuning import study_trials, tuned
from bench.spec import load_spec
from bench.store import open_store

SWEEP = """
    name: sweep
    description: Each optimizer over its own learning rates.
    base: {dataset: synthetic, arch: mlp, width: 8, epochs: 1, batch_size: 32, lr_scaling: none}
    variants:
      sgd: {optimizer: sgd, lr: [0.01, 0.1, 1.0]}
      adam: {optimizer: adam, lr: [0.0001, 0.001]}
    repeats: 1
    tune: {over: lr, metric: final_val_acc, seeds: [1, 2]}
    report: {kind: pivot, rows: variant, columns: lr, metric: final_val_acc}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_list_in_a_variant_is_swept_for_that_variant_only(tmp_path):
    spec = load_spec(write(tmp_path, SWEEP))
    pairs = spec.labelled_pairs()
    assert [(label, c.optimizer, c.lr) for label, c in pairs] == [
        ("sgd", "sgd", 0.01), ("sgd", "sgd", 0.1), ("sgd", "sgd", 1.0), ("adam", "adam", 0.0001), ("adam", "adam", 0.001),
    ]
    # a list-typed field takes a list of lists to sweep, a plain list is its one value
    text = SWEEP.replace("adam: {optimizer: adam, lr: [0.0001, 0.001]}", "adam: {optimizer: adam, schedule: step, lr_milestones: [0.3, 0.6]}")
    text = text.replace("tune: {over: lr, metric: final_val_acc, seeds: [1, 2]}", "")
    pairs = load_spec(write(tmp_path, text)).labelled_pairs()
    assert [c.lr_milestones for label, c in pairs if label == "adam"] == [(0.3, 0.6)]


def test_command_line_override_wins_over_a_variant_sweep(tmp_path):
    spec = load_spec(write(tmp_path, SWEEP), overrides={"lr": 0.05})
    assert {c.lr for c in spec.expand()} == {0.05}


def _runs(spec, outcome):
    return {c.trial_id: outcome(label, c) for label, c in spec.labelled_pairs()}


def test_tuned_phase_reruns_each_group_at_its_best_value_with_the_extra_seeds(tmp_path):
    spec = load_spec(write(tmp_path, SWEEP))
    acc = {0.01: 0.5, 0.1: 0.8, 1.0: 0.9, 0.0001: 0.6, 0.001: 0.7}

    def outcome(label, c):
        if c.lr == 1.0:  # the best accuracy would be lr 1.0, but it diverged
            return {"status": "diverged", "summary": {"final_val_acc": 0.95}}
        return {"status": "completed", "summary": {"final_val_acc": acc[c.lr]}}

    second = tuned(spec, spec.labelled_pairs(), _runs(spec, outcome))
    assert [(label, c.lr, c.seed) for label, c in second] == [("sgd", 0.1, 1), ("sgd", 0.1, 2), ("adam", 0.001, 1), ("adam", 0.001, 2)]


def test_a_group_whose_sweep_has_not_finished_is_not_tuned_yet(tmp_path):
    spec = load_spec(write(tmp_path, SWEEP))

    def outcome(label, c):
        status = "running" if c.lr == 0.01 else "completed"
        return {"status": status, "summary": {"final_val_acc": 0.5}}

    second = tuned(spec, spec.labelled_pairs(), _runs(spec, outcome))
    assert {label for label, _ in second} == {"adam"}


def test_a_group_where_everything_diverged_is_not_tuned(tmp_path):
    spec = load_spec(write(tmp_path, SWEEP))
    second = tuned(spec, spec.labelled_pairs(), _runs(spec, lambda label, c: {"status": "diverged" if label == "sgd" else "completed", "summary": {"final_val_acc": 0.5}}))
    assert {label for label, _ in second} == {"adam"}


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ("{over: momentum, seeds: [1]}", "tune.over='momentum' must be a field the study sweeps"),
        ("{over: lr}", "tune needs seeds"),
        ("{over: lr, seeds: [a]}", "tune.seeds must be a non-empty list of integers"),
        ("{over: lr, seeds: [1], per: variant}", "Unknown tune key 'per'"),
    ],
)
def test_bad_tune_blocks_are_config_errors(tmp_path, tune, message):
    text = SWEEP.replace("tune: {over: lr, metric: final_val_acc, seeds: [1, 2]}", f"tune: {tune}")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_spec(write(tmp_path, text))


def test_grid_runs_the_sweep_then_the_tuned_reruns_and_resumes_with_nothing_to_do(tmp_path):
    path = write(tmp_path, SWEEP)
    runner = CliRunner()
    result = runner.invoke(app, ["grid", str(path), "--executor", "local", "--reports-dir", str(tmp_path / "reports")])
    assert result.exit_code == 0, result.output
    assert "tuning: 4 re-runs" in result.output
    spec = load_spec(path)
    with open_store() as store:
        trials = study_trials(spec, store)
        assert len(trials) == 5 + 4
        runs = store.find_runs({"study": "sweep"})
        assert len(runs) == 9 and all(r["status"] in ("completed", "diverged") for r in runs)
        assert sorted(c.seed for _, c in trials) == [0] * 5 + [1, 1, 2, 2]
    again = runner.invoke(app, ["grid", str(path), "--executor", "local", "--no-report"])
    assert again.exit_code == 0, again.output
    assert "9 trials, 9 already finished" in again.output


def test_the_report_states_each_choice_and_flags_one_at_an_end_of_its_sweep():
    import pandas as pd

    from bench.report.markdown import _tuning_lines, tuning_choices

    study = {"variants": {"sgd": {}, "adam": {}}, "tune": {"over": "lr", "metric": "final_val_acc", "seeds": [1, 2]}}
    rows = [{"variant": "sgd", "lr": lr, "seed": 0} for lr in (0.01, 0.1, 1.0)]
    rows += [{"variant": "adam", "lr": lr, "seed": 0} for lr in (0.0001, 0.001, 0.01)]
    rows += [{"variant": "sgd", "lr": 1.0, "seed": s} for s in (1, 2)]  # the largest swept value
    rows += [{"variant": "adam", "lr": 0.001, "seed": s} for s in (1, 2)]  # inside the sweep
    choices = tuning_choices(study, pd.DataFrame(rows)).set_index("configuration")
    assert choices.loc["sgd", "edge"] == "highest" and choices.loc["adam", "edge"] == ""
    assert choices.loc["sgd", "swept"] == [0.01, 0.1, 1.0]
    lines = _tuning_lines(study, pd.DataFrame(rows))
    assert lines == ["- Chosen `lr`: sgd 1, adam 0.001",
                     "- At an end of its sweep (the best value may lie beyond it): sgd (highest of 3)"]
    inside = [r for r in rows if r["variant"] == "adam"]
    assert _tuning_lines(study, pd.DataFrame(inside))[-1] == "- Every chosen `lr` lies inside its sweep (neither its lowest nor its highest value)"
    assert _tuning_lines(study, pd.DataFrame([r for r in rows if r["seed"] == 0])) == []  # no re-run planned yet


def test_the_tuning_round_plans_only_the_new_reruns_with_the_sweeps_stale_after(tmp_path):
    from bench.grid import plan, plan_tuning

    spec = load_spec(write(tmp_path, SWEEP))
    store = open_store(str(tmp_path / "s.sqlite"))
    try:
        first = plan(spec, store, stale_after=7.0)
        assert len(first.todo) == 5 and plan_tuning(first, store).todo == []  # nothing finished: no re-run yet
        acc = {0.01: 0.5, 0.1: 0.8, 1.0: 0.9, 0.0001: 0.6, 0.001: 0.7}
        for config in first.trials:
            store.upsert_run(config.trial_id, {"config": config.to_dict(), "status": "completed",
                                               "summary": {"final_val_acc": acc[config.lr]}}, study="sweep")
        second = plan_tuning(first, store)
        assert second.stale_after == 7.0
        assert sorted((c.optimizer, c.lr, c.seed) for c in second.todo) == [
            ("adam", 0.001, 1), ("adam", 0.001, 2), ("sgd", 1.0, 1), ("sgd", 1.0, 2)]
    finally:
        store.close()


def test_run_study_runs_the_sweep_then_the_tuned_round_and_counts_both(tmp_path, monkeypatch):
    import contextlib

    import bench.grid.local as local
    from bench.grid import GridOptions, run_study
    from bench.trial import TrialResult

    acc = {0.01: 0.5, 0.1: 0.8, 1.0: 0.9, 0.0001: 0.6, 0.001: 0.7}

    def trial(config, report, **_):
        report({"epoch": 1, "val_acc": acc[config.lr]})
        return TrialResult(status="completed", summary={"final_val_acc": acc[config.lr]})

    monkeypatch.setattr(local, "run_trial", trial)
    rounds = []

    def progress(grid_plan, phase):
        rounds.append((phase, len(grid_plan.todo)))
        return contextlib.nullcontext()

    spec = load_spec(write(tmp_path, SWEEP))
    store = open_store(str(tmp_path / "s.sqlite"))
    try:
        outcome = run_study(spec, store, GridOptions(executor="local"), progress_factory=progress, command="bench grid sweep")
        assert rounds == [("grid", 5), ("tuning", 4)]
        assert (outcome.planned, outcome.tuned, outcome.counts["completed"], outcome.unfinished) == (9, 4, 9, 0)
        assert outcome.report is None and store.get_study("sweep")["grids"][-1]["command"] == "bench grid sweep"
        again = run_study(spec, store, GridOptions(executor="local"))
        assert (again.planned, len(again.plan.cached), again.counts["done"]) == (0, 9, 0)
    finally:
        store.close()

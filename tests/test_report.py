"""Report functions are pure: fixed frames in, known numbers and golden text out.

Golden files live in tests/golden/; after an intended change of the output, rewrite them
with ``BENCH_UPDATE_GOLDEN=1 pytest tests/test_report.py`` and review the diff.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.metrics import run_metric
from bench.report.budget import budget_lines
from bench.report.export import to_csv, to_latex
from bench.report.format import MARKDOWN, format_cell
from bench.report.frame import metrics_frame, runs_frame
from bench.report.kinds import SECTIONS, SectionInput
from bench.report.markdown import build_report
from bench.report.plots import curves_plot, log_base, scaling_plot
from bench.report.schema import parse_report
from bench.report.sections.time_to_accuracy import first_reached
from bench.report.tables import aggregate, best_rows, pivot_markdown

GOLDEN = Path(__file__).parent / "golden"
ACC = run_metric("final_val_acc")


def golden(name: str, text: str) -> str:
    path = GOLDEN / name
    if os.environ.get("BENCH_UPDATE_GOLDEN"):
        path.write_text(text)
    return path.read_text()


def run(norm, batch, seed, acc, status="completed"):
    return {
        "_id": f"{norm}-{batch}-{seed}",
        "status": status,
        "study": ["demo"],
        "config": {"norm": norm, "batch_size": batch, "seed": seed, "epochs": 3, "lr_milestones": [0.5]},
        "summary": {"final_val_acc": acc, "train_seconds": 10.0 if status != "pending" else None,
                    "steps": 3 * 64 // batch if status == "completed" else None,
                    "epochs_done": {"completed": 3, "diverged": 1, "failed": 0}.get(status)},
    }


RUNS = [
    run("bn", 2, 0, 0.80), run("bn", 2, 1, 0.82), run("bn", 2, 2, 0.84),
    run("bn", 8, 0, 0.90), run("bn", 8, 1, 0.92), run("bn", 8, 2, None, "diverged"),
    run("gn", 2, 0, 0.86), run("gn", 2, 1, 0.86), run("gn", 2, 2, None, "failed"),
    run("gn", 8, 0, 0.88), run("gn", 8, 1, 0.89), run("gn", 8, 2, 0.90),
    run("ln", 2, 0, None, "diverged"), run("ln", 8, 0, None, "pending"),
]


def epoch_docs() -> list[dict]:
    """Three epochs per completed run (val_acc rising to the final value), one for a diverged
    run; 64 examples per epoch, 2 + seed/2 seconds of training per epoch."""
    docs = []
    for r in RUNS:
        c, final = r["config"], r["summary"]["final_val_acc"]
        epochs = {"completed": 3, "diverged": 1}.get(r["status"], 0)
        for epoch in range(1, epochs + 1):
            acc = (final or 0.5) - 0.1 * (3 - epoch)
            docs.append({"_id": f"{r['_id']}:{epoch}", "run_id": r["_id"], "epoch": epoch, "step": epoch * 64 // c["batch_size"],
                         "val_acc": acc, "train_loss": 1.0 / epoch, "train_seconds": 2.0 + c["seed"] / 2})
    return docs


STUDY = {
    "name": "demo", "profile": "default", "description": "A demo study.",
    "axes": {"norm": ["bn", "gn", "ln"], "batch_size": [2, 8]}, "seeds": [0, 1, 2],
    "base": {"dataset": "synthetic", "lr": 0.1, "lr_scaling": "linear", "lr_base_batch": 32, "epochs": 3},
    "report": {"rows": "norm", "columns": "batch_size", "metric": "final_val_acc"}, "source": "ablations/demo.yaml",
}
PROVENANCE = {"date": "2026-01-01T00:00:00+00:00", "store": "embedded /tmp/x.sqlite", "grid": {"command": "bench grid demo", "git_commit": "0123456789ab",
              "git_dirty": False, "bench": "0.1.0", "started_at": "2026-01-01T00:00:00+00:00"},
              "report_command": "bench report demo", "spec_hash": "abc123", "grid_spec_hash": "abc123",
              "devices": "cpu: x86_64", "versions": "torch 2"}


@pytest.fixture
def frame() -> pd.DataFrame:
    return runs_frame(RUNS)


@pytest.fixture
def epochs() -> pd.DataFrame:
    return metrics_frame(epoch_docs())


def build_section(section: dict, frame: pd.DataFrame, epochs: pd.DataFrame, **report):
    """One section through the registry, as build_report calls it."""
    study = {**STUDY, "report": {**report, "sections": [section]}}
    spec = parse_report(study["report"], study).sections[0]
    return SECTIONS.get(spec.kind).build(SectionInput(study, frame, epochs, spec.options, spec.title, f"demo/{spec.name}"))


# -- frames, aggregation, cells ----------------------------------------------------------


def test_runs_frame_flattens_config_and_summary(frame):
    assert {"run_id", "status", "norm", "batch_size", "seed", "final_val_acc"} <= set(frame.columns)
    assert frame.loc[0, "lr_milestones"] == (0.5,)
    assert runs_frame([]).empty


def test_aggregate_mean_std_n_and_outcomes(frame):
    agg = aggregate(frame, ["norm", "batch_size"], "final_val_acc").set_index(["norm", "batch_size"])
    bn2 = agg.loc[("bn", 2)]
    assert bn2["mean"] == pytest.approx(0.82) and bn2["std"] == pytest.approx(0.02) and bn2["n"] == 3
    assert bn2["values"] == pytest.approx({0: 0.80, 1: 0.82, 2: 0.84})
    bn8 = agg.loc[("bn", 8)]
    assert bn8["n"] == 2 and bn8["diverged"] == 1 and bn8["total"] == 3 and bn8["mean"] == pytest.approx(0.91)
    gn2 = agg.loc[("gn", 2)]
    assert gn2["failed"] == 1 and gn2["std"] == pytest.approx(0.0)
    ln2 = agg.loc[("ln", 2)]
    assert ln2["n"] == 0 and math.isnan(ln2["mean"]) and ln2["diverged"] == 1
    assert agg.loc[("ln", 8)]["pending"] == 1


def test_aggregate_interval_contains_the_mean(frame):
    agg = aggregate(frame, ["norm", "batch_size"], "final_val_acc", ci="t", level=0.95).set_index(["norm", "batch_size"])
    bn2 = agg.loc[("bn", 2)]  # 0.80, 0.82, 0.84: 0.82 ± 4.303 · 0.02 / √3
    assert (bn2["ci_low"], bn2["ci_high"]) == pytest.approx((0.82 - 0.049683, 0.82 + 0.049683), abs=1e-6)
    assert math.isnan(agg.loc[("ln", 2)]["ci_low"])


def test_best_per_column_and_cell_format(frame):
    agg = aggregate(frame, ["norm", "batch_size"], "final_val_acc")
    assert best_rows(agg, "norm", "batch_size") == {2: "gn", 8: "bn"}
    assert best_rows(agg, "norm", "batch_size", higher_is_better=False) == {2: "bn", 8: "gn"}
    cells = agg.set_index(["norm", "batch_size"])
    assert format_cell(cells.loc[("bn", 2)], ACC, MARKDOWN, best=True) == "**82.0 ± 2.0** (n=3)"
    assert format_cell(cells.loc[("bn", 8)], ACC, MARKDOWN) == "91.0 ± 1.4 (n=2; 1 of 3 diverged)"
    assert format_cell(cells.loc[("ln", 2)], ACC, MARKDOWN) == "1 of 1 diverged"
    assert format_cell(cells.loc[("ln", 8)], ACC, MARKDOWN) == "1 of 1 not run"


def test_pivot_markdown_golden(frame):
    agg = aggregate(frame, ["norm", "batch_size"], "final_val_acc")
    text = pivot_markdown(agg, "norm", "batch_size", ACC, row_order=["bn", "gn", "ln"])
    assert text == golden("pivot.md", text + "\n").rstrip("\n")


def test_values_outside_the_axis_order_are_appended(frame):
    agg = aggregate(frame, ["norm", "batch_size"], "final_val_acc")
    text = pivot_markdown(agg, "norm", "batch_size", ACC, row_order=["gn"], column_order=[8])
    assert text.splitlines()[0] == "| norm \\ batch_size | 8 | 2 |"
    assert [line.split(" |")[0] for line in text.splitlines()[2:]] == ["| gn", "| bn", "| ln"]


# -- one golden file per section kind -----------------------------------------------------

SECTION_CASES = {
    "pivot": ({"kind": "pivot", "rows": "norm", "columns": "batch_size"}, {"baseline": {"norm": "bn"}, "ci": "t"}),
    "scaling": ({"kind": "scaling", "x": "batch_size", "group": "norm"}, {}),
    "curves": ({"kind": "curves", "group": "norm", "panels": "batch_size", "band": "minmax"}, {}),
    "ranking": ({"kind": "ranking", "top": 3}, {"baseline": {"norm": "bn", "batch_size": 2}}),
    "ranking-best-of": ({"kind": "ranking", "best_of": "batch_size", "per": ["norm"]}, {"baseline": {"norm": "bn"}}),
    "time-to-accuracy": ({"kind": "time-to-accuracy", "target": 0.8, "columns": "batch_size"}, {}),
    "time-to-accuracy-list": ({"kind": "time-to-accuracy", "target": 0.85, "by": ["norm", "batch_size"]}, {}),
    # no per-step records here: the section says so (tests/test_stability_section.py has the curves)
    "stability": ({"kind": "stability", "group": "norm", "rows": "batch_size"}, {}),
    # no steps per epoch recorded here: the section says so (tests/test_lr_schedule_section.py has the curves)
    "lr-schedule": ({"kind": "lr-schedule", "group": "norm"}, {}),
}


@pytest.mark.parametrize("kind", SECTIONS.names())
def test_every_section_kind_has_a_golden_case(kind):
    assert any(section["kind"] == kind for section, _ in SECTION_CASES.values())


@pytest.mark.parametrize("case", SECTION_CASES)
def test_section_golden(case, frame, epochs):
    section, report = SECTION_CASES[case]
    built = build_section(section, frame, epochs, **report)
    assert built.text == golden(f"section-{case}.md", built.text)
    for table in built.tables.values():
        assert to_csv(table).splitlines()[0]  # a header, and a CSV pandas can read back
        assert len(pd.read_csv(pd.io.common.StringIO(to_csv(table)))) == len(table.numbers)


def test_pivot_exports_golden(frame, epochs):
    section, report = SECTION_CASES["pivot"]
    built = build_section(section, frame, epochs, **report)
    (table,) = built.tables.values()
    assert to_csv(table) == golden("pivot.csv", to_csv(table))
    latex = to_latex(table)
    assert latex == golden("pivot.tex", latex)
    assert "\\toprule" in latex and "\\midrule" in latex and "\\bottomrule" in latex and "$\\pm$" in latex


def test_pivot_compares_with_the_baseline_in_the_same_column(frame, epochs):
    built = build_section({"kind": "pivot", "rows": "norm", "columns": "batch_size"}, frame, epochs, baseline={"norm": "bn"})
    numbers = next(iter(built.tables.values())).numbers.set_index(["norm", "batch_size"])
    gn2 = numbers.loc[("gn", 2)]  # seeds 0, 1: 86 − 80, 86 − 82 → Δ = 5.0 points, 2 pairs
    assert gn2["delta"] == pytest.approx(5.0) and gn2["pairs"] == 2
    assert numbers.loc[("bn", 2), "is_baseline"] and "baseline `norm=bn`" not in built.text
    assert "Δ: difference from the baseline cell (`norm=bn` with the same batch_size)" in built.text


def test_pivot_rows_may_combine_several_columns(frame, epochs):
    built = build_section({"kind": "pivot", "rows": ["norm", "batch_size"], "columns": "epochs"}, frame, epochs,
                          baseline={"norm": "bn"})
    lines = [line for line in built.text.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| norm, batch_size \\ epochs |")
    # one row per combination, in the spec's order of each key (norm slowest)
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["bn, 2", "bn, 8", "gn, 2", "gn, 8", "ln, 2", "ln, 8"]
    numbers = next(iter(built.tables.values())).numbers.set_index(["norm", "batch_size", "epochs"])
    # the baseline is matched on the other row key: gn at batch 2 against bn at batch 2
    assert numbers.loc[("gn", 2, 3), "delta"] == pytest.approx(5.0)
    study = {**STUDY, "report": {"sections": [{"kind": "pivot", "rows": ["norm", "batch_size"], "columns": "epochs"}]}}
    assert parse_report(study["report"], study).sections[0].title == "Final validation accuracy (%): norm × batch_size × epochs"


def test_a_baseline_on_a_column_the_table_does_not_show_is_stated(frame, epochs):
    built = build_section({"kind": "ranking", "by": ["batch_size"]}, frame, epochs, baseline={"norm": "bn"})
    assert "No comparison with the baseline `norm=bn`: this table tells its cells apart by batch_size only." in built.text


# -- the whole report --------------------------------------------------------------------


def test_build_report_golden(frame, epochs):
    study = {**STUDY, "report": {
        "title": "Demo", "baseline": {"norm": "bn"}, "budget": "epochs", "ci": "t", "alpha": 0.1,
        "sections": [
            {"kind": "pivot", "rows": "norm", "columns": "batch_size", "references": [
                {"source": "A paper, error (%)", "values": {"bn": {2: 30.0, 8: 25.0}}}]},
            {"kind": "scaling", "x": "batch_size", "group": "norm"},
            {"kind": "curves", "group": "norm", "where": {"batch_size": [8]}},
            {"kind": "time-to-accuracy", "target": 0.8, "columns": "batch_size"},
        ]}}
    report = build_report(study, frame, PROVENANCE, epochs)
    assert list(report.figures) == ["demo/final_val_acc-vs-batch_size.png", "demo/curves-val_acc.png"]
    assert list(report.tables) == ["demo/pivot-final_val_acc", "demo/final_val_acc-vs-batch_size", "demo/curves-val_acc",
                                   "demo/time-to-accuracy-val_acc"]
    assert report.text == golden("report.md", report.text)


def test_short_form_report_is_a_pivot_then_its_scaling_plot(frame):
    report = build_report(STUDY, frame, PROVENANCE)
    assert list(report.figures) == ["demo/final_val_acc-vs-batch_size.png"]
    assert report.text == golden("report-short.md", report.text)
    assert report.text.count("(n=") == 4  # the pivot's four cells with results; no other section repeats them


def test_report_functions_do_not_modify_their_inputs(frame, epochs):
    study = copy.deepcopy({**STUDY, "report": {"baseline": {"norm": "bn"}, "sections": [
        {"kind": kind} | ({"x": "batch_size", "group": "norm"} if kind == "scaling" else {"group": "norm"} if kind in ("curves", "lr-schedule")
                          else {"target": 0.8} if kind == "time-to-accuracy" else {}) for kind in SECTIONS.names()]}})
    before = (copy.deepcopy(study), frame.copy(), epochs.copy())
    first = build_report(study, frame, PROVENANCE, epochs)
    assert study == before[0]
    pd.testing.assert_frame_equal(frame, before[1])
    pd.testing.assert_frame_equal(epochs, before[2])
    assert build_report(study, frame, PROVENANCE, epochs).text == first.text  # same inputs, same text


def test_where_restricts_a_section_and_says_so(frame, epochs):
    study = {**STUDY, "report": {"sections": [
        {"kind": "pivot", "rows": "norm", "columns": "batch_size", "where": {"norm": ["gn"]}},
        {"kind": "scaling", "x": "batch_size", "group": "norm", "where": {"batch_size": [128]}},
    ]}}
    text = build_report(study, frame, PROVENANCE, epochs).text
    assert "Trials with norm ∈ {gn}." in text and "| gn |" in text and "| bn |" not in text
    assert "Trials with batch_size ∈ {128}.\n\n_No trial of this study matches the section's `where`._" in text


def test_reference_numbers_are_shown_beside_and_labelled(frame):
    study = {
        "name": "demo", "axes": {"norm": ["bn", "gn"], "batch_size": [2, 8]}, "seeds": [0],
        "report": {"rows": "norm", "columns": "batch_size", "metric": "final_val_acc", "references": [
            {"source": "Wu & He 2018, ImageNet top-1 error (%)", "values": {"bn": {8: 24.8, 2: 34.7}, "gn": {8: 24.0, 2: 24.1}}},
            {"source": "At 32 images per GPU", "metric": "top-1 error (%)", "values": {"bn": 23.6, "ln": 25.3}},
        ]},
    }
    text = build_report(study, frame, {}).text
    assert "**Published, not measured here** — Wu & He 2018, ImageNet top-1 error (%):" in text
    # in the measured table's order (batch 2 then 8), whatever order the spec wrote them in
    assert "| norm \\ batch_size | 2 | 8 |\n|---|---|---|\n| bn | 34.7 | 24.8 |\n| gn | 24.1 | 24.0 |" in text
    assert "| norm | top-1 error (%) |\n|---|---|\n| bn | 23.6 |\n| ln | 25.3 |" in text
    assert ("Metric: top-1 error (%), lower is better — the measured table shows final validation accuracy (%), "
            "higher is better (the opposite direction).") in text


# -- figures -----------------------------------------------------------------------------


def test_log_axis_where_the_values_span_eight_times():
    assert log_base([2, 4, 8, 16, 32, 64]) == 2 and log_base(np.array([2, 64])) == 2
    assert log_base([1, 10, 100]) == 10 and log_base([0.001, 0.01]) == 10
    assert log_base([1, 2, 4]) is None  # spans 4×
    assert log_base([0, 8, 64]) is None and log_base(["a", "b"]) is None
    assert log_base([2, 64], "none") is None and log_base([1, 2], 10) == 10


def test_scaling_plot_draws_one_line_per_group(frame):
    agg = aggregate(frame, ["norm", "batch_size"], "final_val_acc", ci="t")
    assert scaling_plot(agg, "batch_size", "norm", ylabel="acc", log=2).axes[0].get_xscale() == "log"
    fig = scaling_plot(agg, "batch_size", "norm", ylabel="acc", bars="ci")
    assert fig.axes[0].get_xscale() == "linear"  # 2 to 8 spans 4×: linear under the auto rule
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["bn", "gn"]  # ln has no completed run
    line = fig.axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [2, 8] and list(line.get_ydata()) == pytest.approx([82.0, 91.0])


def test_curves_plot_mean_line_and_band_per_panel():
    curves = pd.DataFrame({"norm": ["bn", "bn", "gn", "gn"], "batch_size": [2, 2, 2, 8], "x": [1, 2, 1, 1],
                           "mean": [70.0, 80.0, 60.0, 65.0], "low": [68.0, 79.0, 55.0, 65.0], "high": [72.0, 81.0, 65.0, 65.0]})
    fig = curves_plot(curves, "norm", x="x", xlabel="epoch", ylabel="acc", panels="batch_size", panel_order=[2, 8])
    left, right = fig.axes[:2]
    assert [list(line.get_ydata()) for line in left.get_lines()] == [[70.0, 80.0], [60.0]]
    assert len(left.collections) == 2 and [list(line.get_ydata()) for line in right.get_lines()] == [[65.0]]
    assert left.get_title() == "batch_size = 2" and [t.get_text() for t in fig.legends[0].get_texts()] == ["bn", "gn"]


# -- time to accuracy and budgets ---------------------------------------------------------


def test_first_reached_by_hand(epochs):
    reached = first_reached(epochs, "val_acc", 0.8).set_index("run_id")
    # bn-2-1: val_acc 0.62, 0.72, 0.82 → epoch 3, step 3 · 64/2 = 96, seconds 3 × 2.5
    assert reached.loc["bn-2-1"].tolist() == [3, 96, pytest.approx(7.5)]
    # bn-8-0: 0.70, 0.80, 0.90 → epoch 2, step 16, seconds 2 + 2
    assert reached.loc["bn-8-0"].tolist() == [2, 16, pytest.approx(4.0)]
    assert "bn-2-0" in reached.index and "ln-2-0" not in reached.index  # a diverged run that never got there
    lower = first_reached(epochs, "train_loss", 0.4, higher_is_better=False).set_index("run_id")
    assert lower.loc["bn-2-0", "epoch"] == 3  # 1/3 ≤ 0.4


def test_time_to_accuracy_counts_every_trial(frame, epochs):
    built = build_section({"kind": "time-to-accuracy", "target": 0.85, "by": ["norm", "batch_size"]}, frame, epochs)
    numbers = next(iter(built.tables.values())).numbers.set_index(["norm", "batch_size"])
    assert numbers.loc[("bn", 8)][["total", "reached", "diverged"]].tolist() == [3, 2, 1]
    assert numbers.loc[("bn", 8), "steps_mean"] == pytest.approx(24)  # both at epoch 3: step 3 · 8
    assert numbers.loc[("gn", 2)][["total", "reached", "failed"]].tolist() == [3, 2, 1]
    assert numbers.loc[("ln", 8)][["reached", "not_run"]].tolist() == [0, 1]


def test_budget_is_stated_and_checked(frame):
    assert budget_lines("epochs", frame) == [
        "- Held equal: 3 epochs per trial (declared `budget: epochs`; checked: every trial is configured for 3); "
        "3 trials stopped before the last epoch (2 diverged, 1 failed).",
        "- Also equal: 10.0 s of training per trial.",
        "- Not held equal: 24 to 96 optimizer steps (steps and seconds of the completed trials).",
    ]
    uneven = frame.assign(epochs=[3] * 13 + [5])
    assert budget_lines("epochs", uneven)[0] == (
        "- **Not held equal** although declared `budget: epochs`: the trials are configured for 3 (13 trials), 5 (1 trials) epochs.")
    assert budget_lines("steps", frame)[0] == (
        "- **Not held equal** although declared `budget: steps`: the completed trials took 24 to 96 optimizer steps.")
    assert budget_lines("seconds", frame)[0] == (
        "- Held equal: about 10.0 s of training per trial (declared `budget: seconds`; checked: the 10 completed trials "
        "are within ±10% of it).")
    slow = frame.assign(train_seconds=[10.0] * 13 + [20.0], status=["completed"] * 14)
    assert budget_lines("seconds", slow)[0].startswith("- **Not held equal** although declared `budget: seconds`")
    assert budget_lines(None, frame)[1] == (
        "- Per trial: 3 epochs configured; 10.0 s of training; 24 to 96 optimizer steps (steps and seconds of the completed trials).")


def test_one_seed_differences_are_shown_untested_and_said_so_once(epochs):
    one_seed = runs_frame([r for r in RUNS if r["config"]["seed"] == 0])
    built = build_section({"kind": "pivot", "rows": "norm", "columns": "batch_size"}, one_seed, epochs, baseline={"norm": "bn"})
    assert "| gn | 86.0 (n=1)<br>Δ +6.0 | 88.0 (n=1)<br>Δ −2.0 |" in built.text  # one seed: no spread, no best
    assert "untested)" not in built.text.split("\n\n")[0]
    assert "No difference here could be tested, as that needs two or more seeds completed by both cells" in built.text


def test_curves_export_one_row_per_group_and_epoch(frame, epochs):
    built = build_section({"kind": "curves", "group": "norm", "x": "seconds"}, frame, epochs)
    numbers = next(iter(built.tables.values())).numbers.set_index(["norm", "epoch"])
    # bn: seeds 0 and 1 of both batch sizes and seed 2 at batch 2 finish epoch 2, at 2 × (2 + seed/2) s
    bn2 = numbers.loc[("bn", 2)]
    assert bn2["n"] == 5 and bn2["seconds_mean"] == pytest.approx((4 + 5 + 6 + 4 + 5) / 5)
    assert numbers.loc[("bn", 1), "n"] == 6  # the seed that diverged at batch 8 finished epoch 1
    assert list(numbers.columns) == ["seconds_mean", "mean", "std", "min", "max", "n", "metric"]


def test_a_value_repeated_in_a_zip_list_keeps_its_first_place():
    from bench.report.tables import axis_order, sort_cells

    study = {"zip": {"augment": ["none", "mixup", "none"], "label_smoothing": [0.0, 0.0, 0.1]}}
    assert axis_order(study, "augment") == ["none", "mixup"]
    cells = pd.DataFrame({"augment": ["mixup", "none", "none"], "label_smoothing": [0.0, 0.1, 0.0]})
    ordered_cells = sort_cells(cells, ["augment", "label_smoothing"], study)
    assert list(ordered_cells.itertuples(index=False, name=None)) == [("none", 0.0), ("none", 0.1), ("mixup", 0.0)]


def test_set_up_lines_read_fixed_and_varying_values_from_the_runs():
    """A base value a variant overrides is listed per variant, an integer as an integer even
    when another variant's null makes pandas hold the column as floats."""
    from bench.report.markdown import _fixed_and_varying

    frame = pd.DataFrame({"variant": ["a", "b", "c"], "depth": [8.0, 22.0, None], "lr": [0.1, 0.1, 0.1]})
    fixed, varying = _fixed_and_varying({"depth": 8, "lr": 0.1}, frame, {"a": {}, "b": {}, "c": {}})
    assert fixed == {"lr": 0.1} and varying == {"depth": {"a": "8", "b": "22"}}


def test_a_key_a_variant_sweeps_tells_configurations_apart():
    """A list in a variant makes one configuration per value: a ranking keeps them apart
    instead of pooling them as if they were seeds."""
    from bench.report.sections._common import varied_keys

    study = {"variants": {"dense": {}, "sparse": {"meprop_sparsity": [0.5, 0.9]}}, "axes": {"batch_size": [8]}}
    assert varied_keys(study) == ["variant", "meprop_sparsity", "batch_size"]
    assert varied_keys({"axes": {"norm": ["bn"], "seed": [0, 1]}}) == ["norm"]

"""Report functions are pure: fixed frames in, known numbers and golden text out."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from bench.report.frame import runs_frame
from bench.report.markdown import build_report
from bench.report.plots import scaling_plot
from bench.report.tables import aggregate, best_rows, format_cell, pivot_markdown

GOLDEN = Path(__file__).parent / "golden"


def run(norm, batch, seed, acc, status="completed"):
    return {
        "_id": f"{norm}-{batch}-{seed}",
        "status": status,
        "study": ["demo"],
        "config": {"norm": norm, "batch_size": batch, "seed": seed, "lr_milestones": [0.5]},
        "summary": {"final_val_acc": acc, "train_seconds": 10.0},
    }


RUNS = [
    run("bn", 2, 0, 0.80), run("bn", 2, 1, 0.82), run("bn", 2, 2, 0.84),
    run("bn", 8, 0, 0.90), run("bn", 8, 1, 0.92), run("bn", 8, 2, None, "diverged"),
    run("gn", 2, 0, 0.86), run("gn", 2, 1, 0.86), run("gn", 2, 2, None, "failed"),
    run("gn", 8, 0, 0.88), run("gn", 8, 1, 0.89), run("gn", 8, 2, 0.90),
    run("ln", 2, 0, None, "diverged"), run("ln", 8, 0, None, "pending"),
]


@pytest.fixture
def frame() -> pd.DataFrame:
    return runs_frame(RUNS)


def test_runs_frame_flattens_config_and_summary(frame):
    assert {"run_id", "status", "norm", "batch_size", "seed", "final_val_acc"} <= set(frame.columns)
    assert frame.loc[0, "lr_milestones"] == (0.5,)
    assert runs_frame([]).empty


def test_aggregate_mean_std_n_and_outcomes(frame):
    agg = aggregate(frame, "norm", "batch_size", "final_val_acc").set_index(["norm", "batch_size"])
    bn2 = agg.loc[("bn", 2)]
    assert bn2["mean"] == pytest.approx(0.82) and bn2["std"] == pytest.approx(0.02) and bn2["n"] == 3
    bn8 = agg.loc[("bn", 8)]
    assert bn8["n"] == 2 and bn8["diverged"] == 1 and bn8["total"] == 3 and bn8["mean"] == pytest.approx(0.91)
    gn2 = agg.loc[("gn", 2)]
    assert gn2["failed"] == 1 and gn2["std"] == pytest.approx(0.0)
    ln2 = agg.loc[("ln", 2)]
    assert ln2["n"] == 0 and math.isnan(ln2["mean"]) and ln2["diverged"] == 1
    assert agg.loc[("ln", 8)]["pending"] == 1


def test_best_per_column_and_cell_format(frame):
    agg = aggregate(frame, "norm", "batch_size", "final_val_acc")
    assert best_rows(agg, "norm", "batch_size") == {2: "gn", 8: "bn"}
    assert best_rows(agg, "norm", "batch_size", higher_is_better=False) == {2: "bn", 8: "gn"}
    cells = agg.set_index(["norm", "batch_size"])
    assert format_cell(cells.loc[("bn", 2)], best=True) == "**82.0 ± 2.0** (n=3)"
    assert format_cell(cells.loc[("bn", 8)]) == "91.0 ± 1.4 (n=2; 1/3 diverged)"
    assert format_cell(cells.loc[("ln", 2)]) == "1/1 diverged"
    assert format_cell(cells.loc[("ln", 8)]) == "1/1 not run"


def test_pivot_markdown_golden(frame):
    agg = aggregate(frame, "norm", "batch_size", "final_val_acc")
    text = pivot_markdown(agg, "norm", "batch_size", row_order=["bn", "gn", "ln"])
    assert text == (GOLDEN / "pivot.md").read_text().rstrip("\n")


def test_build_report_golden(frame):
    study = {
        "name": "demo", "profile": "default", "description": "A demo study.",
        "axes": {"norm": ["bn", "gn", "ln"], "batch_size": [2, 8]}, "seeds": [0, 1, 2],
        "base": {"dataset": "synthetic", "lr": 0.1, "lr_scaling": "linear", "lr_base_batch": 32},
        "report": {"rows": "norm", "columns": "batch_size", "metric": "final_val_acc"}, "source": "ablations/demo.yaml",
    }
    provenance = {"date": "2026-01-01T00:00:00+00:00", "store": "embedded /tmp/x.sqlite", "grid_command": "bench grid demo",
                  "report_command": "bench report demo", "spec_hash": "abc123", "devices": "cpu: x86_64", "versions": "torch 2"}
    report = build_report(study, frame, provenance)
    assert list(report.figures) == ["demo/final_val_acc-vs-batch_size.png"]
    assert report.text == (GOLDEN / "report.md").read_text()


def test_scaling_plot_draws_one_line_per_group(frame):
    agg = aggregate(frame, "norm", "batch_size", "final_val_acc")
    fig = scaling_plot(agg, "batch_size", "norm", ylabel="acc")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["bn", "gn"]  # ln has no completed run
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [2, 8] and list(line.get_ydata()) == pytest.approx([82.0, 91.0])


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
    assert "| norm \\ batch_size | 8 | 2 |\n|---|---|---|\n| bn | 24.8 | 34.7 |\n| gn | 24.0 | 24.1 |" in text
    assert "| norm | top-1 error (%) |\n|---|---|\n| bn | 23.6 |\n| ln | 25.3 |" in text


def test_values_outside_the_axis_order_are_appended(frame):
    agg = aggregate(frame, "norm", "batch_size", "final_val_acc")
    text = pivot_markdown(agg, "norm", "batch_size", row_order=["gn"], column_order=[8])
    assert text.splitlines()[0] == "| norm \\ batch_size | 8 | 2 |"
    assert [line.split(" |")[0] for line in text.splitlines()[2:]] == ["| gn", "| bn", "| ln"]

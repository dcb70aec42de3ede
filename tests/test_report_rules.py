"""The rules a report follows when it marks, orders and draws: a "best" only where a test
over seeds separates it from the runner-up, never at one seed; numeric columns in numeric
order; a tuned sweep marks each row's chosen value; references in the measured table's
order with their metric and direction; collapsed runs counted; plots whose lines stay apart.
Small fixed frames in, known text and figure objects out."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from bench.errors import ConfigError
from bench.metrics import run_metric
from bench.report.format import MARKDOWN, format_cell
from bench.report.frame import (
    DATASETS, chance_accuracy, chance_threshold, collapsed, runs_frame, with_outcome,
)
from bench.report.kinds import SECTIONS, SectionInput
from bench.report.markdown import build_report
from bench.report.plots import MAX_LINES, line_style, scaling_plot
from bench.report.schema import parse_report
from bench.report.sections.stability import spike_rug
from bench.report.stats import separation
from bench.report.tables import aggregate, best_among, column_bests, decide_bests, pivot_markdown

ACC = run_metric("final_val_acc")


def doc(seed: int, acc: float | None, status: str = "completed", dataset: str = "fashion-mnist", **config) -> dict:
    key = "-".join(f"{k}{v}" for k, v in config.items())
    return {
        "_id": f"{key}-s{seed}", "status": status, "study": ["rules"],
        "config": {"dataset": dataset, "seed": seed, **config},
        "summary": {"final_val_acc": acc, "final_train_loss": 2.3029 if acc == 0.1 else 0.4},
    }


def section(study: dict, spec: dict, frame: pd.DataFrame, **report):
    """One section through the registry, as build_report calls it."""
    study = {"name": "rules", "profile": "default", "seeds": [0, 1, 2], **study, "report": {**report, "sections": [spec]}}
    parsed = parse_report(study["report"], study).sections[0]
    return SECTIONS.get(parsed.kind).build(
        SectionInput(study, frame, pd.DataFrame(columns=["run_id", "epoch"]), parsed.options, parsed.title, f"rules/{parsed.name}")
    )


NORMS = {"axes": {"norm": ["bn", "gn", "in"], "batch_size": [8, 32]}}


def norms_frame(values: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    return runs_frame([doc(s, v, norm=n, batch_size=b) for (n, b), vs in values.items() for s, v in enumerate(vs)])


# -- best: separated, tied, untested ------------------------------------------------------

SEPARATED = {  # batch 8: bn well above gn on every seed; batch 32: bn and in overlap
    ("bn", 8): [0.90, 0.91, 0.92], ("gn", 8): [0.80, 0.80, 0.83], ("in", 8): [0.70, 0.71, 0.69],
    ("bn", 32): [0.85, 0.80, 0.90], ("gn", 32): [0.60, 0.61, 0.62], ("in", 32): [0.86, 0.79, 0.88],
}


def test_a_best_is_marked_only_where_a_test_separates_it_from_the_runner_up():
    built = section(NORMS, {"kind": "pivot", "rows": "norm", "columns": "batch_size"}, norms_frame(SEPARATED))
    rows = {line.split(" | ")[0]: line for line in built.text.splitlines() if line.startswith("| ")}
    assert "**91.0 ± 1.0** (n=3)" in rows["| bn"]  # batch 8: separated, bold
    assert "**" not in rows["| bn"].split(" | ")[2] and "**" not in rows["| in"]  # batch 32: tied, nothing bold
    assert "- batch_size = 8: best `bn` 91.0, then `gn` 81.0 (gap 10.0; paired t-test over 3 seeds, p=" in built.text
    assert "- batch_size = 32: best: tied between `bn` 85.0 and `in` 84.3 (gap 0.7; paired t-test over 3 seeds, p=" in built.text
    assert "only where it is separated from the runner-up (the next-best mean) at α = 0.05" in built.text
    assert "paired by seed where the two cells share two or more seeds" in built.text


def test_the_best_rule_follows_the_reports_alpha_and_holm():
    frame = norms_frame(SEPARATED)
    p = column_bests(aggregate(frame, ["norm", "batch_size"], "final_val_acc"), "norm", "batch_size")[8].test.p
    assert 0.001 < p < 0.05
    strict = section(NORMS, {"kind": "pivot", "rows": "norm", "columns": "batch_size"}, frame, alpha=p / 2)
    assert "**" not in strict.text.split("\n\n")[0] and "best: tied between `bn` 91.0 and `gn` 81.0" in strict.text
    holm = section(NORMS, {"kind": "pivot", "rows": "norm", "columns": "batch_size"}, frame, correction="holm")
    assert "Holm-adjusted over the 2 such tests of this table" in holm.text and "paired t-test over 3 seeds, Holm-adjusted p=" in holm.text


def test_one_seed_cells_carry_no_spread_and_no_best():
    one = norms_frame({k: v[:1] for k, v in SEPARATED.items()})
    built = section(NORMS, {"kind": "pivot", "rows": "norm", "columns": "batch_size"}, one)
    table = built.text.split("\n\n")[0]
    assert "**" not in table and "±" not in table and "90.0 (n=1)" in table
    assert "- batch_size = 8: no best: highest mean `bn` 90.0, then `gn` 80.0 (gap 10.0; one seed, untested)" in built.text


def test_separation_pairs_by_seed_else_welch_else_untested():
    paired = separation({0: 0.9, 1: 0.91, 2: 0.92}, {0: 0.8, 1: 0.8, 2: 0.83})
    assert paired.test == "paired" and paired.pairs == 3 and paired.p < 0.05
    welch = separation({0: 0.9, 1: 0.91}, {2: 0.8, 3: 0.82})  # no seed in common
    assert welch.test == "welch" and welch.pairs == 0 and welch.tested
    equal = separation({0: 0.9, 1: 0.92}, {0: 0.8, 1: 0.82})  # every pair 0.1 apart: the paired t is undefined
    assert equal.test == "welch"
    assert not separation({0: 0.9}, {0: 0.8, 1: 0.7}).tested and separation({0: 0.9}, {0: 0.8}).note == "one seed, untested"


def test_best_among_and_decide():
    agg = aggregate(norms_frame(SEPARATED), ["norm", "batch_size"], "final_val_acc")
    best = best_among(agg[agg["batch_size"] == 8])
    assert best.leader["norm"] == "bn" and best.runner_up["norm"] == "gn" and best.verdict == "untested"  # undecided
    decided = decide_bests([best], alpha=0.05)[0]
    assert decided.separated and decided.verdict == "best"
    lowest = best_among(agg[agg["batch_size"] == 8], higher_is_better=False)
    assert lowest.leader["norm"] == "in"
    alone = best_among(agg[(agg["batch_size"] == 8) & (agg["norm"] == "gn")])
    assert alone.runner_up is None and alone.verdict == "alone"


def test_the_ranking_marks_its_first_only_when_separated():
    study = {"axes": {"norm": ["bn", "gn", "in"]}}
    clear = runs_frame([doc(s, v, norm=n) for n, vs in {"bn": [0.9, 0.91, 0.92], "gn": [0.8, 0.8, 0.83]}.items()
                        for s, v in enumerate(vs)])
    built = section(study, {"kind": "ranking"}, clear)
    assert "| 1 | bn | **91.0 ± 1.0** (n=3) |" in built.text
    assert "Best configuration: best configuration `norm=bn` 91.0, then `norm=gn` 81.0" not in built.text
    assert "Best configuration `norm=bn` 91.0, then `norm=gn` 81.0 (gap 10.0; paired t-test over 3 seeds" in built.text
    close = runs_frame([doc(s, v, norm=n) for n, vs in {"bn": [0.85, 0.8, 0.9], "in": [0.86, 0.79, 0.88]}.items()
                        for s, v in enumerate(vs)])
    built = section(study, {"kind": "ranking"}, close)
    assert "**" not in built.text.split("\n\n")[0]
    assert "Best configuration: tied between `norm=bn` 85.0 and `norm=in` 84.3" in built.text


def test_best_of_says_whether_the_best_value_is_separated():
    built = section(NORMS, {"kind": "ranking", "best_of": "batch_size", "per": ["norm"]}, norms_frame(SEPARATED))
    lines = {line.split(" | ")[0]: line for line in built.text.splitlines() if line.startswith("| ")}
    assert "| norm | batch_size (highest mean) |" in built.text
    assert "| gn | 8 | **81.0 ± 1.7** (n=3) | 32: 61.0; separated (paired t-test over 3 seeds, p" in lines["| gn"]
    assert "32: 85.0; tied (paired t-test over 3 seeds, p=" in lines["| bn"] and "**" not in lines["| bn"]


# -- numeric order -------------------------------------------------------------------------


def test_numeric_columns_sort_numerically_everywhere():
    lrs = [1.0, 10.0, 100.0, 3.0, 0.3]  # the string order a variant's lists could give
    frame = runs_frame([doc(0, 0.5 + 0.01 * i, variant=v, lr=lr) for i, lr in enumerate(lrs) for v in ("a", "b")])
    study = {"variants": {"a": {}, "b": {}}}
    built = section(study, {"kind": "pivot", "rows": "variant", "columns": "lr"}, frame)
    assert built.text.splitlines()[0] == "| variant \\ lr | 0.3 | 1.0 | 3.0 | 10.0 | 100.0 |"
    columns = [line.split(":")[0] for line in built.text.splitlines() if line.startswith("- lr = ")]
    assert columns == ["- lr = 0.3", "- lr = 1.0", "- lr = 3.0", "- lr = 10.0", "- lr = 100.0"]
    agg = aggregate(frame, ["variant", "lr"], "final_val_acc")
    fig = scaling_plot(agg, "lr", "variant", ylabel="acc", log="none")
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [0.3, 1.0, 3.0, 10.0, 100.0]


# -- a tuned sweep: each row's chosen value ------------------------------------------------

TUNED = {
    "variants": {"sgd": {"lr": [0.1, 0.3, 1.0]}, "adam": {"lr": [0.001, 0.003]}},
    "tune": {"over": "lr", "metric": "final_val_acc", "seeds": [1, 2]}, "seeds": [0],
}


def tuned_frame(reruns: bool) -> pd.DataFrame:
    sweep = {("sgd", 0.1): 0.80, ("sgd", 0.3): 0.84, ("sgd", 1.0): 0.83, ("adam", 0.001): 0.86, ("adam", 0.003): 0.85}
    docs = [doc(0, v, variant=n, lr=lr) for (n, lr), v in sweep.items()]
    if reruns:
        docs += [doc(s, 0.83, variant="sgd", lr=0.3) for s in (1, 2)] + [doc(s, 0.86, variant="adam", lr=0.001) for s in (1, 2)]
    return runs_frame(docs)


@pytest.mark.parametrize("reruns", [False, True])
def test_a_tuned_sweep_marks_the_chosen_value_per_row_not_the_best_per_column(reruns):
    frame = tuned_frame(reruns)
    frame = frame[frame["seed"] == 0].reset_index(drop=True)  # the pivot's `where: {seed: [0]}`
    built = section(TUNED, {"kind": "pivot", "rows": "variant", "columns": "lr"}, frame)
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in built.text.splitlines() if line.startswith("| ")}
    assert built.text.splitlines()[0] == "| variant \\ lr | 0.001 | 0.003 | 0.1 | 0.3 | 1.0 |"
    assert rows["| sgd"][3] == "**84.0** (n=1)" and "**" not in "".join(rows["| sgd"][:3] + rows["| sgd"][4:])
    assert rows["| adam"][0] == "**86.0** (n=1)" and rows["| adam"][1] == "85.0 (n=1)"
    assert "**Bold**: the lr the tuning round chose for each variant" in built.text
    assert "No best is marked per column" in built.text and "**Per column:**" not in built.text


def test_a_tuned_choice_is_read_from_the_reruns_when_the_section_has_them():
    frame = tuned_frame(True)
    frame.loc[(frame["variant"] == "sgd") & (frame["seed"] > 0), "lr"] = 1.0  # the store's re-runs say 1.0
    built = section(TUNED, {"kind": "pivot", "rows": "variant", "columns": "lr"}, frame)
    sgd = next(line for line in built.text.splitlines() if line.startswith("| sgd"))
    assert "**" in sgd.split(" | ")[5] and "**" not in sgd.split(" | ")[4]
    assert "as the tuning rule gives on these trials" not in built.text


def test_the_scaling_plot_of_a_tuned_sweep_rings_the_choice():
    built = section(TUNED, {"kind": "scaling", "x": "lr", "group": "variant"}, tuned_frame(False))
    ax = next(iter(built.figures.values())).axes[0]
    rings = [line for line in ax.get_lines() if line.get_markerfacecolor() == "none"]
    assert sorted(float(line.get_xdata()[0]) for line in rings) == [0.001, 0.3]
    assert "Ringed: the lr the tuning round chose for each variant." in built.text


# -- references ----------------------------------------------------------------------------

REFERENCE_STUDY = {"axes": {"norm": ["bn", "gn", "in"], "batch_size": [8, 32]}}


def test_references_follow_the_measured_order_and_state_their_metric():
    refs = [
        {"source": "Wu & He 2018", "metric": "top-1 error (%)", "columns": "batch_size",
         "values": {"gn": {32: 24.1, 16: 24.2, 8: 24.0}, "bn": {32: 23.6, 16: 23.7, 8: 24.8}}},
        {"source": "Wu & He 2018, Table 1", "values": {"in": 28.4, "ln": 25.3, "bn": 23.6}},  # no metric: said so
    ]
    built = section(REFERENCE_STUDY, {"kind": "pivot", "rows": "norm", "columns": "batch_size", "references": refs},
                    norms_frame(SEPARATED))
    text = built.text
    assert "| norm \\ batch_size | 8 | 16 | 32 |\n|---|---|---|---|\n| bn | 24.8 | 23.7 | 23.6 |\n| gn | 24.0 | 24.2 | 24.1 |" in text
    assert ("Metric: top-1 error (%), lower is better — the measured table shows final validation accuracy (%), "
            "higher is better (the opposite direction).") in text
    assert "**Published, not measured here** — Wu & He 2018, Table 1:" in text
    assert "Metric: as the source names it, direction not stated" in text
    assert "| norm | value |\n|---|---|\n| bn | 23.6 |\n| in | 28.4 |\n| ln | 25.3 |" in text


def test_a_reference_without_its_source_is_refused():
    with pytest.raises(ConfigError, match="`source` .* required"):
        parse_report({"kind": "pivot", "rows": "norm", "columns": "batch_size",
                      "references": [{"values": {"bn": 23.6}}]}, REFERENCE_STUDY)


def test_a_reference_direction_comes_from_its_words():
    from bench.report.sections.pivot import reference_direction

    assert reference_direction({"metric": "top-1 error (%)"}) is False
    assert reference_direction({"source": "ImageNet top-1 validation error (%), lower is better"}) is False
    assert reference_direction({"metric": "top-1 accuracy (%)"}) is True
    assert reference_direction({"metric": "BLEU", "higher_is_better": True}) is True
    assert reference_direction({"metric": "BLEU"}) is None


# -- collapsed runs ------------------------------------------------------------------------


def test_chance_is_one_over_the_classes_with_a_binomial_margin():
    assert chance_accuracy("fashion-mnist") == 0.1 and chance_accuracy("cifar100") == 0.01
    assert chance_accuracy("imagenet-someday") is None and chance_accuracy(None) is None
    assert chance_threshold("fashion-mnist") == pytest.approx(0.1 + 3 * math.sqrt(0.09 / 10_000))  # 10.9%
    assert chance_threshold("fashion-mnist", 5000) == pytest.approx(0.1 + 3 * math.sqrt(0.09 / 5000))
    assert chance_threshold("digits") == pytest.approx(0.1 + 3 * math.sqrt(0.09 / 360))  # few images: wider
    assert collapsed(0.100, "fashion-mnist") and collapsed(0.108, "fashion-mnist") and collapsed(0.05, "fashion-mnist")
    assert not collapsed(0.171, "fashion-mnist", 5000) and not collapsed(0.85, "fashion-mnist")
    assert not collapsed(None, "fashion-mnist") and not collapsed(float("nan"), "fashion-mnist")
    assert not collapsed(0.1, "unknown")


def test_the_chance_table_agrees_with_the_zoo():
    from bench.zoo.datasets import SYNTHETIC_VAL, dataset_source

    for name, (classes, _) in DATASETS.items():
        assert dataset_source(name).num_classes == classes, name
    assert DATASETS["synthetic"][1] == SYNTHETIC_VAL


def test_outcome_is_the_status_except_collapsed():
    frame = runs_frame([
        doc(0, 0.1, lr=0.1), doc(1, 0.84, lr=0.1), doc(2, None, "diverged", lr=0.1), doc(3, 0.1, "pending", lr=0.1),
    ])
    assert frame["outcome"].tolist() == ["collapsed", "completed", "diverged", "pending"]
    assert frame["status"].tolist() == ["completed", "completed", "diverged", "pending"]
    bare = frame.drop(columns="outcome")
    assert with_outcome(bare)["outcome"].tolist() == frame["outcome"].tolist()


def test_a_collapsed_run_stays_in_the_mean_and_its_cell_says_so():
    frame = runs_frame([doc(0, 0.1, lr=0.1), doc(1, 0.84, lr=0.1), doc(2, 0.85, lr=0.1)])
    cell = aggregate(frame, ["lr"], "final_val_acc").iloc[0]
    assert cell["n"] == 3 and cell["collapsed"] == 1 and cell["mean"] == pytest.approx((0.1 + 0.84 + 0.85) / 3)
    assert format_cell(cell, ACC, MARKDOWN) == "59.7 ± 43.0 (n=3; 1 of 3 collapsed)"
    built = section({"axes": {"lr": [0.1]}}, {"kind": "pivot", "rows": "lr", "columns": "dataset"}, frame)
    assert "1 of 3 collapsed" in built.text and "Collapsed: a completed trial whose final validation accuracy" in built.text
    assert "≤ 10.9% on fashion-mnist" in built.text
    csv = next(iter(built.tables.values())).numbers
    assert csv["collapsed"].tolist() == [1]


# -- plots ---------------------------------------------------------------------------------


def _looks(ax) -> set[tuple]:
    return {(line.get_color(), line.get_marker(), line.get_linestyle()) for line in ax.get_lines()}


def scaling_agg(groups: int, seeds: int) -> pd.DataFrame:
    rows = [doc(s, 0.5 + 0.01 * g + 0.001 * s, group=f"g{g}", batch_size=b)
            for g in range(groups) for b in (8, 32, 128) for s in range(seeds)]
    return aggregate(runs_frame(rows), ["group", "batch_size"], "final_val_acc")


def test_up_to_eight_lines_share_one_plot_each_with_its_own_look():
    fig = scaling_plot(scaling_agg(MAX_LINES, 1), "batch_size", "group", ylabel="acc")
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == MAX_LINES
    assert len(_looks(fig.axes[0])) == MAX_LINES  # colour, marker and dash: overlapping lines stay apart
    markers = {line.get_marker() for line in fig.axes[0].get_lines()}
    dashes = {line.get_linestyle() for line in fig.axes[0].get_lines()}
    assert len(markers) == MAX_LINES and len(dashes) > 1
    assert len({tuple(line_style(i).values()) for i in range(100)}) == 100


def test_more_lines_become_small_multiples():
    fig = scaling_plot(scaling_agg(15, 1), "batch_size", "group", ylabel="acc")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 15 and sorted(ax.get_title() for ax in panels) == sorted(f"g{g}" for g in range(15))
    for ax in panels:
        coloured = [line for line in ax.get_lines() if line.get_color() != "0.8"]
        assert len(coloured) == 1  # one line of its own per panel, the others grey behind
    assert fig.legends and "the other group values" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_no_error_bars_at_one_seed():
    one = scaling_plot(scaling_agg(3, 1), "batch_size", "group", ylabel="acc")
    assert not any(isinstance(c, ErrorbarContainer) for c in one.axes[0].containers)
    labels = [t.get_text() for t in one.legends[0].get_texts()]
    assert labels == ["g0", "g1", "g2"]
    three = scaling_plot(scaling_agg(3, 3), "batch_size", "group", ylabel="acc")
    assert sum(isinstance(c, ErrorbarContainer) for c in three.axes[0].containers) == 3
    handles = three.legends[0].legend_handles
    assert not any(isinstance(h, ErrorbarContainer) for h in handles)


def test_spikes_are_a_rug_with_their_count():
    fig = Figure()
    ax = fig.add_subplot()
    steps = list(range(60, 60 + 127 * 7, 7))  # 127 spikes on one run
    spike_rug(ax, [("C0", steps), ("C1", [100, 200])], rows=2)
    rugs = [c for c in ax.collections if c.get_label() == "_spikes"]
    assert len(rugs) == 2 and len(rugs[0].get_segments()) == 127 and len(ax.get_lines()) == 0
    assert [t.get_text() for t in ax.get_yticklabels()] == ["127", "2"]
    top, bottom = (np.mean([seg[:, 1] for seg in c.get_segments()]) for c in rugs)
    assert top > bottom  # the legend's order, top down


def test_report_rules_do_not_need_torch():
    import subprocess
    import sys

    code = ("import sys; from bench.report.frame import chance_threshold, collapsed; import bench.report.sections.pivot; "
            "chance_threshold('fashion-mnist'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_build_report_counts_collapsed_runs_in_cells():
    frame = runs_frame([doc(s, v, norm=n) for n, vs in {"bn": [0.1, 0.8], "gn": [0.7, 0.72]}.items() for s, v in enumerate(vs)])
    study = {"name": "rules", "axes": {"norm": ["bn", "gn"]}, "seeds": [0, 1],
             "report": {"metric": "final_val_acc", "sections": [{"kind": "ranking"}]}}
    text = build_report(study, frame, {}).text
    assert "(n=2; 1 of 2 collapsed)" in text
    assert pivot_markdown(aggregate(frame, ["norm", "seed"], "final_val_acc"), "norm", "seed", ACC).count("collapsed") == 1

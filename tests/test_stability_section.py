"""The ``stability`` section kind: per-step curves with spikes marked and a table of
spikes, accuracy drops, divergence and final accuracy, on per-step series with spikes
planted at known steps.

Golden file: tests/golden/stability-section.md; after an intended change of the output,
rewrite it with ``BENCH_UPDATE_GOLDEN=1 pytest tests/test_stability_section.py`` and
review the diff.
"""

from __future__ import annotations

import copy
import math
import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from bench.errors import ConfigError
from bench.report.export import to_csv, to_latex
from bench.report.frame import runs_frame
from bench.report.kinds import SECTIONS, SectionInput
from bench.report.markdown import build_report
from bench.report.schema import parse_report
from bench.report.writer import write_report
from bench.spec import load_spec
from bench.store import open_store, steps_frame

GOLDEN = Path(__file__).parent / "golden"

STEPS = 300  # per run; 100 steps per epoch
SPIKE = 150  # the loss spike of lr=0.01 seed 0 (two steps) ...
GRAD_SPIKE = SPIKE - 3  # ... preceded by a first-layer gradient spike three steps earlier
DIVERGED = 200  # lr=0.1 seed 0 diverges here (NaN loss)


def golden(name: str, text: str) -> str:
    path = GOLDEN / name
    if os.environ.get("BENCH_UPDATE_GOLDEN"):
        path.write_text(text)
    return path.read_text()


def run(lr, seed, status="completed", final=None, freeze=False, **summary):
    return {
        "_id": f"lr{lr}-s{seed}" + ("-frozen" if freeze else ""),
        "status": status,
        "study": ["stab"],
        "config": {"lr": lr, "seed": seed, "optimizer": "adamw", "vit_freeze_patch": freeze, "batch_size": 32},
        "summary": {"final_val_acc": final, **summary},
    }


def series(run_id, *, spike=False, diverge=None, frozen=False, steps=STEPS):
    """A smooth per-step run: the loss falls from 2.5 to ~1, the batch accuracy rises, the
    gradient norms wobble by ±2%. ``spike``: loss ×5 at SPIKE and SPIKE+1, the accuracy 0.3
    lower for 20 steps, the first-layer gradient ×6 at GRAD_SPIKE. ``diverge``: NaN loss at
    that step, the last record."""
    records = []
    for step in range(steps if diverge is None else diverge + 1):
        wobble = 1 + 0.02 * math.sin(step * 1.7)
        loss = (2.0 * math.exp(-step / 300) + 0.5) * wobble
        acc = 0.1 + 0.6 * (1 - math.exp(-step / 100))
        first = 1.0 * wobble
        if spike and step in (SPIKE, SPIKE + 1):
            loss *= 5
        if spike and SPIKE <= step < SPIKE + 20:
            acc -= 0.3
        if spike and step == GRAD_SPIKE:
            first *= 6
        if step == diverge:
            loss = float("nan")
        records.append({"run_id": run_id, "step": step, "epoch": step // 100 + 1, "loss": loss, "acc": acc,
                        "grad_norm": 2.0 * wobble, "first_grad_norm": None if frozen else first, "lr": 0.01})
    return records


RUNS = [
    run(0.001, 0, final=0.80),
    run(0.001, 1, final=0.82),  # completed without log_steps: no step records
    run(0.01, 0, final=0.75),
    run(0.01, 1, status="pending"),
    run(0.1, 0, status="diverged", diverged_step=DIVERGED),
]
STEP_RECORDS = [
    *series("lr0.001-s0"),
    *series("lr0.01-s0", spike=True),
    *series("lr0.1-s0", diverge=DIVERGED),
]
STUDY = {
    "name": "stab", "profile": "default", "axes": {"lr": [0.001, 0.01, 0.1]}, "seeds": [0, 1],
    "base": {"dataset": "synthetic", "arch": "vit", "log_steps": True}, "source": "ablations/stab.yaml",
}
PROVENANCE = {"date": "2026-01-01T00:00:00+00:00", "store": "embedded /tmp/x.sqlite", "spec_hash": "abc"}


@pytest.fixture
def frame() -> pd.DataFrame:
    return runs_frame(RUNS)


@pytest.fixture
def steps() -> pd.DataFrame:
    return steps_frame(STEP_RECORDS)


def build(section: dict, frame: pd.DataFrame, steps: pd.DataFrame, study: dict = STUDY):
    """One section through the schema and the registry, as build_report calls it."""
    study = {**study, "report": {"sections": [section]}}
    spec = parse_report(study["report"], study).sections[0]
    built = SECTIONS.get(spec.kind).build(
        SectionInput(study, frame, steps.iloc[0:0], spec.options, spec.title, f"stab/{spec.name}", steps=steps)
    )
    return spec, built


def table_rows(text: str) -> dict[str, list[str]]:
    """The markdown table's rows by their first cell."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split(" | ")] for line in lines[1:])}


# -- the table ---------------------------------------------------------------------------


def test_table_counts_planted_spikes_precedence_drop_and_divergence(frame, steps):
    _, built = build({"kind": "stability"}, frame, steps)
    rows = table_rows(built.text)
    header = [line for line in built.text.splitlines() if line.startswith("| ")][0]
    assert header == ("| lr | runs with steps | loss spikes | first-layer grad spikes | preceded by a grad spike | "
                      "worst train-acc drop (points) | diverged | final validation accuracy (%) |")
    smooth, spiky, diverged = rows["0.001"], rows["0.01"], rows["0.1"]
    assert smooth[:4] == ["1 of 2", "0", "0", "0 of 0"] and smooth[5] == "0 of 2"
    assert spiky[:4] == ["1 of 2", "1", "1", "1 of 1"] and spiky[5] == "0 of 2"
    assert 25 < float(spiky[4]) < 30  # the planted 0.3 fall, less the rise over its 20 steps, on the 10-step mean
    assert float(smooth[4]) == 0.0
    assert diverged[0] == "1 of 1" and diverged[1] == "0" and diverged[5] == f"1 of 1 (step {DIVERGED})"
    assert smooth[6] == "81.0 ± 1.4 (n=2)" and spiky[6] == "75.0 (n=1; 1 of 2 not run)" and diverged[6] == "1 of 1 diverged"


def test_per_run_export_has_the_spike_steps(frame, steps):
    _, built = build({"kind": "stability"}, frame, steps)
    assert list(built.tables) == ["stab/stability", "stab/stability-runs"]
    runs = built.tables["stab/stability-runs"].numbers.set_index("run_id")
    assert runs.loc["lr0.01-s0", "loss_spike_steps"] == str(SPIKE)
    assert runs.loc["lr0.01-s0", "grad_spike_steps"] == str(GRAD_SPIKE)
    assert runs.loc["lr0.01-s0", "preceded_spike_steps"] == str(SPIKE)
    assert runs.loc["lr0.1-s0", "diverged_step"] == DIVERGED and runs.loc["lr0.1-s0", "steps"] == DIVERGED  # cut before it
    assert set(runs.index) == {"lr0.001-s0", "lr0.01-s0", "lr0.1-s0"}
    numbers = built.tables["stab/stability"].numbers.set_index("lr")
    assert numbers.loc[0.01, "preceded"] == 1 and numbers.loc[0.1, "diverged_steps"] == str(DIVERGED)
    assert numbers.loc[0.001, "final_val_acc_mean"] == pytest.approx(81.0)
    for table in built.tables.values():  # CSVs pandas can read back
        assert len(pd.read_csv(pd.io.common.StringIO(to_csv(table)))) == len(table.numbers)
    latex = to_latex(built.tables["stab/stability"])
    assert "\\toprule" in latex and "1 of 1 (step 200)" in latex


def test_stricter_threshold_finds_no_spike(frame, steps):
    _, built = build({"kind": "stability", "k": 6.0}, frame, steps)
    assert table_rows(built.text)["0.01"][:4] == ["1 of 2", "0", "0", "0 of 0"]
    assert "exceeds k = 6 × the running median of the 50 steps before it, ignoring the first 50 steps" in built.text


def test_a_separate_gradient_threshold_keeps_the_loss_spike_and_drops_the_gradient_one(frame, steps):
    _, built = build({"kind": "stability", "grad_k": 50.0}, frame, steps)
    assert table_rows(built.text)["0.01"][:4] == ["1 of 2", "1", "0", "0 of 1"]
    assert "(e.g. a ViT's patch projection), with k = 50. A loss spike is preceded" in built.text


def test_runs_without_steps_are_counted_and_stated(frame, steps):
    _, built = build({"kind": "stability"}, frame, steps)
    assert ("No per-step records: 2 trials: `lr=0.001` (1 completed); `lr=0.01` (1 not run). They were not run, or ran "
            "without `log_steps: true`") in built.text
    _, empty = build({"kind": "stability"}, frame, steps.iloc[0:0])
    assert empty.figures == {} and empty.text.startswith("_No per-step records for these trials")
    assert "No per-step records: 5 trials" in empty.text


def test_method_note_states_the_parameters(frame, steps):
    _, built = build({"kind": "stability", "window": 40, "warmup": 60, "acc_smooth": 5}, frame, steps)
    assert "k = 2 × the running median of the 40 steps before it, ignoring the first 60 steps" in built.text
    assert "starts 1–10 steps before it" in built.text and "on the 5-step trailing mean" in built.text


def test_section_golden(frame, steps):
    _, built = build({"kind": "stability"}, frame, steps)
    assert built.text == golden("stability-section.md", built.text)


# -- the figures -------------------------------------------------------------------------


def rug_steps(fig) -> list[list[float]]:
    """The x of each row of spike ticks (a LineCollection in the strip under a panel)."""
    return [sorted(float(seg[0][0]) for seg in c.get_segments()) for ax in fig.axes for c in ax.collections
            if c.get_label() == "_spikes"]


def test_one_figure_per_series_with_spikes_and_divergence_marked(frame, steps):
    _, built = build({"kind": "stability"}, frame, steps)
    assert list(built.figures) == ["stab/stability-loss.png", "stab/stability-acc.png", "stab/stability-first_grad_norm.png"]
    assert all(isinstance(f, Figure) for f in built.figures.values())
    for path in built.figures:
        assert f"]({path})" in built.text
    loss = built.figures["stab/stability-loss.png"].axes[0]
    assert loss.get_yscale() == "log"
    markers = {line.get_marker(): line for line in loss.get_lines() if line.get_linestyle() == "None"}
    assert "v" not in markers and rug_steps(loss.figure) == [[SPIKE]]  # the spike's start: a tick along the bottom
    assert list(markers["x"].get_xdata()) == [DIVERGED]  # the diverged run's line ends with ×
    diverged_lines = [line for line in loss.get_lines() if line.get_linestyle() == "-" and len(line.get_xdata()) == DIVERGED]
    assert diverged_lines and max(diverged_lines[0].get_xdata()) == DIVERGED - 1
    first = built.figures["stab/stability-first_grad_norm.png"].axes[0]
    assert rug_steps(first.figure) == [[GRAD_SPIKE]]
    acc = built.figures["stab/stability-acc.png"].axes[0]
    assert acc.get_yscale() == "linear" and max(max(line.get_ydata()) for line in acc.get_lines()) <= 100


def test_panels_rows_series_and_a_frozen_first_layer(frame, steps):
    frozen = runs_frame([run(0.01, 0, final=0.7, freeze=True)])
    frozen_steps = steps_frame(series("lr0.01-s0-frozen", spike=True, frozen=True))
    spec, built = build(
        {"kind": "stability", "panels": ["vit_freeze_patch"], "rows": "optimizer", "series": ["loss", "grad_norm"],
         "smooth": 5},
        pd.concat([frame, frozen], ignore_index=True), pd.concat([steps, frozen_steps], ignore_index=True),
    )
    assert spec.options["panels"] == ["vit_freeze_patch"] and spec.options["series"] == ["loss", "grad_norm"]
    assert list(built.figures) == ["stab/stability-loss.png", "stab/stability-grad_norm.png"]
    titles = [ax.get_title() for ax in built.figures["stab/stability-loss.png"].axes if ax.get_visible() and ax.get_title()]
    assert titles == ["optimizer=adamw, vit_freeze_patch=False", "optimizer=adamw, vit_freeze_patch=True"]
    rows = [line for line in built.text.splitlines() if line.startswith("| True |")]
    assert rows == ["| True | adamw | 0.01 | 1 of 1 | 1 | — | — | 28.7 | 0 of 1 | 70.0 (n=1) |"]


def test_seed_option_picks_the_drawn_run(frame, steps):
    _, built = build({"kind": "stability", "seed": 1}, frame, steps)
    assert built.figures == {} and "no trial of seed 1 has per-step records" in built.text
    assert table_rows(built.text)["0.01"][1] == "1"  # the table still covers every seed
    _, zero = build({"kind": "stability", "seed": 0, "series": "loss"}, frame, steps)
    assert list(zero.figures) == ["stab/stability-loss.png"] and "the run of seed 0" in zero.text


# -- the spec ----------------------------------------------------------------------------


def test_schema_accepts_the_section_with_its_defaults():
    study = {**STUDY, "report": {"sections": [{"kind": "stability"}]}}
    (section,) = parse_report(study["report"], study).sections
    assert section.name == "stability" and section.title == "Training stability per step, per lr"
    o = section.options
    assert (o["group"], o["panels"], o["rows"], o["series"], o["smooth"], o["seed"]) == (
        "lr", None, None, ["loss", "acc", "first_grad_norm"], 20, None)
    assert (o["k"], o["window"], o["warmup"], o["acc_smooth"]) == (2.0, 50, 50, 10)
    assert SECTIONS.get("stability").per_step and not SECTIONS.get("stability").per_epoch
    assert not any(SECTIONS.get(k).per_step for k in SECTIONS.names() if k != "stability")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"k": 0.5}, "report section 1 (stability): `k` must be a number > 1 (a spike step exceeds k × the running median"),
        ({"grad_k": 1.0}, "report section 1 (stability): `grad_k` must be a number > 1 (or left out to use k); got 1."),
        ({"series": ["loss", "gradnorm"]}, "`series` must list some of loss, acc, grad_norm, first_grad_norm, lr"),
        ({"series": []}, "`series` must list one or more of loss, acc"),
        ({"series": ["loss", "loss"]}, "`series` names a value twice"),
        ({"smooth": 0}, "`smooth` must be a positive integer"),
        ({"warmup": -1}, "`warmup` must be an integer ≥ 0"),
        ({"seed": 1.5}, "`seed` must be an integer ≥ 0"),
        ({"group": "colour"}, "`group` must name a column of the runs"),
        ({"panels": ["lr"]}, "`lr` is named twice among group, panels and rows"),
        ({"spikes": True}, "report section 1 (stability) has no option 'spikes'. A stability section takes: group ("),
    ],
)
def test_schema_rejects_bad_options(options, expected):
    study = {**STUDY, "report": {"sections": [{"kind": "stability", **options}]}}
    with pytest.raises(ConfigError) as info:
        parse_report(study["report"], study)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_seed_zero_and_warmup_zero_are_allowed():
    study = {**STUDY, "report": {"sections": [{"kind": "stability", "seed": 0, "warmup": 0}]}}
    (section,) = parse_report(study["report"], study).sections
    assert section.options["seed"] == 0 and section.options["warmup"] == 0


# -- build_report and write_report -------------------------------------------------------


def test_build_report_passes_steps_to_per_step_sections_only(frame, steps):
    study = {**STUDY, "report": {"sections": [
        {"kind": "stability", "where": {"lr": [0.01, 0.1]}},
        {"kind": "pivot", "rows": "lr", "columns": "seed"},
    ]}}
    before = (copy.deepcopy(study), frame.copy(), steps.copy())
    report = build_report(study, frame, PROVENANCE, steps=steps)
    assert "Trials with lr ∈ {0.01, 0.1}." in report.text and "| 0.001 | 1 of 2" not in report.text
    assert "| 0.01 | 1 of 2 | 1 | 1 | 1 of 1 |" in report.text
    assert list(report.figures) == ["stab/stability-loss.png", "stab/stability-acc.png", "stab/stability-first_grad_norm.png"]
    assert "stab/stability-runs" in report.tables
    pd.testing.assert_frame_equal(frame, before[1])
    pd.testing.assert_frame_equal(steps, before[2])
    assert study == before[0]
    assert "No per-step records for these trials" in build_report(study, frame, PROVENANCE).text  # steps default: none


SPEC = """
    name: stab
    base: {dataset: synthetic, arch: cnn, width: 8, epochs: 3, log_steps: true}
    axes:
      lr: [0.001, 0.01]
    repeats: 2
    report:
      baseline: {lr: 0.001}
      budget: epochs
      sections:
        - {kind: pivot, rows: lr, columns: seed}
"""
STABILITY = "    - {kind: stability, where: {lr: [0.01]}}\n"


class Spy:
    """A store that records the ids it was asked for per-step records."""

    def __init__(self, store):
        self.store = store
        self.asked: list[list[str]] = []

    def find_steps(self, run_ids):
        self.asked.append(list(run_ids))
        return self.store.find_steps(run_ids)

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.mark.parametrize("with_section", [False, True])
def test_write_report_reads_steps_only_for_per_step_sections(tmp_path, with_section):
    spec_path = tmp_path / "stab.yaml"
    spec_path.write_text(textwrap.dedent(SPEC) + (STABILITY if with_section else ""))
    spec = load_spec(spec_path)
    store = open_store(str(tmp_path / "store.sqlite"))
    try:
        ids = {}
        for config in spec.expand():
            ids[(config.lr, config.seed)] = config.trial_id
            spiky = config.lr == 0.01 and config.seed == 0
            store.upsert_run(config.trial_id, {"config": config.to_dict(), "status": "completed",
                                               "summary": {"final_val_acc": 0.7 + 0.01 * config.seed, "epochs_done": 3}},
                             study="stab")
            if config.seed == 0:  # seed 1 ran without per-step records
                store.upsert_steps(config.trial_id, [
                    {k: v for k, v in r.items() if k != "run_id"} for r in series(config.trial_id, spike=spiky)])
        spy = Spy(store)
        path = write_report(spec, spy, tmp_path / "reports")
    finally:
        store.close()
    text = path.read_text()
    if not with_section:
        assert spy.asked == []
        return
    assert spy.asked == [[ids[(0.01, 0)], ids[(0.01, 1)]]]  # only the trials the section shows
    assert "| 0.01 | 1 of 2 | 1 | 1 | 1 of 1 |" in text and "`lr=0.01` (1 completed)" in text
    out = tmp_path / "reports" / "stab"
    for name in ("stability-loss.png", "stability-acc.png", "stability-first_grad_norm.png", "stability.csv",
                 "stability.tex", "stability-runs.csv"):
        assert (out / name).stat().st_size > 100, name
    assert not (out / "stability-runs.tex").exists()
    assert np.isclose(pd.read_csv(out / "stability.csv")["loss_spikes_mean"].iloc[0], 1.0)

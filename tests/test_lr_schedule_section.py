"""The ``lr-schedule`` section: every step's learning rate, recomputed from stored configs."""

from __future__ import annotations

import pytest

from bench.report.frame import runs_frame
from bench.report.kinds import SECTIONS, SectionInput
from bench.report.schema import parse_report
from bench.spec import TrialConfig
from bench.zoo.schedules import schedule_factor

STUDY = {
    "name": "sched", "profile": "default", "variants": {"sgdr": {}, "warmup-cosine": {}, "never": {}},
    "report": {"sections": [{"kind": "lr-schedule", "group": "variant"}]},
}


def run(variant: str, config: TrialConfig, seed: int, steps_per_epoch: int | None) -> dict:
    summary = {"steps_per_epoch": steps_per_epoch} if steps_per_epoch else {}
    return {"_id": f"{variant}-{seed}", "status": "completed" if steps_per_epoch else "pending",
            "config": config.replace(seed=seed).to_dict(), "summary": summary}


def build(runs: list[dict], variants: dict[str, str]):
    frame = runs_frame(runs)
    frame["variant"] = frame["run_id"].map(variants)
    spec = parse_report(STUDY["report"], STUDY).sections[0]
    return SECTIONS.get("lr-schedule").build(SectionInput(STUDY, frame, frame.iloc[0:0], spec.options, spec.title, "sched/lr"))


def test_the_curves_are_the_trainers_schedule_at_every_step():
    sgdr = TrialConfig(schedule="sgdr", sgdr_t0=1, sgdr_t_mult=2, epochs=3, lr=0.1, lr_scaling="none")
    warm = TrialConfig(schedule="warmup-cosine", warmup_epochs=1, epochs=3, lr=0.2, lr_scaling="none", train_subset=100)
    runs = [run("sgdr", sgdr, 1, 10), run("sgdr", sgdr, 0, 10), run("warmup-cosine", warm, 0, 20), run("never", sgdr, 0, None)]
    built = build(runs, {r["_id"]: r["_id"].rsplit("-", 1)[0] for r in runs})
    (figure,) = built.figures.values()
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert list(lines) == ["sgdr", "warmup-cosine"]  # the spec's order; `never` has no curve
    x, y = lines["sgdr"].get_data()
    factor = schedule_factor(sgdr, 10)
    assert len(y) == 30 and list(y) == pytest.approx([0.1 * factor(s) for s in range(30)])
    # SGDR restarts at T_0 = 1 epoch and at T_0 + T_0·T_mult = 3 epochs (the end): step 10 is back at the peak
    assert y[10] == pytest.approx(0.1) and y[9] < 0.01 and x[10] == pytest.approx(1.0)
    x, y = lines["warmup-cosine"].get_data()
    assert len(y) == 60 and max(y) == pytest.approx(0.2) and int(y.argmax()) == 19  # the peak at the end of warm-up
    assert "No curve for `never`: none of its trials finished an epoch." in built.text
    numbers = next(iter(built.tables.values())).numbers.set_index("variant")
    assert numbers.loc["sgdr", "steps"] == 30 and numbers.loc["warmup-cosine", "peak at step"] == 19
    assert numbers.loc["warmup-cosine", "peak lr"] == pytest.approx(0.2)


def test_the_lowest_seed_of_a_group_gives_its_curve():
    a = TrialConfig(schedule="cosine", epochs=2, lr=0.1, lr_scaling="none")
    runs = [run("sgdr", a, 3, 5), run("sgdr", a.replace(epochs=4), 1, 5)]
    built = build(runs, {r["_id"]: "sgdr" for r in runs})
    (figure,) = built.figures.values()
    (line,) = figure.axes[0].get_lines()
    assert len(line.get_data()[1]) == 4 * 5  # the seed-1 run's 4 epochs

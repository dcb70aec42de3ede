"""One table of metrics (bench/metrics.py): what the trainer writes is declared there, and
every run metric it declares works in ``--where`` and in report sections."""

from __future__ import annotations

import pytest

from bench.errors import ConfigError, QueryError, UnknownNameError
from bench.metrics import (
    EPOCH,
    EPOCH_INDEX,
    EPOCH_METRICS,
    METRICS,
    RUN,
    RUN_METRICS,
    SCOPES,
    STABILITY_METRICS,
    SUMMARY_FIELDS,
    declared_summary,
    epoch_metric,
    run_metric,
    summary_keys,
)
from bench.store.where import parse_where, resolve_key
from bench.report.frame import runs_frame
from bench.report.kinds import SECTIONS, SectionInput
from bench.report.schema import parse_report
from bench.spec import CONFIG_FIELDS, TrialConfig
from bench.trial.steplog import SUMMARY_KEYS
from bench.trial import run_trial

# steps logged, an EMA model kept and an architecture with an inference form: the runs that record
# every metric the table declares
TINY = dict(dataset="synthetic", arch="repvgg", width=4, batch_size=32, epochs=1, lr=0.05, log_steps=True, ema_decay=0.9)
DIVERGING = dict(TINY, lr=1e4, lr_scaling="none", norm="none", momentum=0.9, epochs=3)
STUDY = {"name": "demo", "axes": {"norm": ["bn", "gn"], "batch_size": [2, 8]}, "variants": {}, "seeds": [0, 1], "base": {"epochs": 3}}
DIVERGED_ONLY = {"diverged_step", "diverged_epoch", "diverged_loss"}


# -- the table itself -------------------------------------------------------------------


def test_every_metric_is_complete_and_named_once_per_scope():
    for m in METRICS:
        assert m.scope in SCOPES and m.label and m.definition and m.digits >= 0 and m.scale > 0, m
        assert m.direction in ("higher", "lower")
    assert len(RUN_METRICS) + len(EPOCH_METRICS) == len(METRICS)
    assert all(m.scope == RUN for m in RUN_METRICS.values()) and all(m.scope == EPOCH for m in EPOCH_METRICS.values())
    assert not (set(RUN_METRICS) | set(SUMMARY_FIELDS)) & set(CONFIG_FIELDS)  # --where resolves them unambiguously
    assert not set(EPOCH_INDEX) & set(EPOCH_METRICS) and not set(SUMMARY_FIELDS) & set(RUN_METRICS)


def test_accuracies_are_fractions_shown_in_percent():
    for name in ("final_val_acc", "best_val_acc", "final_train_acc"):
        assert run_metric(name).unit == "fraction" and run_metric(name).scale == 100 and run_metric(name).delta_unit == "points"
    assert epoch_metric("val_acc").scale == 100 and run_metric("max_acc_drop").scale == 100


def test_the_steplog_copies_the_stability_metrics_of_the_table():
    assert SUMMARY_KEYS == STABILITY_METRICS == ("loss_spikes", "grad_spikes", "preceded_spikes", "max_acc_drop")


def test_unknown_metrics_list_the_valid_names():
    with pytest.raises(UnknownNameError, match="Valid run metric names: .*loss_spikes.*max_acc_drop"):
        run_metric("spikes")
    with pytest.raises(UnknownNameError, match="Valid per-epoch metric names: .*val_acc"):
        epoch_metric("final_val_acc")
    with pytest.raises(ValueError, match="best_epoch"):
        declared_summary({"steps": 3, "best_epoch": 2})


# -- the trainer writes only declared keys ----------------------------------------------


@pytest.fixture(scope="module")
def completed():
    epochs: list[dict] = []
    result = run_trial(TrialConfig(**TINY), epochs.append, device="cpu")
    assert result.status == "completed", result.error
    return result, epochs


@pytest.fixture(scope="module")
def diverged():
    result = run_trial(TrialConfig(**DIVERGING), device="cpu")
    assert result.status == "diverged", result.error
    return result


def test_a_completed_run_writes_declared_keys_only(completed):
    result, epochs = completed
    assert set(result.summary) <= summary_keys()
    assert epochs == result.epochs and len(epochs) == 1
    for doc in epochs:
        assert set(doc) <= set(EPOCH_METRICS) | set(EPOCH_INDEX)
    # and the table declares nothing such a completed run leaves out
    assert set(RUN_METRICS) - set(result.summary) == DIVERGED_ONLY
    assert set(EPOCH_METRICS) | set(EPOCH_INDEX) == set(epochs[0])


def test_a_diverged_run_writes_declared_keys_only(diverged):
    assert set(diverged.summary) <= summary_keys()
    assert DIVERGED_ONLY - {"diverged_loss"} <= set(diverged.summary)


def test_every_run_metric_written_works_in_where_and_in_sections(completed, diverged):
    written = (set(completed[0].summary) | set(diverged.summary)) & set(RUN_METRICS)
    for name in sorted(written):
        path = resolve_key(name)
        assert path == RUN_METRICS[name].path and path.split(".")[0] in ("summary", "derived")
        for kind in ("pivot", "ranking", "scaling"):
            section = {"kind": kind, "metric": name, **({"x": "batch_size", "group": "norm"} if kind == "scaling" else {})}
            assert parse_report({"sections": [section]}, STUDY).sections[0].options["metric"] == name
    assert resolve_key("device") == "summary.device"


# -- --where ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "condition, expected",
    [
        ("loss_spikes>0", {"summary.loss_spikes": {"$gt": 0}}),
        ("max_acc_drop>=0.1", {"summary.max_acc_drop": {"$gte": 0.1}}),
        ("samples_per_s>100", {"summary.samples_per_s": {"$gt": 100}}),
        ("peak_mem_mb<1000", {"summary.peak_mem_mb": {"$lt": 1000}}),
        ("grad_spikes=0", {"summary.grad_spikes": 0}),
        ("effective_lr<=0.1", {"derived.effective_lr": {"$lte": 0.1}}),
        ("device=cpu", {"summary.device": "cpu"}),
        ("norm=gn", {"config.norm": "gn"}),
    ],
)
def test_where_resolves_run_metrics_to_their_paths(condition, expected):
    assert parse_where(condition) == expected


def test_an_unknown_where_key_lists_the_run_metrics():
    with pytest.raises(QueryError) as info:
        parse_where("spikes>0")
    message = str(info.value)
    assert "Unknown key 'spikes'" in message and "\n" not in message
    assert all(name in message for name in [*RUN_METRICS, *SUMMARY_FIELDS])


# -- report sections --------------------------------------------------------------------


def _run(norm: str, batch: int, seed: int, spikes: int, drop: float) -> dict:
    return {
        "_id": f"{norm}-{batch}-{seed}", "status": "completed", "study": ["demo"],
        "config": {"norm": norm, "batch_size": batch, "seed": seed, "epochs": 3},
        "summary": {"final_val_acc": 0.9, "loss_spikes": spikes, "max_acc_drop": drop},
    }


@pytest.fixture
def frame():
    runs = [_run(n, b, s, spikes=s + (b == 8) * 2 + (n == "gn"), drop=0.05 * (s + 1) + (n == "gn") * 0.1)
            for n in ("bn", "gn") for b in (2, 8) for s in (0, 1)]
    return runs_frame(runs)


def build(section: dict, frame):
    study = {**STUDY, "report": {"sections": [section]}}
    spec = parse_report(study["report"], study).sections[0]
    return SECTIONS.get(spec.kind).build(SectionInput(study, frame, frame.iloc[0:0], spec.options, spec.title, f"demo/{spec.name}"))


def test_a_pivot_of_loss_spikes_renders(frame):
    built = build({"kind": "pivot", "rows": "norm", "columns": "batch_size", "metric": "loss_spikes", "baseline": None}, frame)
    (table,) = built.tables.values()
    assert table.caption.startswith("Loss spikes: norm × batch_size")
    assert "| bn | 0.5 ± 0.7 (n=2) | 2.5 ± 0.7 (n=2) |" in built.text  # fewer is better, but not separated: no bold
    assert "| gn | 1.5 ± 0.7 (n=2) | 3.5 ± 0.7 (n=2) |" in built.text
    assert "batch_size = 2: best: tied between `bn` 0.5 and `gn` 1.5" in built.text  # the lower count leads


def test_a_ranking_of_max_acc_drop_renders_in_points(frame):
    built = build({"kind": "ranking", "metric": "max_acc_drop", "baseline": None}, frame)
    assert "largest training-accuracy drop (points)" in built.text
    assert "| 1 | bn | 2 | 7.5 ± 3.5 (n=2) |" in built.text  # drops 0.05 and 0.10: 7.5 points; lowest first
    assert built.text.index("| bn |") < built.text.index("17.5 ± 3.5 (n=2)")


def test_an_unknown_section_metric_lists_the_valid_names():
    with pytest.raises(ConfigError) as info:
        parse_report({"sections": [{"kind": "pivot", "rows": "norm", "columns": "batch_size", "metric": "spikes"}]}, STUDY)
    message = str(info.value)
    assert "got 'spikes'" in message and all(name in message for name in RUN_METRICS)
    with pytest.raises(ConfigError, match="must be a per-epoch metric: val_acc,"):
        parse_report({"sections": [{"kind": "curves", "group": "norm", "metric": "loss_spikes"}]}, STUDY)

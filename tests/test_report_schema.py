"""The ``report:`` section of a spec: both forms parse to the same sections, and every
mistake is one paragraph that says what is allowed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bench.errors import ConfigError
from bench.report.kinds import SECTIONS
from bench.report.schema import REPORT_KEYS, check_study, parse_report
from bench.spec import list_specs, load_spec

STUDY = {
    "axes": {"norm": ["bn", "gn"], "batch_size": [2, 8]},
    "variants": {},
    "base": {"epochs": 3},
}
ZOO = {"axes": {"batch_size": [1, 2]}, "variants": {"bn": {"norm": "bn"}, "bn @ 32": {"norm": "bn", "batch_size": 32}}, "base": {}}


def error(doc, study=STUDY, **overrides) -> str:
    with pytest.raises(ConfigError) as info:
        parse_report(doc, study, overrides=overrides or None)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message  # one paragraph
    return message


def test_short_form_is_a_pivot_and_its_scaling_plot():
    spec = parse_report({"kind": "pivot", "rows": "norm", "columns": "batch_size", "metric": "final_val_acc",
                         "title": "T", "plot": {"x": "batch_size", "group": "norm", "log_base": 2}}, STUDY)
    assert spec.title == "T" and [s.kind for s in spec.sections] == ["pivot", "scaling"]
    pivot, scaling = spec.sections
    assert pivot.name == "pivot-final_val_acc" and pivot.title == "Final validation accuracy (%): norm × batch_size"
    assert scaling.name == "final_val_acc-vs-batch_size" and scaling.options["log"] == 2
    assert (spec.ci, spec.alpha, spec.correction, spec.budget, spec.baseline) == ("none", 0.05, "none", None, None)
    assert [s.kind for s in parse_report({}, STUDY).sections] == ["pivot", "scaling"]  # defaults: norm × batch_size


def test_full_form_resolves_report_settings_into_sections():
    spec = parse_report({
        "metric": "best_val_acc", "baseline": {"norm": "bn"}, "budget": "steps", "ci": "bootstrap", "alpha": 0.1,
        "correction": "holm",
        "sections": [
            {"kind": "pivot", "rows": "norm", "columns": "batch_size"},
            {"kind": "pivot", "rows": "batch_size", "columns": "norm", "baseline": None, "metric": "final_val_loss"},
            {"kind": "curves", "group": "norm", "x": "seconds", "where": {"batch_size": [2]}},
            {"kind": "ranking", "best_of": "batch_size", "per": "norm", "name": "best-batch"},
            {"kind": "time-to-accuracy", "target": 0.9},
        ],
    }, STUDY)
    first, second, curves, ranking, tta = spec.sections
    assert first.options["metric"] == "best_val_acc" and first.options["baseline"] == {"norm": "bn"}
    assert first.options["ci"] == "bootstrap" and first.options["alpha"] == 0.1 and first.options["correction"] == "holm"
    assert second.options["baseline"] is None and second.name == "pivot-final_val_loss"
    assert curves.options["metric"] == "val_acc" and curves.options["where"] == {"batch_size": [2]}
    assert ranking.name == "best-batch" and ranking.options["per"] == ["norm"]
    assert tta.title == "Time to validation accuracy ≥ 90%" and spec.budget == "steps"


def test_command_line_overrides_replace_report_settings():
    spec = parse_report({"ci": "t", "alpha": 0.01}, STUDY, overrides={"ci": "bootstrap", "alpha": 0.2})
    assert (spec.ci, spec.alpha) == ("bootstrap", 0.2) and spec.sections[0].options["ci"] == "bootstrap"
    assert spec.level == pytest.approx(0.8)


def test_section_names_are_unique():
    spec = parse_report({"sections": [{"kind": "pivot"}, {"kind": "pivot", "rows": "batch_size", "columns": "norm"}]}, STUDY)
    assert [s.name for s in spec.sections] == ["pivot-final_val_acc", "pivot-final_val_acc-2"]
    message = error({"sections": [{"kind": "pivot", "name": "a"}, {"kind": "scaling", "x": "norm", "group": "norm", "name": "a"}]})
    assert "report section 2 (scaling): another section is already named 'a'" in message


def test_unknown_kind_lists_the_kinds():
    message = error({"sections": [{"kind": "pie"}]})
    assert message.startswith("report section 1 has kind 'pie'; the section kinds are ")
    assert all(kind in message for kind in SECTIONS.names())


def test_unknown_option_lists_the_options_of_the_kind():
    message = error({"sections": [{"kind": "scaling", "x": "batch_size", "group": "norm", "colour": "red"}]})
    assert message.startswith("report section 1 (scaling) has no option 'colour'. A scaling section takes: x (")
    assert "log (" in message and "and, like every section, kind, name, title, higher_is_better, where, baseline." in message


def test_short_form_rejects_unknown_keys_with_the_allowed_ones():
    message = error({"kind": "pivot", "colums": "batch_size"})
    assert "has no option 'colums'" in message and "columns" in message
    message = error({"sections": [{"kind": "pivot"}], "rows": "norm"})
    assert "unknown key 'rows'" in message and ", ".join(REPORT_KEYS) in message


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"sections": [{"kind": "scaling", "x": "batch_size"}]}, "report section 1 (scaling) needs `group`"),
        ({"sections": [{"kind": "time-to-accuracy"}]}, "needs `target`"),
        ({"sections": [{"kind": "time-to-accuracy", "target": 85}]}, "accuracies are stored as fractions, so write 0.85 for 85%"),
        ({"sections": [{"kind": "pivot", "rows": "nrom"}]}, "`rows` must name a column of the runs: a config field, `effective_lr`; got 'nrom'"),
        ({"sections": [{"kind": "pivot", "metric": "val_acc"}]}, "`metric` must be a run metric (one number per trial): final_val_acc,"),
        ({"sections": [{"kind": "curves", "group": "norm", "metric": "final_val_acc"}]}, "`metric` must be a per-epoch metric: val_acc,"),
        ({"sections": [{"kind": "curves", "group": "norm", "band": "iqr"}]}, "`band` must be one of std, minmax"),
        ({"sections": [{"kind": "ranking", "top": 0}]}, "`top` must be a positive integer"),
        ({"sections": [{"kind": "ranking", "per": ["norm"]}]}, "`per` groups the values of `best_of`; give `best_of` too"),
        (["pivot"], "report must be a mapping of title, metric, higher_is_better, baseline, budget, ci, alpha, correction, sections"),
        ({"sections": []}, "report.sections must be a non-empty list of mappings, each with a `kind` (pivot"),
        ({"sections": [{"kind": "pivot", "where": "norm=bn"}]}, "`where` must map columns to values, e.g. where: {batch_size: [2, 64]}"),
        ({"baseline": {"norm": "bx"}}, "`baseline.norm` is 'bx', which no trial of this study has; norm takes the values 'bn', 'gn'"),
        ({"baseline": {"norm": ["bn", "gn"]}}, "`baseline.norm` names one configuration, so one value"),
        ({"baseline": {"colour": "red"}}, "`baseline.colour` must name a column of the runs"),
        ({"baseline": "norm=bn"}, "`baseline` must map columns to values, e.g. baseline: {norm: bn}"),
        ({"budget": "minutes"}, "report: `budget` must be one of epochs, steps, seconds"),
        ({"ci": "wald"}, "report: `ci` must be one of none, t, bootstrap"),
        ({"alpha": 1.5}, "report.alpha is a significance level in (0, 1), such as 0.05; got 1.5."),
        ({"correction": "bonferroni"}, "`correction` must be one of none, holm"),
        ({"kind": "curves", "group": "norm", "plot": {"x": "norm"}}, "report.plot belongs to the short form of a pivot report"),
        ({"plot": {"x": "batch_size", "y": 1}}, "report.plot has an unknown key 'y'; its keys are x, group, log_base."),
        ({"sections": [{"kind": "pivot", "references": [{"source": "x"}]}]}, "each reference has `source`"),
    ],
)
def test_bad_report_specs_are_one_paragraph_errors(doc, expected):
    assert expected in error(doc)


def test_variants_name_columns_and_values():
    spec = parse_report({"baseline": {"variant": "bn @ 32", "batch_size": 32}, "rows": "variant"}, ZOO)
    assert spec.baseline == {"variant": "bn @ 32", "batch_size": 32}  # 32 is pinned by a variant
    assert "variant takes the values 'bn', 'bn @ 32'" in error({"baseline": {"variant": "gn"}}, ZOO)
    assert "(the study has no variants)" in error({"rows": "variant"}, STUDY)


def test_where_may_name_values_a_profile_leaves_out():
    spec = parse_report({"sections": [{"kind": "pivot", "where": {"batch_size": [128]}}]}, STUDY)
    assert spec.sections[0].options["where"] == {"batch_size": [128]}


def test_cli_overrides_are_checked():
    assert "`ci` must be one of none, t, bootstrap" in error({}, ci="x")
    assert "significance level in (0, 1)" in error({}, alpha=0.0)


def test_a_loaded_study_with_a_bad_report_is_rejected_before_anything_runs(tmp_path: Path):
    """The spec package knows nothing of reports: the study's report block is checked by
    :func:`bench.report.schema.check_study`, which the CLI calls on every study it loads."""
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent("""
        name: bad
        base: {dataset: synthetic}
        axes: {norm: [bn, gn]}
        report: {sections: [{kind: scaling, x: batch_size, group: norm, colour: red}]}
    """))
    spec = load_spec(path)
    with pytest.raises(ConfigError, match=r"^Study 'bad': report section 1 \(scaling\) has no option 'colour'"):
        check_study(spec)


@pytest.mark.parametrize("path", list_specs(Path(__file__).resolve().parent.parent / "ablations"), ids=lambda p: p.stem)
def test_every_study_report_parses_in_every_profile(path: Path):
    spec = load_spec(path)
    for profile in ("default", *spec.profiles):
        study = load_spec(path, profile=profile).to_dict()
        report = parse_report(study["report"], study)
        assert report.sections and report.budget and report.baseline  # the committed studies declare both

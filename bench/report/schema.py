"""The ``report:`` section of a study spec: parsing, defaults and validation.

Two forms, one meaning. The full form is report-level settings and a list of sections::

    report:
      title: Normalization vs batch size
      metric: final_val_acc          # the default metric of run-metric sections
      baseline: {norm: bn}           # compared with in the same column; null: no comparison
      budget: epochs                 # what every trial holds equal: epochs | steps | seconds
      ci: t                          # none | t | bootstrap: a confidence interval in every cell
      alpha: 0.05                    # significance level; intervals are at 1 − alpha
      correction: none               # none | holm: multiple-comparison adjustment per table
      sections:
        - {kind: pivot, rows: norm, columns: batch_size}
        - {kind: scaling, x: batch_size, group: norm}
        - {kind: curves, metric: val_acc, group: norm, panels: batch_size}
        - {kind: stability, group: lr, panels: [optimizer, vit_freeze_patch]}

The section kinds (:data:`bench.report.kinds.SECTIONS`): ``pivot``, ``scaling``,
``curves``, ``ranking``, ``time-to-accuracy``, ``stability`` (per-step training curves
of runs trained with ``log_steps: true``, loss spikes marked, and a table of spikes,
worst accuracy drop and final accuracy) and ``lr-schedule`` (every step's learning rate,
recomputed from the stored configs).

The short form (no ``sections``) is one section whose options sit beside the report-level
settings; its kind defaults to ``pivot``, and a pivot in short form is followed by its
scaling plot (``plot: {x, group, log_base}``, or columns vs rows by default)::

    report: {kind: pivot, rows: norm, columns: batch_size, metric: final_val_acc}

Every mistake is a :class:`~bench.errors.ConfigError` naming the section and listing what
is allowed, raised when the spec is loaded, before any trial runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import bench.report.sections  # noqa: F401  (registers the section kinds)
from bench.errors import ConfigError
from bench.metrics import EPOCH_METRICS, RUN_METRICS
from bench.report.claims import Claim, parse_claims
from bench.report.kinds import SECTIONS, Option, SectionKind
from bench.report.stats import CI_METHODS, CORRECTIONS
from bench.spec import CONFIG_FIELDS

BUDGETS = ("epochs", "steps", "seconds")
DEFAULT_METRIC = "final_val_acc"

REPORT_OPTIONS: dict[str, Option] = {
    "title": Option("the report's heading (default: the study's name)", "text"),
    "metric": Option("default run metric of the sections", "metric", DEFAULT_METRIC),
    "higher_is_better": Option("the direction of that metric, when its default is wrong", "bool"),
    "baseline": Option("the configuration every cell is compared with, e.g. {norm: bn}", "baseline"),
    "budget": Option("what every trial holds equal", "choice", choices=BUDGETS),
    "ci": Option("confidence interval of each mean", "choice", "none", choices=CI_METHODS),
    "alpha": Option("significance level of the paired tests; intervals are at 1 − alpha", "number", 0.05),
    "correction": Option("multiple-comparison adjustment of the tests of one table", "choice", "none", choices=CORRECTIONS),
    "sections": Option("the list of sections", "text"),  # checked by hand
    "claims": Option("the published claims the study tests (bench.report.claims)", "text"),  # checked by hand
}
#: The report-level keys (the short form also takes its section's keys and ``plot``).
REPORT_KEYS = tuple(REPORT_OPTIONS)

COMMON_OPTIONS: dict[str, Option] = {
    "kind": Option("the section kind", "text"),  # checked by hand
    "name": Option("file name stem of the section's figures and tables", "text"),
    "title": Option("the section's heading", "text"),
    "higher_is_better": Option("the direction of the metric, when its default is wrong", "bool"),
    "where": Option("restrict the section to some trials, e.g. {batch_size: [2, 64]}", "where"),
    "baseline": Option("override the report's baseline (null: no comparison)", "baseline"),
}
PLOT_KEYS = ("x", "group", "log_base")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class SectionSpec:
    kind: str
    name: str  # file stem, unique within the report
    title: str
    options: Mapping[str, Any]  # every option of the kind, defaults filled in, report settings resolved


@dataclass(frozen=True)
class ReportSpec:
    title: str | None = None
    budget: str | None = None
    ci: str = "none"
    alpha: float = 0.05
    correction: str = "none"
    baseline: Mapping[str, Any] | None = None
    sections: tuple[SectionSpec, ...] = field(default_factory=tuple)
    claims: tuple[Claim, ...] = field(default_factory=tuple)

    @property
    def level(self) -> float:
        return 1 - self.alpha


def check_study(spec: Any) -> None:
    """A loaded study's report block, checked before anything runs (a StudySpec: its axes,
    zip, variants and base name what the report may refer to)."""
    study = {"axes": spec.axes, "zip": spec.zip, "variants": spec.variants, "base": spec.base, "tune": spec.tune}
    try:
        parse_report(spec.report, study)
    except ConfigError as exc:
        raise ConfigError(f"Study {spec.name!r}: {exc}") from None


def parse_report(
    doc: Mapping[str, Any] | None, study: Mapping[str, Any], *, overrides: Mapping[str, Any] | None = None
) -> ReportSpec:
    """Validates ``doc`` (a spec's ``report:``) against the study (its axes, zip, variants
    and base name the columns and values a report may refer to) and fills in defaults.
    ``overrides`` replace report-level settings (the command line's ``--ci``, ``--alpha``)."""
    if not isinstance(doc, Mapping) and doc is not None:
        raise ConfigError(f"report must be a mapping of {', '.join(REPORT_KEYS)}; got {doc!r}.")
    doc = dict(doc or {})
    checker = _Checker(study)
    if "sections" in doc:
        extra = sorted(set(doc) - set(REPORT_KEYS))
        if extra:
            raise ConfigError(
                f"report has an unknown key {extra[0]!r}. A report with `sections` takes the report-level keys "
                f"{', '.join(REPORT_KEYS)}; options of one section go inside its entry in `sections`."
            )
        raw_sections = doc["sections"]
        if not isinstance(raw_sections, list) or not raw_sections or not all(isinstance(s, dict) for s in raw_sections):
            raise ConfigError(
                "report.sections must be a non-empty list of mappings, each with a `kind` "
                f"({', '.join(SECTIONS.names())}) and that kind's options; got {raw_sections!r}."
            )
        top = {k: v for k, v in doc.items() if k != "sections"}
        sections = [dict(s) for s in raw_sections]
    else:
        top = {k: v for k, v in doc.items() if k in REPORT_OPTIONS}
        section = {k: v for k, v in doc.items() if k not in REPORT_OPTIONS or k == "higher_is_better"}
        section.setdefault("kind", "pivot")
        plot = section.pop("plot", None)
        sections = [section]
        if section["kind"] == "pivot":
            sections.append(_implied_scaling(section, plot))
        elif plot is not None:
            raise ConfigError("report.plot belongs to the short form of a pivot report; use a `scaling` section instead.")
    top.update(overrides or {})
    settings = {
        k: checker.value("report", k, top[k] if top.get(k) is not None else option.default, option)
        for k, option in REPORT_OPTIONS.items()
        if k not in ("sections", "claims")
    }
    if not 0 < settings["alpha"] < 1:
        raise ConfigError(f"report.alpha is a significance level in (0, 1), such as 0.05; got {settings['alpha']}.")
    specs: list[SectionSpec] = []
    names: set[str] = set()
    for i, section in enumerate(sections, 1):
        spec = _section(checker, i, section, settings)
        if spec.name in names:
            if "name" in section:
                raise ConfigError(f"report section {i} ({spec.kind}): another section is already named {spec.name!r}; give it another `name`.")
            spec = replace(spec, name=_unique(spec.name, names))
        names.add(spec.name)
        specs.append(spec)
    return ReportSpec(
        title=settings["title"],
        budget=settings["budget"],
        ci=settings["ci"],
        alpha=float(settings["alpha"]),
        correction=settings["correction"],
        baseline=settings["baseline"],
        sections=tuple(specs),
        claims=parse_claims(top.get("claims"), checker, settings["metric"]),
    )


def _implied_scaling(pivot: Mapping[str, Any], plot: Any) -> dict[str, Any]:
    if plot is not None and not isinstance(plot, dict):
        raise ConfigError(f"report.plot must be a mapping with keys {', '.join(PLOT_KEYS)}; got {plot!r}.")
    plot = dict(plot or {})
    extra = sorted(set(plot) - set(PLOT_KEYS))
    if extra:
        raise ConfigError(f"report.plot has an unknown key {extra[0]!r}; its keys are {', '.join(PLOT_KEYS)}.")
    scaling = {
        "kind": "scaling",
        "x": plot.get("x", pivot.get("columns", "batch_size")),
        "group": plot.get("group", pivot.get("rows", "norm")),
    }
    if "log_base" in plot:
        scaling["log"] = plot["log_base"] or "none"
    for key in ("metric", "higher_is_better", "where"):
        if key in pivot:
            scaling[key] = pivot[key]
    return scaling


def _section(checker: _Checker, index: int, section: dict[str, Any], settings: Mapping[str, Any]) -> SectionSpec:
    kind_name = section.get("kind")
    if kind_name not in SECTIONS:
        raise ConfigError(
            f"report section {index} has kind {kind_name!r}; the section kinds are "
            + "; ".join(f"{e.name} ({e.description})" for e in SECTIONS.entries())
            + "."
        )
    kind: SectionKind = SECTIONS.get(kind_name)
    allowed = {**COMMON_OPTIONS, **kind.options}
    where = f"report section {index} ({kind_name})"
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where} has no option {unknown[0]!r}. A {kind_name} section takes: "
            + "; ".join(f"{k} ({o.help})" for k, o in kind.options.items())
            + f"; and, like every section, {', '.join(COMMON_OPTIONS)}."
        )
    options: dict[str, Any] = {}
    for key, option in allowed.items():
        if key == "kind":
            continue
        if key not in section and option.required:
            raise ConfigError(f"{where} needs `{key}`: {option.help}.")
        default = option.default
        if key == "metric" and option.type == "metric" and default is None:
            default = settings["metric"]
        value = section.get(key, default)
        options[key] = checker.value(where, key, value, option) if key in section or value is not None else None
    if "baseline" not in section:
        options["baseline"] = settings["baseline"]
    if options["higher_is_better"] is None and options.get("metric") == settings["metric"]:
        options["higher_is_better"] = settings["higher_is_better"]
    options.update(ci=settings["ci"], alpha=float(settings["alpha"]), correction=settings["correction"])
    for key, option in kind.options.items():  # keys in `where` and `baseline` must be real columns too
        if option.type == "key" and options.get(key) is not None:
            checker.key(where, key, options[key])
    kind.check(where, options)
    name = options.pop("name") or _file_name(kind_name, options)
    if not _NAME.match(name):
        raise ConfigError(f"{where}: name {name!r} must be a file name of letters, digits and . _ + - (it names the section's files).")
    title = options.pop("title") or kind.default_title(options)
    return SectionSpec(kind_name, name, title, options)


def _file_name(kind: str, options: Mapping[str, Any]) -> str:
    metric = options.get("metric") or ""
    if kind == "scaling":
        return f"{metric}-vs-{options['x']}"
    return f"{kind}-{metric}" if metric else kind


def _unique(name: str, taken: set[str]) -> str:
    i = 2
    while f"{name}-{i}" in taken:
        i += 1
    return f"{name}-{i}"


class _Checker:
    """Checks option values against their declared type and the study's columns."""

    def __init__(self, study: Mapping[str, Any]):
        self.variants = dict(study.get("variants") or {})
        self.axes = {**(study.get("axes") or {}), **(study.get("zip") or {})}
        self.base = dict(study.get("base") or {})
        self.columns = sorted({*CONFIG_FIELDS, "effective_lr", *(["variant"] if self.variants else [])})
        self.tuned = bool(study.get("tune"))

    def key(self, where: str, option: str, value: Any) -> str:
        if not isinstance(value, str) or value not in self.columns:
            hint = " (the study has no variants)" if value == "variant" else ""
            raise ConfigError(
                f"{where}: `{option}` must name a column of the runs{hint}: a config field, `effective_lr`"
                f"{', or `variant`' if self.variants else ''}; got {value!r}. Columns: {', '.join(self.columns)}."
            )
        return value

    def known_values(self, key: str) -> list[Any] | None:
        """The values a column takes in this study, when the spec says (axes, variants)."""
        if key == "variant":
            return list(self.variants)
        values: list[Any] = list(self.axes.get(key, []))
        pinning = [v[key] for v in self.variants.values() if key in v]
        if not values and not pinning:
            return None
        if not values or len(pinning) < len(self.variants):
            values.append(self.base.get(key, CONFIG_FIELDS[key].default if key in CONFIG_FIELDS else None))
        for pinned in pinning:  # a variant fixes the value, or sweeps a list of them
            values += pinned if isinstance(pinned, list) else [pinned]
        return values

    def mapping(self, where: str, option: str, value: Any, many: bool) -> dict[str, Any]:
        """A `where` ({key: value or [values]}) or a `baseline` ({key: value}). A baseline's
        values must be ones the study has (a typo would silently compare with nothing); a
        `where` may name values a profile leaves out (the section then says it is empty)."""
        example = "{norm: bn}" if option == "baseline" else "{batch_size: [2, 64]}"
        if not isinstance(value, dict) or not value:
            raise ConfigError(f"{where}: `{option}` must map columns to values, e.g. {option}: {example}; got {value!r}.")
        out = {}
        for key, wanted in value.items():
            self.key(where, f"{option}.{key}", key)
            values = wanted if many and isinstance(wanted, list) else [wanted]
            if not many and isinstance(wanted, list):
                raise ConfigError(f"{where}: `{option}.{key}` names one configuration, so one value; got the list {wanted!r}.")
            known = self.known_values(key) if not many else None
            for v in values:
                if known is not None and v not in known:
                    raise ConfigError(
                        f"{where}: `{option}.{key}` is {v!r}, which no trial of this study has; "
                        f"{key} takes the values {', '.join(repr(k) for k in known)}."
                    )
            out[key] = list(values) if many else wanted
        return out

    def value(self, where: str, key: str, value: Any, option: Option) -> Any:
        if value is None:
            return None
        what = f"{where}: `{key}`"
        kind = option.type
        if kind == "text":
            if not isinstance(value, str):
                raise ConfigError(f"{what} must be a string ({option.help}); got {value!r}.")
            return value
        if kind == "key":
            return self.key(where, key, value)
        if kind == "keys":
            values = value if isinstance(value, list) else [value]
            if not values:
                raise ConfigError(f"{what} must name one or more columns; got an empty list.")
            return [self.key(where, key, v) for v in values]
        if kind in ("metric", "epoch-metric"):
            table = RUN_METRICS if kind == "metric" else EPOCH_METRICS
            if value not in table:
                per = "run metric (one number per trial)" if kind == "metric" else "per-epoch metric"
                raise ConfigError(f"{what} must be a {per}: {', '.join(table)}; got {value!r}.")
            return value
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{what} must be a number ({option.help}); got {value!r}.")
            return float(value)
        if kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int) or value < option.minimum:
                bound = "a positive integer" if option.minimum == 1 else f"an integer ≥ {option.minimum}"
                raise ConfigError(f"{what} must be {bound} ({option.help}); got {value!r}.")
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{what} must be true or false; got {value!r}.")
            return value
        if kind == "choice":
            if value not in option.choices:
                raise ConfigError(f"{what} must be one of {', '.join(str(c) for c in option.choices)} ({option.help}); got {value!r}.")
            return value
        if kind == "choices":
            values = value if isinstance(value, list) else [value]
            allowed = ", ".join(str(c) for c in option.choices)
            if not values:
                raise ConfigError(f"{what} must list one or more of {allowed} ({option.help}); got an empty list.")
            for v in values:
                if isinstance(v, (list, dict)) or v not in option.choices:
                    raise ConfigError(f"{what} must list some of {allowed} ({option.help}); got {v!r} in {value!r}.")
            if len(set(values)) < len(values):
                raise ConfigError(f"{what} names a value twice; got {value!r}.")
            return list(values)
        if kind == "where":
            return self.mapping(where, key, value, many=True)
        if kind == "baseline":
            return self.mapping(where, key, value, many=False)
        if kind == "references":
            return _references(what, value)
        raise AssertionError(kind)


REFERENCE_KEYS = ("source", "values", "metric", "higher_is_better", "columns", "note")


def _references(what: str, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise ConfigError(f"{what} must be a list of {{source, values, metric, columns, note}} mappings; got {value!r}.")
    for ref in value:
        extra = sorted(set(ref) - set(REFERENCE_KEYS))
        if extra or "values" not in ref or not isinstance(ref["values"], dict) or not isinstance(ref.get("source"), str) \
                or not ref["source"].strip():
            raise ConfigError(
                f"{what}: each reference has `source` (the paper, and its table or figure, the numbers come from: "
                f"required), `values` ({{row: value}} or {{row: {{column: value}}}}) and optionally `metric`, "
                f"`higher_is_better`, `columns`, `note`; got {ref!r}."
            )
    return [dict(r) for r in value]

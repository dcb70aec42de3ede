"""The registry of report section kinds.

A section kind is a pure builder, ``SectionInput → SectionOutput`` (markdown text, named
figures, exportable tables), plus the options a spec may give it. Registering one is a
decorator on its builder::

    @section_kind("pivot", "rows × columns table of a run metric", options={"rows": Option(...)})
    def pivot(section: SectionInput) -> SectionOutput: ...

The spec's ``report.sections`` are validated against these declarations (see
:mod:`bench.report.schema`), so a new kind is one module under ``bench/report/sections/``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.registry import Registry

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from bench.report.export import ExportTable

# What an option's value must be; checked by bench.report.schema.
OPTION_TYPES = (
    "text",  # a string
    "key",  # a column of the runs: a config field, `variant`, `effective_lr`
    "keys",  # a list of such columns (a single one is accepted)
    "metric",  # a run metric (one number per trial)
    "epoch-metric",  # a per-epoch metric
    "number",
    "integer",  # a positive integer
    "bool",
    "choice",  # one of `choices`
    "where",  # {key: value or [values]}
    "baseline",  # {key: value}, or null for no comparison
    "references",  # published numbers: [{source, values, metric?, columns?, note?}]
)


@dataclass(frozen=True)
class Option:
    help: str
    type: str
    default: Any = None
    choices: tuple[Any, ...] = ()
    required: bool = False

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise ValueError(f"option type {self.type!r} is not one of {OPTION_TYPES}")


@dataclass(frozen=True)
class SectionInput:
    """What a builder gets. ``runs`` has one row per trial of the study (trials never run
    included, status ``pending``), with a ``variant`` column when the study has variants,
    already restricted by the section's ``where``; ``epochs`` has one row per (run, epoch)
    of those runs (empty when no section asks for per-epoch data)."""

    study: Mapping[str, Any]  # the spec as a dict (StudySpec.to_dict())
    runs: pd.DataFrame
    epochs: pd.DataFrame
    options: Mapping[str, Any]  # validated, defaults filled in, report-level settings resolved
    title: str  # the section's heading
    files: str  # path stem of this section's files, relative to the report: "study/pivot-final_val_acc"


@dataclass
class SectionOutput:
    text: str  # markdown body (the report writes the heading and the links to the exported tables)
    figures: dict[str, Figure] = field(default_factory=dict)  # relative path (.png) → figure
    tables: dict[str, ExportTable] = field(default_factory=dict)  # relative path stem → table (.csv, .tex)


Builder = Callable[[SectionInput], SectionOutput]


@dataclass(frozen=True)
class SectionKind:
    build: Builder
    options: Mapping[str, Option]  # the options of this kind, beyond the common ones
    per_epoch: bool = False  # needs the per-epoch metrics
    default_title: Callable[[Mapping[str, Any]], str] = lambda options: ""
    check: Callable[[str, Mapping[str, Any]], None] = lambda where, options: None  # raises ConfigError


SECTIONS: Registry[SectionKind] = Registry("report section kind")


def section_kind(
    name: str,
    description: str,
    *,
    options: Mapping[str, Option],
    per_epoch: bool = False,
    title: Callable[[Mapping[str, Any]], str] = lambda options: "",
    check: Callable[[str, Mapping[str, Any]], None] = lambda where, options: None,
) -> Callable[[Builder], Builder]:
    """Registers ``build`` as the section kind ``name``: ``options`` it takes beyond the
    common ones, whether it reads per-epoch metrics, its default heading from its resolved
    options, and a ``check(where, options)`` of what the option types cannot say."""

    def deco(build: Builder) -> Builder:
        SECTIONS.register(name, description)(SectionKind(build, dict(options), per_epoch, title, check))
        return build

    return deco

"""The registry of report section kinds.

A section kind is a pure builder, ``SectionInput → SectionOutput`` (markdown text, named
figures, exportable tables), plus the options a spec may give it. Registering one is a
decorator on its builder::

    @section_kind("pivot", "rows × columns table of a run metric", options={"rows": Option(...)})
    def pivot(section: SectionInput) -> SectionOutput: ...

A kind that reads the per-epoch metrics says ``per_epoch=True`` (the ``curves`` and
``time-to-accuracy`` kinds); one that reads the per-step records of runs trained with
``log_steps: true`` says ``per_step=True`` (the ``stability`` kind). The writer fetches
those from the store only when a section of the report needs them.

The kinds: ``pivot``, ``scaling``, ``curves``, ``ranking``, ``time-to-accuracy``,
``stability`` and ``lr-schedule``, one module each under ``bench/report/sections/``.

The spec's ``report.sections`` are validated against these declarations (see
:mod:`bench.report.schema`), so a new kind is one module under ``bench/report/sections/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.errors import ConfigError, UnknownNameError

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
    "integer",  # an integer ≥ the option's `minimum` (1 unless it says: a positive integer)
    "bool",
    "choice",  # one of `choices`
    "choices",  # a list of `choices` (a single one is accepted), each at most once
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
    minimum: int = 1  # the smallest value of an `integer` (0 for a seed or a count that may be none)

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise ValueError(f"option type {self.type!r} is not one of {OPTION_TYPES}")


def _no_steps() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(columns=["run_id", "step"])


@dataclass(frozen=True)
class SectionInput:
    """What a builder gets. ``runs`` has one row per trial of the study (trials never run
    included, status ``pending``), with a ``variant`` column when the study has variants,
    already restricted by the section's ``where``; ``epochs`` has one row per (run, epoch)
    of those runs (empty when no section asks for per-epoch data); ``steps`` has one row
    per (run, optimizer step) of those runs (:func:`bench.store.steps.steps_frame`:
    ``run_id``, ``step``, ``epoch``, ``loss``, ``acc``, ``grad_norm``,
    ``first_grad_norm``, ``lr``), empty unless the section's kind is ``per_step``."""

    study: Mapping[str, Any]  # the spec as a dict (StudySpec.to_dict())
    runs: pd.DataFrame
    epochs: pd.DataFrame
    options: Mapping[str, Any]  # validated, defaults filled in, report-level settings resolved
    title: str  # the section's heading
    files: str  # path stem of this section's files, relative to the report: "study/pivot-final_val_acc"
    steps: pd.DataFrame = field(default_factory=_no_steps)  # last, so positional call sites keep working


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
    per_step: bool = False  # needs the per-step records (runs trained with log_steps)


@dataclass(frozen=True)
class KindEntry:
    name: str
    factory: SectionKind
    description: str


class SectionKinds:
    """Name → :class:`SectionKind`, in registration order. (The zoo's registries,
    :mod:`bench.zoo.registry`, are for techniques with declared trial options; section
    kinds have their own :class:`Option` records and need none of that.)"""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, KindEntry] = {}

    def register(self, name: str, description: str) -> Callable[[SectionKind], SectionKind]:
        def deco(section: SectionKind) -> SectionKind:
            if name in self._entries:
                raise ConfigError(f"The {self.kind} {name!r} is already registered; give yours another name.")
            self._entries[name] = KindEntry(name, section, description)
            return section

        return deco

    def entry(self, name: str) -> KindEntry:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.kind, name, self._entries) from None

    def get(self, name: str) -> SectionKind:
        return self.entry(name).factory

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[KindEntry]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


SECTIONS = SectionKinds("report section kind")


def section_kind(
    name: str,
    description: str,
    *,
    options: Mapping[str, Option],
    per_epoch: bool = False,
    title: Callable[[Mapping[str, Any]], str] = lambda options: "",
    check: Callable[[str, Mapping[str, Any]], None] = lambda where, options: None,
    per_step: bool = False,
) -> Callable[[Builder], Builder]:
    """Registers ``build`` as the section kind ``name``: ``options`` it takes beyond the
    common ones, whether it reads per-epoch metrics or per-step records, its default
    heading from its resolved options, and a ``check(where, options)`` of what the option
    types cannot say."""

    def deco(build: Builder) -> Builder:
        SECTIONS.register(name, description)(SectionKind(build, dict(options), per_epoch, title, check, per_step))
        return build

    return deco

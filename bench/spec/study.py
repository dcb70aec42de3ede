"""Study specifications: a YAML file in ``ablations/`` (data, not code) → trial configs.

::

    name: norm-vs-batch
    description: ...
    base: {arch: cnn, lr: 0.02, lr_scaling: linear, lr_base_batch: 32, ...}
    axes: {norm: [bn, gn, ln, in, none], batch_size: [2, 4, 8, 16, 32, 64]}
    zip: {norm_groups: [...], width: [...]}      # optional: lists that vary together
    variants: {gn+ws: {norm: gn, conv: ws}, ...}  # optional: named combinations, crossed with the axes
    repeats: 3                                   # seeds 0, 1, 2 (or `seeds: [..]`)
    report: {kind: pivot, rows: norm, columns: batch_size, metric: final_val_acc}
    profiles: {quick: {base: {...}, axes: {...}, repeats: 1}}

``expand()`` yields variants × the cartesian product of the axes × the zipped values ×
the seeds, each validated before anything runs. Precedence, lowest first: base, axes and
zip, the variant (a variant may pin an axis: a "BN at batch 32" reference row), then the
command-line overrides. An option that no trial of the study reads (``adax_beta2`` in a
study of SGD runs) is an error: it would change nothing while looking as if it did. The
report block is checked by the reports (:func:`bench.report.schema.check_study`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.errors import ConfigError, UnknownNameError
from bench.spec.config import OPTIONS, TrialConfig, check_keys, from_mapping, readers_of


# -- studies ----------------------------------------------------------------------------

SPEC_KEYS = (
    "name", "description", "plugins", "base", "variants", "axes", "zip", "repeats", "seeds", "tune", "report", "profiles",
)
PROFILE_KEYS = ("description", "base", "variants", "axes", "zip", "repeats", "seeds", "tune", "report")
TUNE_KEYS = ("over", "metric", "seeds", "higher_is_better")


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    base: Mapping[str, Any]
    axes: Mapping[str, list[Any]]
    zip: Mapping[str, list[Any]] = field(default_factory=dict)
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    report: Mapping[str, Any] = field(default_factory=dict)
    tune: Mapping[str, Any] = field(default_factory=dict)
    profile: str = "default"
    profiles: tuple[str, ...] = ()
    source: str = ""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()  # as the spec names them (relative to its directory)

    @property
    def key(self) -> str:
        """The study's name plus its profile: what reports and the store call it."""
        return self.name if self.profile == "default" else f"{self.name}@{self.profile}"

    def expand(self) -> list[TrialConfig]:
        """Every trial of the study, validated, in a stable order (variants, axes as
        written, zipped values, seeds); duplicates removed."""
        return list(self.labelled().values())

    def labelled(self) -> dict[str, TrialConfig]:
        """Trial id → config, in expansion order; :meth:`variant_of` names each trial's variant."""
        return {config.trial_id: config for _, config in self._expand()}

    def labelled_pairs(self) -> list[tuple[str, TrialConfig]]:
        """(variant name, config) of each distinct trial, in expansion order."""
        seen: set[str] = set()
        out = []
        for name, config in self._expand():
            if config.trial_id not in seen:
                seen.add(config.trial_id)
                out.append((name, config))
        return out

    def variant_of(self) -> dict[str, str]:
        """Trial id → the name of the variant it belongs to (empty without variants)."""
        labels: dict[str, str] = {}
        for name, config in self._expand():
            labels.setdefault(config.trial_id, name)
        return labels

    def _expand(self) -> list[tuple[str, TrialConfig]]:
        axis_names = list(self.axes)
        zip_names = list(self.zip)
        zipped = list(zip(*self.zip.values())) if self.zip else [()]
        variants = self.variants or {"": {}}
        seeds = [OPTIONS["seed"].coerce(seed) for seed in self.seeds]  # checked once, not per configuration
        out: list[tuple[str, TrialConfig]] = []
        for name, variant in variants.items():
            fixed = {k: v for k, v in variant.items() if not is_sweep(k, v)}
            swept = {k: v for k, v in variant.items() if is_sweep(k, v)}
            for sweep in itertools.product(*swept.values()):
                for combo in itertools.product(*(self.axes[a] for a in axis_names)):
                    for zvalues in zipped:
                        values = {
                            **self.base, **dict(zip(axis_names, combo)), **dict(zip(zip_names, zvalues)), **fixed,
                            **dict(zip(swept, sweep)), **self.overrides, "seed": self.seeds[0],
                        }
                        where = f"study {self.key!r}" + (f", variant {name!r}" if name else "")
                        first = _with_context(values, where)  # validated once; the other seeds copy it
                        canonical = first.canonical() if len(self.seeds) > 1 else None
                        out += [
                            (name, first if i == 0 else first.with_seed(seed, canonical, checked=True))
                            for i, seed in enumerate(seeds)
                        ]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "profile": self.profile,
            "description": self.description,
            "base": dict(self.base),
            "axes": {k: list(v) for k, v in self.axes.items()},
            "zip": {k: list(v) for k, v in self.zip.items()},
            "variants": {k: dict(v) for k, v in self.variants.items()},
            "seeds": list(self.seeds),
            "report": dict(self.report),
            **({"tune": dict(self.tune)} if self.tune else {}),
            "overrides": dict(self.overrides),
            "source": self.source,
            **({"plugins": list(self.plugins)} if self.plugins else {}),
        }

    @property
    def spec_hash(self) -> str:
        doc = {k: v for k, v in self.to_dict().items() if k != "source"}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]


def is_sweep(key: str, value: Any) -> bool:
    """A variant value that is a list of values (a list of lists for list-typed fields such
    as lr_milestones) is swept for that variant only: ``{optimizer: sgd, lr: [0.01, 0.1]}``."""
    if not isinstance(value, list):
        return False
    option = OPTIONS.get(key)
    if option is not None and option.type is tuple:
        return bool(value) and all(isinstance(v, list) for v in value)
    return True


def _with_context(values: Mapping[str, Any], where: str) -> TrialConfig:
    try:
        return from_mapping(values)
    except ConfigError as exc:
        raise type(exc)(f"In {where}: {exc}") if not isinstance(exc, UnknownNameError) else exc


def _check_keys(doc: Mapping[str, Any], allowed: Iterable[str], what: str) -> None:
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise UnknownNameError(f"{what} key", unknown[0], allowed)


def _as_list(axis: str, values: Any) -> list[Any]:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"Axis {axis!r} must be a non-empty list of values; got {values!r}.")
    return values


def load_spec(
    source: str | Path, *, profile: str | None = None, overrides: Mapping[str, Any] | None = None, search: Path | None = None
) -> StudySpec:
    """Load a study by name (``ablations/NAME.yaml``) or path, apply a profile and
    command-line overrides. An override of an axis fixes that axis to the one value."""
    path = resolve_spec_path(source, search)
    doc = _read_doc(path)
    _check_keys(doc, SPEC_KEYS, "study spec")
    name = _study_name(doc, path)
    plugins = _load_plugins(doc.get("plugins"), path)
    profiles = _mapping(doc, "profiles", path, "profiles: {quick: {base: {epochs: 1}}}")
    profile = profile or "default"
    if profile != "default":
        if profile not in profiles:
            valid = ", ".join(["default", *profiles]) or "default"
            raise ConfigError(f"Study {name!r} has no profile {profile!r}. Profiles: {valid}.")
        prof = _mapping(profiles, profile, path, f"profiles: {{{profile}: {{base: {{epochs: 1}}}}}}", "profile")
        _check_keys(prof, PROFILE_KEYS, f"profile {profile!r}")
    else:
        prof = {}
    parts = [(doc, "spec"), (prof, f"profile {profile!r}")]
    base, axes, report = ({k: v for part, _ in parts for k, v in _mapping(part, key, path, example).items()}
                          for key, example in (("base", "base: {arch: cnn, lr: 0.05}"),
                                               ("axes", "axes: {norm: [bn, gn], batch_size: [8, 32]}"),
                                               ("report", "report: {kind: pivot, rows: norm, columns: batch_size}")))
    zipped = _mapping(prof if "zip" in prof else doc, "zip", path, "zip: {norm_groups: [8, 16], width: [16, 32]}")
    variants = _mapping(prof if "variants" in prof else doc, "variants", path, "variants: {gn+ws: {norm: gn, conv: ws}}")
    check_keys(base, "base config key")
    check_keys(axes, "axis key")
    check_keys(zipped, "zip key")
    check_keys(overrides or {}, "--set key")
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise ConfigError("variants must map a name to config values, e.g. variants: {gn+ws: {norm: gn, conv: ws}}.")
    for variant, values in variants.items():
        check_keys(values, f"variant {variant!r} key")
        for key, value in values.items():
            if is_sweep(key, value) and not value:
                raise ConfigError(f"Variant {variant!r} sweeps {key} over an empty list; give at least one value.")
    tune = _tune(prof.get("tune", doc.get("tune")) or {}, variants, axes)
    axes = {k: _as_list(k, v) for k, v in axes.items()}
    zipped = {k: _as_list(k, v) for k, v in zipped.items()}
    if len({len(v) for v in zipped.values()}) > 1:
        raise ConfigError(f"All zip lists must have the same length; got {({k: len(v) for k, v in zipped.items()})}.")
    overrides = dict(overrides or {})
    for key, value in overrides.items():  # an override fixes an axis to its one value
        axes.pop(key, None)
        zipped.pop(key, None)
        base[key] = value
    seeds = _seeds(prof if ("repeats" in prof or "seeds" in prof) else doc)
    if "seed" in overrides:
        seeds = (OPTIONS["seed"].coerce(overrides["seed"]),)
    spec = StudySpec(
        name=name,
        description=str(prof.get("description") or doc.get("description") or ""),
        base=base,
        axes=axes,
        zip=zipped,
        variants={str(k): dict(v) for k, v in variants.items()},
        seeds=seeds,
        report=report,
        tune=tune,
        profile=profile,
        profiles=tuple(profiles),
        source=str(path),
        overrides=overrides,
        plugins=plugins,
    )
    check_size(spec)
    check_options_read(spec)
    return spec


def _read_doc(path: Path) -> dict[str, Any]:
    """The spec file's top-level mapping: UTF-8 YAML, not empty."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        utf16 = raw[:2] in (b"\xff\xfe", b"\xfe\xff")
        raise ConfigError(
            f"{path} is not UTF-8 text{' (it is UTF-16, as some Windows editors save)' if utf16 else ''}: byte "
            f"{exc.start} cannot be read. Save the spec as UTF-8 and run again."
        ) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if doc is None:
        raise ConfigError(f"{path} is empty: a study spec needs at least a name and axes or variants, e.g. "
                          "name: my-study, axes: {norm: [bn, gn]}.")
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} must hold a mapping with keys {', '.join(SPEC_KEYS)}.")
    return doc


def _study_name(doc: Mapping[str, Any], path: Path) -> str:
    """The spec's ``name`` (a non-empty string), else the file's stem."""
    name = doc.get("name", path.stem)
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        name = str(name)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"In {path}: name must be one non-empty string (the study's name in the store); got {name!r}.")
    return name


def _mapping(doc: Mapping[str, Any], key: str, path: Path, example: str, what: str = "") -> dict[str, Any]:
    """``doc[key]`` when it is a mapping (absent or empty: ``{}``); else a :class:`ConfigError`."""
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(
            f"In {path}: {what or key}{' ' + repr(key) if what else ''} must be a mapping of names to values, e.g. "
            f"{example}; got {type(value).__name__} {value!r}."
        )
    return value


MAX_TRIALS = 100_000
"""Trials a study may have unless ``$BENCH_MAX_TRIALS`` allows more: a bigger grid is
almost always a mistake (a list where one value was meant), and expanding it takes minutes."""


def max_trials() -> int:
    """``$BENCH_MAX_TRIALS``, else :data:`MAX_TRIALS`."""
    raw = os.environ.get("BENCH_MAX_TRIALS", "").strip()
    if not raw:
        return MAX_TRIALS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"BENCH_MAX_TRIALS must be a positive whole number of trials; got {raw!r}.")
    return value


def trial_count(spec: StudySpec) -> int:
    """How many trials the study expands to, counted without expanding (before duplicates
    are removed): per variant, its swept values × the axes × the zipped values × the seeds."""
    per_variant = [math.prod(len(v) for k, v in values.items() if is_sweep(k, v)) for values in (spec.variants or {"": {}}).values()]
    zipped = len(next(iter(spec.zip.values()))) if spec.zip else 1
    return sum(per_variant) * math.prod(len(v) for v in spec.axes.values()) * zipped * len(spec.seeds)


def check_size(spec: StudySpec) -> int:
    """The trial count; a study larger than :func:`max_trials` is refused before it is expanded."""
    count, limit = trial_count(spec), max_trials()
    if count > limit:
        axes = " × ".join(f"{k} {len(v)}" for k, v in spec.axes.items()) or "no axes"
        raise ConfigError(
            f"Study {spec.key!r} has {count:,} trials ({axes}, {len(spec.seeds)} seed(s)"
            f"{f', {len(spec.variants)} variants' if spec.variants else ''}), more than the limit of {limit:,}. Shorten "
            "an axis, or set BENCH_MAX_TRIALS to a larger number if you mean to run that many."
        )
    return count


def _load_plugins(refs: Any, path: Path) -> tuple[str, ...]:
    """Imports the spec's ``plugins`` (paths relative to the spec's directory, or module
    names); returns how each was named."""
    if refs is None:
        return ()
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise ConfigError(f"plugins must be a list of .py files, package directories or module names; got {refs!r}.")
    from bench.zoo.plugins import load_plugins

    load_plugins(refs, base=path.parent, origin=f"study spec {path.name}")
    return tuple(refs)


def check_options_read(spec: StudySpec) -> None:
    """Refuses an option set in the study that none of the trials it applies to reads:
    the base, axes, zip and overrides apply to every trial, a variant's values to its own."""
    pairs = spec._expand()
    everywhere = {**spec.base, **spec.axes, **spec.zip, **spec.overrides}
    scopes = [("", list(everywhere), [c for _, c in pairs])]
    scopes += [(name, list(values), [c for v, c in pairs if v == name]) for name, values in spec.variants.items()]
    for variant, keys, configs in scopes:
        read = set().union(*(c.reads() for c in configs)) if configs else set(OPTIONS)
        for key in keys:
            if key not in read:
                where = f"variant {variant!r} of study {spec.key!r}" if variant else f"study {spec.key!r}"
                raise ConfigError(f"In {where}: {does_nothing(key, configs)}")


def does_nothing(key: str, configs: list[TrialConfig]) -> str:
    """Why ``key`` is inert for ``configs``: which choices read it, which ones they use."""
    readers = readers_of(key)
    option = OPTIONS.get(key)
    switch = [option.condition()] if option is not None and option.when and option.condition() not in readers else []
    fields = sorted({f for f, _ in readers + switch})
    def shown(value: Any) -> str:
        return "null" if value is None else str(value)  # as YAML spells it (activation: null)

    used = ", ".join(f"{f}={'/'.join(sorted({shown(getattr(c, f)) for c in configs}))}" for f in fields)
    wanted = ", ".join(_reading(f, v) for f, v in readers) or "no choice"
    wanted += "".join(f", and then only with {_reading(f, v)}" for f, v in switch)
    return (f"`{key}` does nothing for {used or 'these trials'}: it is read only with {wanted}. Remove it, or choose "
            "what reads it.")


def _reading(field: str, value: Any) -> str:
    """A choice that reads an option: ``norm=gn``, ``lawn=True``; a number switching it on
    (an option's ``when``) as ``ema_decay > 0``."""
    option = OPTIONS.get(field)
    if value is True and option is not None and option.type in (int, float):
        return f"{field} > 0"
    return f"{field}={value}"


def _tune(tune: Any, variants: Mapping[str, Any], axes: Mapping[str, Any]) -> dict[str, Any]:
    """Validates a ``tune`` block: for each configuration (everything but ``over`` and the
    seed), the value of the swept field ``over`` with the best mean ``metric`` over the
    first seeds is re-run with the extra ``seeds`` (the DeepOBS protocol)."""
    if not tune:
        return {}
    if not isinstance(tune, dict):
        raise ConfigError(f"tune must be a mapping with keys {', '.join(TUNE_KEYS)}; got {tune!r}.")
    _check_keys(tune, TUNE_KEYS, "tune")
    missing = [k for k in ("over", "seeds") if k not in tune]
    if missing:
        raise ConfigError(
            f"tune needs {' and '.join(missing)}: e.g. tune: {{over: lr, metric: final_val_acc, seeds: [1, 2]}}."
        )
    over = tune["over"]
    swept = {k for v in variants.values() for k, val in v.items() if is_sweep(k, val)} | set(axes)
    if over not in swept:
        raise ConfigError(
            f"tune.over={over!r} must be a field the study sweeps (an axis, or a list in a variant); swept: "
            f"{', '.join(sorted(swept)) or 'none'}."
        )
    seeds = tune["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
        raise ConfigError(f"tune.seeds must be a non-empty list of integers; got {seeds!r}.")
    return {"over": over, "metric": tune.get("metric", "final_val_acc"), "seeds": list(seeds),
            "higher_is_better": bool(tune.get("higher_is_better", True))}


def _seeds(doc: Mapping[str, Any]) -> tuple[int, ...]:
    if "seeds" in doc:
        seeds = doc["seeds"]
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise ConfigError(f"seeds must be a non-empty list of integers; got {seeds!r}.")
        return tuple(seeds)
    repeats = doc.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ConfigError(f"repeats must be a positive integer (the number of seeds); got {repeats!r}.")
    return tuple(range(repeats))


def _shipped_studies() -> Path:
    """The studies that ship with bench: ``bench/studies`` in an installed package (the
    repository's ``ablations/``, mapped into the wheel as package data), the repository's
    ``ablations/`` itself when bench runs from a checkout or an editable install."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "studies"
    return installed if installed.is_dir() else package.parent / "ablations"


def _study_dirs(search: Path | None = None) -> list[Path]:
    """Where a study name is looked up, first match first: ``search`` alone when given,
    else ``./ablations`` of the current directory (a user's project, or the checkout), then
    the shipped studies."""
    if search is not None:
        return [search]
    local, shipped = Path("ablations"), _shipped_studies()
    if not local.is_dir():
        return [shipped]
    return [local] if local.resolve() == shipped.resolve() else [local, shipped]


def default_ablations_dir() -> Path:
    """The first directory a study name is looked up in: ``./ablations`` when it exists,
    else the studies shipped with the package."""
    return _study_dirs()[0]


def list_specs(search: Path | None = None) -> list[Path]:
    """Every study's spec file, by name; a study in ``./ablations`` hides a shipped study
    of the same name."""
    found: dict[str, Path] = {}
    for directory in reversed(_study_dirs(search)):
        found.update({path.stem: path for path in directory.glob("*.yaml")})
    return [found[name] for name in sorted(found)]


def resolve_spec_path(source: str | Path, search: Path | None = None) -> Path:
    """A spec file given as a path, else the study of that name (see :func:`_study_dirs`)."""
    text = str(source)
    candidate = Path(text)
    if text.endswith((".yaml", ".yml")) or candidate.is_file():
        if not candidate.is_file():
            raise ConfigError(f"Study spec file {text!r} does not exist.")
        return candidate
    directories = _study_dirs(search)
    for directory in directories:
        path = directory / f"{text}.yaml"
        if path.is_file():
            return path
    names = [p.stem for p in list_specs(search)]
    looked = " and ".join(f"{directory}/" for directory in directories)
    raise UnknownNameError("study", text, names, hint=f"(looked in {looked}; pass a path to a .yaml file to run your own spec)")

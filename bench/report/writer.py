"""Builds a study's report from the store alone and writes it to disk: the markdown, its
figures (PNG) and its tables (CSV and LaTeX) in ``reports/<study>/``. The store is only
read: the runs always, their per-epoch metrics when a section kind is ``per_epoch``, their
per-step records when one is ``per_step`` (only those of the trials such sections show)."""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.provenance import utcnow
from bench.grid.tuning import study_trials
from bench.report.export import to_csv, to_latex
from bench.report.frame import runs_frame, store_metrics_frame, store_runs_frame, with_outcome
from bench.report.kinds import SECTIONS
from bench.report.markdown import build_report, revision, section_runs
from bench.report.schema import parse_report
from bench.spec import StudySpec
from bench.store.base import runs_by_id
from bench.store.steps import steps_frame

if TYPE_CHECKING:
    from bench.store import ResultStore

GENERATED = (".png", ".csv", ".tex")  # what a report build writes into its folder
RUNS_FILE = "results.jsonl.gz"  # an export of the study's runs kept beside its report (`bench store export --study`)


def report_path(spec: StudySpec, reports_dir: str | Path = "reports") -> Path:
    """``reports/<study>.md`` for the default profile; other profiles get their own
    file (``reports/<study>-<profile>.md``) so a quick demo never overwrites a full run."""
    name = spec.name if spec.profile == "default" else f"{spec.name}-{spec.profile}"
    return Path(reports_dir) / f"{name}.md"


def _summarize(values: Iterable[tuple[str, int]]) -> str:
    """``(text, runs)`` pairs as one line: each text with its number of runs, the most first."""
    counts: Counter[str] = Counter()
    for value, runs in values:
        if value:
            counts[value] += runs
    return "; ".join(f"{v} ({n} runs)" if len(counts) > 1 else v for v, n in counts.most_common())


def _distinct(envs: Iterable[Any]) -> list[tuple[Any, int]]:
    """Each distinct environment object with its number of runs, in order of first run: a
    study's runs share a few (the stores hand back one object per distinct environment), so
    what the footer says of them is worked out once each, not 100,000 times."""
    counted: dict[int, list[Any]] = {}
    for env in envs:
        entry = counted.get(id(env))
        if entry is None:
            counted[id(env)] = [env, 1]
        else:
            entry[1] += 1
    return [(env, runs) for env, runs in counted.values()]


def _libraries() -> str:
    versions = []
    for package in ("pandas", "scipy", "matplotlib"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return "report built with " + ", ".join(versions)


def code_provenance(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the footer says of the code behind the runs: ``revisions`` (each commit and
    dirty flag with its number of runs), ``run_code`` (run id → code fingerprints) and
    ``run_revision`` (run id → revision, what tells apart runs without fingerprints), from which
    :func:`bench.report.markdown.code_mix` flags a table made by several code versions."""
    read: dict[int, tuple[str, dict[str, Any] | None]] = {}  # per distinct environment: its revision and fingerprints
    for env, _ in _distinct(r.get("env") for r in runs):
        if isinstance(env, Mapping) and env:
            code = env.get("code")
            read[id(env)] = (revision(env), dict(code) if isinstance(code, Mapping) and code else None)
    envs = {r["_id"]: env for r in runs if id(env := r.get("env")) in read}
    counts = Counter(read[id(env)][0] for env in envs.values())
    return {
        "revisions": ", ".join(f"{label} ({n} run{'s' if n != 1 else ''})" for label, n in counts.most_common()),
        "run_code": {rid: read[id(env)][1] for rid, env in envs.items() if read[id(env)][1] is not None},  # shared, read only
        "run_revision": {rid: read[id(env)][0] for rid, env in envs.items() if env.get("git_commit")},
    }


def report_flags(overrides: Mapping[str, Any]) -> str:
    """The command-line flags that give these report settings."""
    return " ".join(f"--{k} {shlex.quote(str(v))}" for k, v in overrides.items() if v is not None)


def grid_record(study: Mapping[str, Any], spec: StudySpec) -> dict[str, Any] | None:
    """The newest grid recorded with the study (:func:`bench.grid.run.record_grid`) that ran
    this profile with these ``--set`` overrides: what made the report's trials. A study
    document from before grids were recorded has its last command only (``command``),
    given as it is. None when nothing was recorded: a report never makes one up."""
    for grid in reversed(study.get("grids") or []):
        if grid.get("profile", "default") == spec.profile and dict(grid.get("overrides") or {}) == dict(spec.overrides):
            return dict(grid)
    if study.get("command"):
        return {"command": study["command"], "legacy": True}
    return None


def spec_argument(spec: StudySpec) -> str:
    """How to name the spec on a command line: its name when that finds this very file
    (a shipped or ``./ablations/`` study), else the path it was loaded from."""
    from bench.spec.study import resolve_spec_path

    try:
        if resolve_spec_path(spec.name).resolve() == Path(spec.source).resolve():
            return spec.name
    except BenchError:
        pass
    return spec.source


def write_report(
    spec: StudySpec,
    store: ResultStore,
    reports_dir: str | Path = "reports",
    *,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Reads the study's trials from the store (by the ids its spec expands to) and their
    per-epoch metrics and per-step records when a section needs them, writes ``<reports_dir>/<study>.md`` and
    its figures and tables beside it. ``overrides``: report settings (``ci``, ``alpha``,
    ``correction``) replacing the spec's. A store that holds none of the study's runs
    does not replace an existing report (:func:`refuse_empty_rewrite`), unless ``force``."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    study = spec.to_dict()
    sections = parse_report(study["report"], study, overrides=overrides).sections  # fail before reading anything
    # the expansion, plus the tuned re-runs the store's results already determine
    labelled: dict[str, tuple[str, Any]] = {}  # trial id → (variant, config), the first label of a shared trial
    for variant, config in study_trials(spec, store):
        labelled.setdefault(config.trial_id, (variant, config))
    ids = list(labelled)
    runs, found, frame = _stored_trials(store, ids, labelled)
    if not found and not force:
        refuse_empty_rewrite(spec, store, reports_dir, len(ids))
    if spec.variants:
        frame["variant"] = frame["run_id"].map({tid: variant for tid, (variant, _) in labelled.items()})
    epochs = None
    # find_metrics and find_steps split long id lists into queries themselves
    if any(SECTIONS.get(s.kind).per_epoch for s in sections):
        epochs = store_metrics_frame(store, [i for i in ids if i in found])
    steps = None
    stepwise = [s for s in sections if SECTIONS.get(s.kind).per_step]
    if stepwise:
        # only the stored trials the per-step sections show (a `where` may keep a few of many)
        wanted: set[str] = set()
        for s in stepwise:
            wanted.update(section_runs(frame, s.options.get("where"))["run_id"])
        steps = steps_frame(store.find_steps([i for i in ids if i in found and i in wanted]))
    none: dict[str, Any] = {}
    envs = _distinct(r.get("env") or none for r in runs)
    stored_study = store.get_study(spec.key) or {}
    versions = _summarize(
        (f"bench {e.get('bench')}, torch {e.get('torch')}, torchvision {e.get('torchvision')}"
         + (f", timm {e['timm']}" if e.get("timm") else "") + f", ray {e.get('ray')}, python {e.get('python')}", n) for e, n in envs if e
    )
    sets = " ".join(f"--set {shlex.quote(f'{k}={v}')}" for k, v in spec.overrides.items())
    profile = "" if spec.profile == "default" else f" --profile {spec.profile}"
    grid = grid_record(stored_study, spec)
    provenance: dict[str, Any] = {
        "date": utcnow(),
        "store": f"{store.kind} {store.location}",
        "grid": grid,
        "report_command": " ".join(
            p for p in (f"bench report {shlex.quote(spec_argument(spec))}{profile}", sets, report_flags(overrides)) if p
        ),
        "spec_hash": spec.spec_hash,
        "grid_spec_hash": (grid or {}).get("spec_hash") or stored_study.get("spec_hash"),
        "report_libraries": _libraries(),
        "devices": _summarize((e.get("device", ""), n) for e, n in envs),
        "versions": versions,
        "hosts": _summarize((e.get("host", ""), n) for e, n in envs),
        **code_provenance(runs),
    }
    runs_file = report_path(spec, reports_dir).with_suffix("") / RUNS_FILE
    if runs_file.is_file():
        provenance["runs_file"] = f"{runs_file.parent.name}/{RUNS_FILE}"
    report = build_report(study, frame, provenance, epochs, steps=steps, overrides=overrides)
    path = report_path(spec, reports_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    written: set[Path] = set()
    for name, figure in report.figures.items():
        target = path.parent / name
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target)
        written.add(target)
    for stem, table in report.tables.items():
        target = path.parent / stem
        target.parent.mkdir(parents=True, exist_ok=True)
        target.with_name(target.name + ".csv").write_text(to_csv(table))
        written.add(target.with_name(target.name + ".csv"))
        latex = to_latex(table)
        if latex is not None:
            target.with_name(target.name + ".tex").write_text(latex)
            written.add(target.with_name(target.name + ".tex"))
    _remove_stale(path.with_suffix(""), written)
    path.write_text(report.text)
    return path


def _stored_trials(store: ResultStore, ids: list[str], labelled: Mapping[str, tuple[str, Any]]) -> tuple[list[dict[str, Any]], set[str], Any]:
    """``({_id, env} of the stored trials, their ids, the runs frame)``: trials never started
    still count, as ``pending`` rows after the stored ones ("not run" in their cell)."""
    if hasattr(store, "runs_frame"):  # one read: the runs, their environments, and the trials not stored

        def pending(found: set[str]) -> list[dict[str, Any]]:
            return [{"_id": tid, "status": "pending", "config": labelled[tid][1].to_dict()} for tid in ids if tid not in found]

        frame, envs = store.runs_frame(ids=ids, extra=pending, envs=True)
        runs = [{"_id": run_id, "env": env} if env is not None else {"_id": run_id} for run_id, env in envs]
        return runs, {r["_id"] for r in runs}, with_outcome(frame)
    for _ in range(3):  # a trial a running grid stores between the two reads: read again
        runs = _run_envs(store, ids)
        found = {r["_id"] for r in runs}
        pending = [{"_id": tid, "status": "pending", "config": labelled[tid][1].to_dict()} for tid in ids if tid not in found]
        frame = store_runs_frame(store, ids=ids, extra=pending)
        if len(frame) == len(found) + len(pending) and not frame["run_id"].duplicated().any():
            break
    else:
        stored = runs_by_id(store, ids)
        runs = [{"_id": r["_id"], **({"env": r["env"]} if "env" in r else {})} for r in stored]
        found = {r["_id"] for r in runs}
        pending = [{"_id": tid, "status": "pending", "config": labelled[tid][1].to_dict()} for tid in ids if tid not in found]
        frame = runs_frame([*stored, *pending])
    return runs, found, frame


def _run_envs(store: ResultStore, ids: list[str]) -> list[dict[str, Any]]:
    """``{"_id", "env"}`` of the stored runs among ``ids``, in :func:`runs_by_id`'s order
    (only the environments are decoded where the store can)."""
    if hasattr(store, "run_envs"):
        return [{"_id": run_id, "env": env} if env is not None else {"_id": run_id} for run_id, env in store.run_envs(ids)]
    return [{"_id": run["_id"], **({"env": run["env"]} if "env" in run else {})} for run in runs_by_id(store, ids)]


def refuse_empty_rewrite(spec: StudySpec, store: ResultStore, reports_dir: str | Path, runs: int) -> None:
    """Raises when the study's report exists: a store without any of the study's runs (the
    wrong store, an empty file) would replace it with "not run" cells and delete its figures."""
    path = report_path(spec, reports_dir)
    if path.exists():
        raise BenchError(
            f"The store {store.kind} {store.location} holds none of the {runs} runs of "
            f"{spec.key}, and its report {path} exists: rebuilding it would replace every result with "
            "\"not run\" and delete its figures and tables. Point --store (or BENCH_STORE / BENCH_MONGO_URI) "
            "at the store that holds the runs, or pass --force to rewrite the report anyway."
        )


def _remove_stale(folder: Path, written: set[Path]) -> None:
    """Figures and tables in the report's own folder that this build did not write are
    left from sections the spec no longer has: removed, so the folder matches the report.
    Other files (the export of the runs, anything a user put there) are kept."""
    if not folder.is_dir():
        return
    for file in folder.iterdir():
        if file.is_file() and file.suffix in GENERATED and file not in written:
            file.unlink()

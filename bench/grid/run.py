"""Running a study: plan its grid, run what is not done, record results as they come.

The plan (:mod:`bench.grid.planning`) decides which trials to run; the rest go to an
executor, and a :class:`~bench.grid.recorder.Recorder` writes each event to the store as
it happens. Executors:

- ``ray`` (default): Ray Tune, one trial per config, side by side with the resources
  asked per trial; every Ray call lives in :mod:`bench.grid.ray_executor` and
  :mod:`bench.grid.cluster`, the adapters to Ray's often-changing API.
- ``local``: the trials one after another in this process (debugging, tests).
- ``docker``: each trial in its own container of a declared image, on the Docker SDK
  (:mod:`bench.grid.docker_executor`); the container writes its trial's metrics to the
  store under the driver's claim.

Re-running the same study after Ctrl-C or a crash runs only what is not finished, and
what finished with other code or data than now (:func:`provenance_notes` says which;
``keep_old`` keeps those). :func:`run_study` is the whole of ``bench grid``: the grid, then
a tuned study's re-runs, the command that ran it, and its report. Before any trial
starts, each dataset the trials need is checked once (:func:`check_datasets`): a missing
one is one clear error, not a failed trial each.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.grid.local import run_local
from bench.grid.options import GridOptions
from bench.grid.planning import GridPlan, plan, plan_tuning, register
from bench.grid.recorder import Progress, Recorder
from bench.provenance import package_version, source_revision, utcnow
from bench.spec import StudySpec, TrialConfig
from bench.store.base import STALE_AFTER

if TYPE_CHECKING:
    from bench.store import ResultStore

log = logging.getLogger(__name__)

Executor = Callable[[list[TrialConfig], Recorder, GridOptions], None]
ProgressFactory = Callable[[GridPlan, str], AbstractContextManager[Progress | None]]


def run_ray(todo: list[TrialConfig], recorder: Recorder, options: GridOptions) -> None:
    """The ``ray`` executor: Ray Tune runs the trials side by side."""
    from bench.grid.ray_executor import run_with_tune  # imports Ray

    run_with_tune(todo, recorder, options)


def run_docker(todo: list[TrialConfig], recorder: Recorder, options: GridOptions) -> None:
    """The ``docker`` executor: each trial in its own container."""
    from bench.grid.docker_executor import run_in_containers  # imports the Docker SDK

    run_in_containers(todo, recorder, options)


EXECUTORS: dict[str, Executor] = {"ray": run_ray, "local": run_local, "docker": run_docker}


def run_grid(plan_: GridPlan, store: ResultStore, options: GridOptions, progress: Progress | None = None) -> Recorder:
    """Registers the plan and runs its trials to run; the recorder holds the counts.
    Trials still running when it stops (Ctrl-C, a crash) are marked interrupted."""
    if options.executor not in EXECUTORS:
        raise BenchError(f"Unknown executor {options.executor!r}. Valid executors: {', '.join(EXECUTORS)}.")
    register(plan_, store)
    recorder = Recorder(store, plan_.spec.key, len(plan_.todo), progress, stale_after=plan_.stale_after, skip_finished=True)
    if not plan_.todo:
        return recorder
    try:
        EXECUTORS[options.executor](plan_.todo, recorder, options)
    finally:
        _interrupt(recorder)
    return recorder


def _interrupt(recorder: Recorder) -> None:
    """Marks the trials still running interrupted; a store that fails now (a full disk)
    does not hide why the grid stopped: those trials stay ``running`` under this driver,
    which the next plan sees has ended."""
    try:
        recorder.interrupt_unfinished()
    except BenchError as exc:
        log.warning("Could not mark the unfinished trials interrupted: %s", exc)


def check_datasets(trials: list[TrialConfig], data_dir: str | None) -> None:
    """Each dataset the trials read from files is in ``data_dir``, or is downloaded now,
    once, before any trial starts; otherwise the error names the directory and the files."""
    from bench.zoo.datasets import dataset_fingerprint, dataset_source  # numpy, torch

    for name in sorted({t.dataset for t in trials}):
        if dataset_source(name).needs_files:
            dataset_fingerprint(name, data_dir=data_dir)


@dataclass
class StudyRun:
    """What :func:`run_study` did. ``counts`` are the recorder's (done, completed, failed,
    diverged, skipped, ...), summed over the grid and the tuning round."""

    plan: GridPlan  # the grid's plan (for a tuned study: its sweep)
    counts: dict[str, int]
    planned: int  # trials handed to an executor, tuned re-runs included
    tuned: int = 0  # tuned re-runs among them
    report: Path | None = None
    write_errors: list[str] = field(default_factory=list)  # writes the store refused (logged, the grid went on)

    @property
    def unfinished(self) -> int:
        """Trials handed to an executor that neither finished nor were skipped (Ctrl-C, a crash)."""
        return self.planned - self.counts["done"] - self.counts.get("skipped", 0)


def run_study(
    spec: StudySpec,
    store: ResultStore,
    options: GridOptions,
    *,
    stale_after: float = STALE_AFTER,
    keep_old: bool = False,
    progress_factory: ProgressFactory | None = None,
    report_dir: str | Path | None = None,
    command: str | None = None,
) -> StudyRun:
    """Runs a study's grid and, for a tuned study whose sweep finished, its tuned re-runs;
    writes its report into ``report_dir`` (None: no report). Before any trial runs, the grid
    is recorded with the study (:func:`record_grid`: ``command``, the command line that ran
    it, and the code revision). Finished trials made by other code or
    on other data than now are run again, unless ``keep_old``.

    ``progress_factory(plan, phase)``, phase ``"grid"`` then ``"tuning"``, is called before
    each round runs and returns a context manager that gives what shows its progress.
    """
    on_cluster = False
    if options.executor == "ray":
        from bench.grid.cluster import check_address

        # a wrong or unreachable address costs nothing: nothing is written yet
        on_cluster = check_address(options.address) is not None
    elif options.executor == "docker":
        from bench.grid.docker_executor import check_engine

        check_engine(options)  # engine, image, mounts, GPUs; containers of grids that ended are removed
    first = plan(spec, store, stale_after=stale_after, keep_old=keep_old, data_dir=options.data_dir)
    if first.todo and not on_cluster:  # on a cluster, each node is checked for its own data (ray_executor)
        check_datasets(first.todo, options.data_dir)
    if first.todo and options.executor == "docker":
        from bench.grid.docker_executor import check_image_runs

        check_image_runs(options, store)  # a container of the image opens the store: still nothing written
    record_grid(store, spec, command)  # before any trial: what ran them is known even if it is stopped
    outcome = StudyRun(first, {}, len(first.todo))
    outcome.counts = _run_round(first, "grid", store, options, progress_factory, outcome.write_errors)
    if spec.tune and outcome.counts["done"] == len(first.todo):
        tuned = plan_tuning(first, store)  # the re-runs follow from the sweep's results
        if tuned.todo:
            counts = _run_round(tuned, "tuning", store, options, progress_factory, outcome.write_errors)
            outcome.counts = {k: outcome.counts.get(k, 0) + v for k, v in counts.items()}
            outcome.planned += len(tuned.todo)
            outcome.tuned = len(tuned.todo)
    if report_dir is not None:
        from bench.report.writer import write_report  # pandas, matplotlib

        outcome.report = write_report(spec, store, report_dir)
    return outcome


GRIDS_KEPT = 50  # grid records a study document keeps (the newest)


def record_grid(store: ResultStore, spec: StudySpec, command: str | None) -> dict[str, Any]:
    """Appends this grid to the study document's ``grids``, when it starts: the command line
    (None when run from the Python API), the profile and ``--set`` overrides it ran with
    (reports pick the grid that matches theirs), the spec's hash, the code revision (commit
    and dirty flag) and the package version. Written once, as it happens; reports print
    it and never rebuild it."""
    commit, dirty = source_revision()
    entry = {
        "command": command,
        "profile": spec.profile,
        "overrides": dict(spec.overrides),
        "spec_hash": spec.spec_hash,
        "git_commit": commit,
        "git_dirty": dirty,
        "bench": package_version(),
        "started_at": utcnow(),
    }
    grids = list((store.get_study(spec.key) or {}).get("grids") or [])
    store.save_study(spec.key, {"grids": [*grids[-(GRIDS_KEPT - 1):], entry]})
    return entry


def _run_round(
    plan_: GridPlan, phase: str, store: ResultStore, options: GridOptions, progress_factory: ProgressFactory | None,
    write_errors: list[str],
) -> dict[str, int]:
    """One grid run under its progress display; the recorder's counts (its refused writes
    are added to ``write_errors``)."""
    with (progress_factory(plan_, phase) if progress_factory else nullcontext()) as progress:
        recorder = run_grid(plan_, store, options, progress)
    write_errors += recorder.write_errors
    return dict(recorder.counts)


KEEP_OLD_FLAG = "--keep-old-results"  # the grid command's flag that sets ``keep_old``


def provenance_notes(plan_: GridPlan) -> list[str]:
    """One line per kind of stored run the plan did not simply answer from the store: made
    by other code, trained on other data (run again, or kept with ``keep_old``), code
    unknown, data not checkable here."""
    check = plan_.provenance
    fate = f"kept ({KEEP_OLD_FLAG})" if plan_.keep_old else "run again"
    lines = []
    code = [c.code for c in check.changed if c.code]
    if code:
        lines.append(f"{_trials(len(code))} made by other code ({_keys(code)} changed): {fate}")
    data = [c.data for c in check.changed if c.data]
    if data:
        lines.append(f"{_trials(len(data))} trained on other data ({_keys(data)} changed): {fate}")
    if check.unknown:
        lines.append(
            f"{_plural(len(check.unknown), 'trial')} answered from the store recorded no code fingerprint (made before "
            "runs recorded one): their code is unknown"
        )
    if check.unchecked:
        why = "; ".join(f"{name}: {reason}" for name, reason in check.unchecked_why.items())
        lines.append(
            f"the data of {_plural(len(check.unchecked), 'stored trial')} could not be checked here ({why}): "
            "answered from the store"
        )
    return lines


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _trials(n: int) -> str:
    return f"{_plural(n, 'trial')} {'was' if n == 1 else 'were'}"


def _keys(groups: list[tuple[str, ...]], shown: int = 6) -> str:
    """The changed fingerprint keys, most frequent first: ``norm:gn, trial``."""
    counts = Counter(k for keys in groups for k in keys)
    names = [k for k, _ in counts.most_common()]
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")

"""The Python API: what the ``bench`` command does, as functions.

    import bench

    bench.load_plugins(["my_norms.py"])                       # your own techniques
    run = bench.run_study("norm-vs-batch", profile="quick", executor="local")
    print(run.counts, run.report)
    result = bench.run_trial(norm="gn", batch_size=4, dataset="digits", epochs=1)
    df = bench.load_results(study="norm-vs-batch@quick")
    bench.write_report("norm-vs-batch", profile="quick")

Stores are named as on the command line (None: ``BENCH_MONGO_URI`` / ``BENCH_STORE`` /
``.bench/results.sqlite``; a ``mongodb://`` URI; a SQLite path) or given as an open
:class:`~bench.store.ResultStore`. The CLI is a thin layer over these functions and the
library functions they call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.grid.run import StudyRun
    from bench.spec import StudySpec, TrialConfig
    from bench.store import ResultStore
    from bench.trial import TrialResult
    from bench.zoo.plugins import Plugin



def load_plugins(refs: Sequence[str], *, base: str | Path | None = None) -> list[Plugin]:
    """Imports plugins (``.py`` files, package directories or module names) so their
    techniques can be named in configs and studies."""
    from bench.zoo.plugins import load_plugins as load

    return load(refs, base=Path(base) if base else None, origin="Python API")


def load_study(
    study: str | Path, *, profile: str | None = None, overrides: Mapping[str, Any] | None = None
) -> StudySpec:
    """A study by name (the shipped or ``./ablations/`` studies) or path, with a profile and
    overrides; its plugins are loaded and its report block checked."""
    from bench.report.schema import check_study
    from bench.spec import load_spec

    spec = load_spec(study, profile=profile, overrides=dict(overrides or {}))
    check_study(spec)
    return spec


def run_study(
    study: str | Path | StudySpec,
    *,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    store: Any = None,
    executor: str = "ray",
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float | None = None,
    max_concurrent: int | None = None,
    address: str | None = None,
    data_dir: str | None = None,
    device: str | None = None,
    retries: int = 1,
    keep_checkpoints: bool = False,
    report_dir: str | Path | None = "reports",
) -> StudyRun:
    """Runs every trial of a study not yet finished in the store, its tuning round, and
    writes its report into ``report_dir`` (None: no report). Returns the counts. Trials
    checkpoint every epoch; on Ray one whose worker or node is lost is retried ``retries``
    times from its checkpoint; ``keep_checkpoints`` keeps final weights (run ``artifacts``)."""
    from bench.grid import GridOptions, run_study as run
    from bench.spec import StudySpec

    spec = study if isinstance(study, StudySpec) else load_study(study, profile=profile, overrides=overrides)
    from bench.errors import BenchError

    if retries < 0:
        raise BenchError(f"retries must be 0 or more; got {retries}.")
    options = GridOptions(
        executor, cpus_per_trial, gpus_per_trial, max_concurrent, address, data_dir, device, retries=retries,
        keep_checkpoints=keep_checkpoints,
    )
    with opened(store) as handle:
        return run(spec, handle, options, report_dir=report_dir)


def run_trial(
    config: TrialConfig | Mapping[str, Any] | None = None,
    *,
    store: Any = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    data_dir: str | None = None,
    device: str | None = None,
    **values: Any,
) -> TrialResult:
    """Trains one trial in this process: a TrialConfig, a mapping, or keyword values
    (``run_trial(norm="gn", batch_size=4)``). With ``store`` (None for the default store)
    it is recorded as ``bench train`` records it; by default (False) it is not."""
    from bench.grid.local import run_one
    from bench.spec import TrialConfig, trial_from_assignments

    if not isinstance(config, TrialConfig):
        config = trial_from_assignments({**dict(config or {}), **values})
    elif values:
        config = config.replace(**values)
    if store is False:
        return run_one(config, None, on_epoch=on_epoch, data_dir=data_dir, device=device)
    with opened(store) as handle:
        return run_one(config, handle, on_epoch=on_epoch, data_dir=data_dir, device=device)


def write_report(
    study: str | Path | StudySpec,
    *,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    store: Any = None,
    reports_dir: str | Path = "reports",
    force: bool = False,
) -> Path:
    """Writes a study's report from the store alone (no training); returns its path. A
    store holding none of the study's runs does not replace an existing report, unless
    ``force``."""
    from bench.report.writer import write_report as write
    from bench.spec import StudySpec

    spec = study if isinstance(study, StudySpec) else load_study(study, profile=profile, overrides=overrides)
    with opened(store) as handle:
        return write(spec, handle, reports_dir, force=force)


def open_store(store: str | Path | None = None) -> ResultStore:
    """A result store (close it, or use ``with bench.open_store(...) as store:``)."""
    from bench.store import open_store as open_

    return open_(str(store) if isinstance(store, Path) else store)


@contextlib.contextmanager
def opened(store: Any) -> Iterator[ResultStore]:
    """``store`` as an open store for a block: one given open stays open, one opened here is closed."""
    if store is not None and not isinstance(store, (str, Path)):
        yield store
        return
    handle = open_store(store)
    try:
        yield handle
    finally:
        handle.close()

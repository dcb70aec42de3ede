"""The ``bench`` command line: thin commands that parse, call the library, print.

    bench grid norm-vs-batch --quick        run a study (Ray Tune), store results, write its report
    bench grid --list                       the studies in ablations/
    bench grid norm-vs-batch --dry-run      the trials and an estimate, nothing run
    bench train --set norm=gn --set batch_size=4
    bench results ls --study norm-vs-batch --where norm=gn --where "batch_size<=8"
    bench results show RUN_ID | bench results query '{"summary.final_val_acc": {"$gte": 0.9}}'
    bench report norm-vs-batch
    bench store info | bench store status | bench store reset --study norm-vs-batch --status failed
    bench store export results.jsonl.gz | bench store import results.jsonl.gz | bench store copy --to mongodb://host/bench
    bench zoo [norms|optimizers|schedules|archs|augments|datasets]

User mistakes (unknown names, invalid values, unreachable servers) end in one readable
paragraph and exit status 1, never a traceback, and before anything is written.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.errors import BenchError
from bench.store.base import STALE_AFTER

if TYPE_CHECKING:
    from bench.grid import GridPlan, StudyRun
    from bench.spec import StudySpec
    from bench.store import ResultStore
    from bench.trial import TrialResult
    from bench.zoo.registry import Registry

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Tables of runs are wide: outside a terminal (pipes, CI logs) do not squeeze them to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="bench",
    help="Benchmark and ablation harness: run studies on Ray Tune, store every metric, write reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
results_app = typer.Typer(help="Query stored runs.", no_args_is_help=True)
store_app = typer.Typer(help="The result store.", no_args_is_help=True)
app.add_typer(results_app, name="results")
app.add_typer(store_app, name="store")


@dataclass
class Settings:
    store: str | None = None


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: running trials are marked interrupted on the way out."""


_SIGTERM_RECEIVED = threading.Event()


@contextmanager
def terminable() -> Iterator[None]:
    """While a command trains: SIGTERM raises :class:`Terminated` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        _SIGTERM_RECEIVED.set()  # code that turns the exception into a plain KeyboardInterrupt (Ray's) loses its type
        raise Terminated()

    _SIGTERM_RECEIVED.clear()
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def guarded(func: F) -> F:
    """Domain errors become a styled paragraph and exit status 1; Ctrl-C exits 130, SIGTERM 143."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BenchError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as exc:
            if isinstance(exc, Terminated) or _SIGTERM_RECEIVED.is_set():
                err_console.print("[yellow]Terminated.[/] Run the same command again to resume: finished trials are kept.")
                raise typer.Exit(143) from None
            err_console.print("[yellow]Interrupted.[/] Run the same command again to resume: finished trials are kept.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


DISTRIBUTION = "ablation-bench"  # the name bench is installed under (pip install ablation-bench)


def _print_version(value: bool) -> None:
    """``--version``: the distribution's name and version; the package's own version, marked
    as such, when bench runs from a source tree that is not installed."""
    if not value:
        return
    from importlib import metadata

    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        import bench

        version = f"{bench.__version__} (source tree, not installed: {os.path.dirname(bench.__file__)})"
    typer.echo(f"{DISTRIBUTION} {version}")
    raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the distribution name and version, then exit."),
    ] = False,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            "--mongo-uri",
            envvar=["BENCH_MONGO_URI", "BENCH_STORE"],
            help="Result store: a mongodb:// URI, or a path to the embedded SQLite file (default .bench/results.sqlite).",
            show_envvar=True,
        ),
    ] = None,
    plugins: Annotated[
        list[str] | None,
        typer.Option(
            "--plugin",
            envvar="BENCH_PLUGINS",
            help="Your own techniques: a .py file, a package directory or a module that registers entries with the "
            "zoo's decorators (repeatable; BENCH_PLUGINS: separated by the path separator).",
            show_envvar=True,
            show_default=False,
        ),
    ] = None,
) -> None:
    ctx.obj = Settings(store=store)
    if plugins:
        _load_plugins(plugins)


def _load_plugins(refs: list[str]) -> None:
    from bench.zoo.plugins import load_plugins

    try:
        load_plugins([r for ref in refs for r in ref.split(os.pathsep) if r], origin="command line")
    except BenchError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None


def _store(ctx: typer.Context, read_only: bool = False) -> AbstractContextManager[ResultStore]:
    """The store named by --store (or the environment), for a ``with`` block that closes it;
    ``read_only`` for the commands that only read (nothing is created, read-only files work)."""
    from bench.store import opened_store

    return opened_store(ctx.obj.store if ctx.obj else None, read_only=read_only)


def _text(what: str, value: str | None) -> str | None:
    """A command-line argument as text: one that is not valid UTF-8 (read with surrogate
    escapes) is refused rather than failing deep in a store."""
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise BenchError(f"{what} '{shown}' is not valid UTF-8 text; names, ids and conditions are UTF-8.") from None
    return value


# -- grid -----------------------------------------------------------------------------

SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a config value: KEY=VALUE (repeatable).", show_default=False)
]
DataDirOption = Annotated[
    str | None,
    typer.Option("--data-dir", envvar="BENCH_DATA_DIR", help="Where datasets are read or downloaded.", show_envvar=True),
]


def _profile(quick: bool, profile: str | None) -> str | None:
    if quick and profile and profile != "quick":
        raise BenchError(f"--quick and --profile {profile} contradict each other; give one of them.")
    return "quick" if quick else profile


def _load(study: str, quick: bool, profile: str | None, sets: list[str] | None) -> StudySpec:
    """The study spec, its trials and its report block checked before anything runs."""
    from bench.report.schema import check_study
    from bench.spec import load_spec, parse_assignments

    spec = load_spec(study, profile=_profile(quick, profile), overrides=parse_assignments(sets or []))
    check_study(spec)
    return spec


@app.command()
@guarded
def grid(
    ctx: typer.Context,
    study: Annotated[str | None, typer.Argument(help="A study name from ablations/ or a path to a spec .yaml.")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the studies and exit.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the trials and an estimate; run nothing.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="The study's quick profile (minutes on a laptop).")] = False,
    profile: Annotated[str | None, typer.Option("--profile", help="A profile defined in the spec.")] = None,
    sets: SetOption = None,
    executor: Annotated[
        str,
        typer.Option(help="ray (Ray Tune), local (in this process, one at a time) or docker (each trial in its own "
                          "container of --image)."),
    ] = "ray",
    cpus_per_trial: Annotated[float, typer.Option(help="CPUs each trial reserves (and its torch threads).")] = 1.0,
    gpus_per_trial: Annotated[
        float | None,
        typer.Option(help="GPUs each trial reserves; fractions share a GPU (default: 0.25 when the Ray cluster has "
                          "GPUs, else 0)."),
    ] = None,
    max_concurrent: Annotated[int | None, typer.Option(help="At most this many trials at once.")] = None,
    address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help="Join this Ray cluster instead of starting one.", show_envvar=True)
    ] = None,
    data_dir: DataDirOption = None,
    device: Annotated[str | None, typer.Option(help="Force a torch device (cpu, cuda); default: cuda when present.")] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the study's report at the end.")] = True,
    reports_dir: Annotated[str, typer.Option(help="Where reports are written.")] = "reports",
    stale_after: Annotated[
        float,
        typer.Option(help="Seconds without a heartbeat after which a running trial counts as abandoned and is run again; "
                          "a running trial with a fresher heartbeat belongs to another live grid and is skipped."),
    ] = STALE_AFTER,
    keep_old_results: Annotated[
        bool,
        typer.Option("--keep-old-results", help="Answer trials from stored runs made by other code or on other data "
                                                "than now, instead of running them again."),
    ] = False,
    retries: Annotated[
        int, typer.Option(help="Times a trial whose Ray worker or node is lost is retried, from its last checkpoint.")
    ] = 1,
    keep_checkpoints: Annotated[
        bool, typer.Option("--keep-checkpoints", help="Keep each finished trial's final weights (shown by bench results show).")
    ] = False,
    image: Annotated[
        str | None,
        typer.Option(envvar="BENCH_DOCKER_IMAGE", show_envvar=True,
                     help="--executor docker: the image each trial's container runs (bench installed, python3 on its PATH; "
                          "never pulled). docker/build-image.sh builds the project's."),
    ] = None,
    mount: Annotated[
        list[str] | None,
        typer.Option("--mount", show_default=False,
                     help="--executor docker: also mount SRC:DST[:ro|rw] in every trial's container (repeatable). The "
                          "store, checkpoint, journal and data directories and the plugins are mounted already."),
    ] = None,
    memory_per_trial: Annotated[
        str | None, typer.Option(help="--executor docker: memory limit of each trial's container (512m, 4g).")
    ] = None,
    network: Annotated[
        str | None,
        typer.Option(help="--executor docker: the containers' network (default: none with the embedded store, host "
                          "with MongoDB)."),
    ] = None,
) -> None:
    """Run a study's grid: every trial not yet finished, side by side on Ray Tune (or each in
    its own container, --executor docker). Trials checkpoint after every epoch; an
    interrupted one resumes where it stopped."""
    if list_:
        from bench.spec import list_specs

        _list_studies(list_specs())
        return
    if not study:
        raise BenchError("Name a study (bench grid --list shows them) or give a path to a spec .yaml.")
    _check_grid_flags(stale_after, cpus_per_trial, gpus_per_trial, max_concurrent)
    if retries < 0:
        raise BenchError(f"--retries must be 0 or more (0: a trial whose worker is lost fails); got {retries}.")
    from bench.grid import GridOptions

    spec = _load(study, quick, profile, sets)
    if device:
        from bench.trial.build import check_device

        check_device(device, available=executor == "local")  # Ray's workers may have what this machine lacks
    options = GridOptions(
        executor, cpus_per_trial, gpus_per_trial, max_concurrent, address, data_dir, device, retries=retries,
        keep_checkpoints=keep_checkpoints, image=image, mounts=list(mount or []), memory_per_trial=memory_per_trial,
        network=network,
    )
    from bench.grid.docker_executor import check_options

    check_options(options)  # docker's options, and none of them for another executor
    if dry_run:
        from bench.grid.estimate import describe_plan

        describe_plan(spec, options, console)
        return
    from bench.grid.run import run_study

    if executor == "ray":
        from bench.grid.cluster import check_address

        check_address(address)  # a wrong address is refused before the store is opened (or created)
    elif executor == "docker":
        from bench.grid.docker_executor import check_engine

        check_engine(options)  # no engine, no image, a bad mount: refused before the store is opened
    with _store(ctx) as store, terminable():
        outcome = run_study(
            spec, store, options, stale_after=stale_after, keep_old=keep_old_results,
            progress_factory=_round_display(store, executor), report_dir=reports_dir if report else None,
            command=_grid_command(ctx),
        )
    _print_outcome(outcome, _grid_command(ctx) or f"bench grid {study}")


def _check_grid_flags(
    stale_after: float, cpus_per_trial: float, gpus_per_trial: float | None, max_concurrent: int | None
) -> None:
    import math

    if not math.isfinite(stale_after) or stale_after < 0:
        raise BenchError(
            f"--stale-after must be a finite number of seconds ≥ 0 (0: every running trial counts as abandoned); got {stale_after}."
        )
    gpus = 0.0 if gpus_per_trial is None else gpus_per_trial
    if not (math.isfinite(cpus_per_trial) and math.isfinite(gpus)):
        raise BenchError(f"--cpus-per-trial and --gpus-per-trial must be finite numbers; got {cpus_per_trial} and {gpus_per_trial}.")
    if cpus_per_trial <= 0 or gpus < 0 or (max_concurrent is not None and max_concurrent < 1):
        raise BenchError(
            "--cpus-per-trial must be > 0, --gpus-per-trial ≥ 0 (fractions share a GPU) and --max-concurrent ≥ 1; "
            f"got {cpus_per_trial}, {gpus_per_trial}, {max_concurrent}."
        )


def _grid_command(ctx: typer.Context) -> str | None:
    """The command line that ran this grid, saved with the study: ``bench`` and the process's
    arguments when they are a ``bench grid`` command, global options before ``grid``
    included (None when ``bench grid`` was not what this process was started with, as
    under a test runner)."""
    args = sys.argv[1:]
    valued = {name for p in ctx.find_root().command.params if not getattr(p, "is_flag", True) for name in p.opts}
    at = 0
    while at < len(args) and args[at].startswith("-"):  # the root's options, before the command's name
        at += 2 if args[at] in valued else 1
    return "bench " + " ".join(shlex.quote(a) for a in args) if args[at : at + 1] == ["grid"] else None


def _round_display(store: ResultStore, executor: str) -> Callable[[GridPlan, str], _GridProgress]:
    """For each round of a study: says what it will run, then shows its progress."""

    def show(grid_plan: GridPlan, phase: str) -> _GridProgress:
        spec = grid_plan.spec
        if phase == "tuning":
            console.print(
                f"tuning: {len(grid_plan.todo)} re-runs, each configuration at its best {spec.tune['over']} "
                f"with seeds {spec.tune['seeds']}"
            )
        else:
            _print_plan(grid_plan, store, executor)
        return _GridProgress(len(grid_plan.todo))

    return show


def _print_plan(grid_plan: GridPlan, store: ResultStore, executor: str) -> None:
    console.print(
        f"[bold]{grid_plan.spec.key}[/]: {len(grid_plan.trials)} trials, {len(grid_plan.cached)} already finished "
        f"(answered from the store), {len(grid_plan.todo)} to run on {executor} · store: {store.kind} {store.location}"
    )
    if grid_plan.gone:
        console.print(
            f"{len(grid_plan.gone)} trials were left running by a grid of this machine that has ended: "
            "marked interrupted, run again"
        )
    if len(grid_plan.stale) > len(grid_plan.gone):
        console.print(
            f"{len(grid_plan.stale) - len(grid_plan.gone)} trials were abandoned while running "
            f"(no heartbeat for {grid_plan.stale_after:g} s): "
            "marked interrupted, run again"
        )
    if grid_plan.live:
        console.print(f"[yellow]{len(grid_plan.live)} trials are running in another live grid:[/] skipped here")
    from bench.grid.run import provenance_notes

    for line in provenance_notes(grid_plan):
        console.print(line, markup=False)


def _print_outcome(outcome: StudyRun, command: str) -> None:
    """The study's counts and report, and what to run next; exit status 1 when trials
    failed or the store refused writes, 130 when trials did not finish."""
    counts = outcome.counts
    cached = len(outcome.plan.cached)
    console.print(
        f"done: {counts['completed']} completed, {counts['diverged']} diverged, {counts['failed']} failed"
        + (f" · {cached} from the store" if cached else "")
    )
    if outcome.report is not None:
        console.print(f"report: {outcome.report}")
    if counts.get("skipped"):
        console.print(f"{counts['skipped']} trials were started or finished by another grid meanwhile: skipped here")
    if outcome.write_errors:
        err_console.print(
            f"[bold red]error:[/] the store refused {len(outcome.write_errors)} writes (first: "
            f"{escape(outcome.write_errors[0])}). Training went on; run `{escape(command)}` again once the store "
            "is writable: trials whose results are missing run again.",
            soft_wrap=True,
        )
    if outcome.unfinished:
        err_console.print(
            f"[yellow]Interrupted:[/] {outcome.unfinished} trials did not finish. Run the same command again to resume: "
            "finished trials are kept and only the others run."
        )
        raise typer.Exit(130)
    if counts["failed"]:
        err_console.print(
            f"[bold red]{counts['failed']} trials failed:[/] `bench results ls --study {outcome.plan.spec.key} --status "
            "failed` lists them and `bench results show ID` shows an error; fix the cause, then run "
            f"`{escape(command)}` again to run them again.",
            soft_wrap=True,
        )
    if counts["failed"] or outcome.write_errors:
        raise typer.Exit(1)


def _list_studies(paths: list[Any]) -> None:
    import yaml

    table = Table("study", "profiles", "description", box=None)
    for path in paths:
        doc = yaml.safe_load(path.read_text()) or {}
        table.add_row(path.stem, ", ".join(["default", *(doc.get("profiles") or {})]), str(doc.get("description", "")).strip().split("\n")[0])
    console.print(table)


class _GridProgress:
    """Live display of a grid: done / running / failed / diverged, elapsed, ETA. Where the
    output is no terminal (nohup, CI, a batch scheduler) a live bar shows nothing, so it
    prints one line per finished trial and a summary line every :attr:`summary_every` seconds."""

    summary_every = 60.0

    def __init__(self, total: int, live: bool | None = None):
        import threading
        import time

        self.total, self.done, self.state = total, 0, "starting"
        self.started = time.monotonic()
        self.live = console.is_terminal if live is None else live
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._summaries, name="grid-progress", daemon=True)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("grid", total=total, state="")

    def __enter__(self) -> _GridProgress:
        if self.live:
            self.progress.start()
        else:
            self._beat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()
        else:
            self._stop.set()
            self._beat.join()

    def update(self, counts: dict[str, int]) -> None:
        state = f"running {counts['running']} · completed {counts['completed']} · diverged {counts['diverged']} · failed {counts['failed']}"
        self.progress.update(self.task, completed=counts["done"], state=state)
        if not self.live:
            self._log(counts, state)

    def _elapsed(self) -> str:
        import time

        return f"{(time.monotonic() - self.started) / 60:.1f} min"

    def _log(self, counts: dict[str, int], state: str) -> None:
        """One plain line per trial finished since the last update."""
        self.state = state
        for n in range(self.done + 1, counts["done"] + 1):
            console.print(f"trial {n}/{self.total} finished · {state} · {self._elapsed()}", markup=False, highlight=False)
        self.done = max(self.done, counts["done"])

    def _summaries(self) -> None:
        """Every :attr:`summary_every` seconds until the grid ends: where it stands."""
        while not self._stop.wait(self.summary_every):
            console.print(f"grid: {self.done}/{self.total} done · {self.state} · {self._elapsed()} elapsed",
                          markup=False, highlight=False)


# -- train ----------------------------------------------------------------------------


@app.command()
@guarded
def train(
    ctx: typer.Context,
    sets: SetOption = None,
    data_dir: DataDirOption = None,
    device: Annotated[str | None, typer.Option(help="Force a torch device (cpu, cuda).")] = None,
    save: Annotated[bool, typer.Option("--save/--no-save", help="Record the run in the store.")] = True,
) -> None:
    """Run one trial in this process and print its epochs."""
    from bench.grid.local import run_one
    from bench.spec import parse_assignments, trial_from_assignments
    from bench.trial import preflight

    config = trial_from_assignments(parse_assignments(sets or []))
    preflight(config)
    if device:
        from bench.trial.build import check_device

        check_device(device)
    console.print(f"trial [bold]{config.trial_id}[/] · effective lr {config.effective_lr:g}")
    with (_store(ctx) if save else nullcontext()) as store, terminable():
        result = run_one(config, store, on_epoch=_print_epoch, data_dir=data_dir, device=device)
    _print_trial(result)


def _print_epoch(m: dict[str, Any]) -> None:
    console.print(
        f"epoch {m['epoch']:>3}  loss {m['train_loss']:.4f}  acc {m['train_acc']:.4f}  "
        f"val loss {m['val_loss']:.4f}  val acc {m['val_acc']:.4f}  "
        + (f"ema val acc {m['ema_val_acc']:.4f}  " if "ema_val_acc" in m else "")
        + f"lr {m['lr']:.3g}  |g| {m['grad_norm']:.3g}  {m['epoch_seconds']:.1f}s  {m['samples_per_s'] or 0:.0f}/s"
    )


def _print_trial(result: TrialResult) -> None:
    """The outcome of one trial; exit status 1 when it failed."""
    style = {"completed": "green", "diverged": "yellow", "failed": "red"}[result.status]
    console.print(f"[{style}]{result.status}[/] · final val acc {result.summary.get('final_val_acc')} · {result.summary['wall_seconds']:.1f}s")
    if result.status == "diverged":
        console.print(f"diverged at step {result.summary.get('diverged_step')} (loss {result.summary.get('diverged_loss')})")
    if result.error:
        err_console.print(escape(result.error))
        raise typer.Exit(1)


# -- report ---------------------------------------------------------------------------


@app.command("report")
@guarded
def report_cmd(
    ctx: typer.Context,
    study: Annotated[str, typer.Argument(help="A study name from ablations/ or a path to a spec .yaml.")],
    quick: Annotated[bool, typer.Option("--quick", help="The quick profile's report.")] = False,
    profile: Annotated[str | None, typer.Option("--profile")] = None,
    sets: SetOption = None,
    reports_dir: Annotated[str, typer.Option(help="Where reports are written.")] = "reports",
    ci: Annotated[
        str | None, typer.Option("--ci", help="Confidence interval in every cell: none, t or bootstrap (default: the spec's).")
    ] = None,
    alpha: Annotated[
        float | None, typer.Option("--alpha", help="Significance level of the paired tests; intervals at 1 − alpha (default: the spec's, else 0.05).")
    ] = None,
    correction: Annotated[
        str | None, typer.Option("--correction", help="Multiple-comparison adjustment per table: none or holm (default: the spec's).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Rewrite the report even when the store holds none of the study's runs.")
    ] = False,
) -> None:
    """Write a study's markdown report, with its figures and CSV/LaTeX tables, from the store alone (no training)."""
    from bench.report.writer import write_report

    spec = _load(study, quick, profile, sets)
    with _store(ctx, read_only=True) as store:
        path = write_report(
            spec, store, reports_dir, overrides={"ci": ci, "alpha": alpha, "correction": correction}, force=force
        )
        console.print(f"report: {path}")


# -- results --------------------------------------------------------------------------

LS_COLUMNS = ("run_id", "status", "study", "dataset", "arch", "norm", "optimizer", "batch_size", "effective_lr", "seed",
              "epochs_done", "final_val_acc")


def _print_runs(runs: list[dict[str, Any]], fmt: str, columns: tuple[str, ...] = LS_COLUMNS) -> None:
    """Runs as a table (no pandas: a listing starts fast), CSV or JSON (through pandas)."""
    from bench.report.frame import run_rows, runs_frame

    if fmt in ("csv", "json"):
        frame = runs_frame(runs)
        sys.stdout.write(frame.to_csv(index=False) if fmt == "csv" else frame.to_json(orient="records", indent=1) + "\n")
    elif fmt == "table":
        rows = run_rows(runs)
        _print_table(rows, [c for c in columns if any(c in row for row in rows)])
        console.print(f"{len(rows)} runs")
    else:
        raise BenchError(f"Unknown format {fmt!r}. Valid formats: table, csv, json.")


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Rows in aligned columns: a rich Table without a box (a space each side of a cell, the
    header bold). When it fits the console, the same lines are written as text instead of
    through the Table, which measures and renders every cell: a second for the 500 runs of
    a filtered listing at 100,000 runs, 20 ms as text."""
    from rich.cells import cell_len
    from rich.text import Text

    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max([cell_len(c), *(cell_len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    if not columns or sum(widths) + 2 * len(widths) > console.width or any("\n" in v for r in cells for v in r):
        table = Table(*columns, box=None)  # too wide (the Table shares the width out) or a cell of several lines
        for r in cells:
            table.add_row(*r)
        console.print(table)
        return

    def line(values: list[str]) -> str:
        return " " + "  ".join(v + " " * (w - cell_len(v)) for v, w in zip(values, widths)) + " "

    text = Text()
    text.append(line(columns), style="bold")
    if cells:
        text.append("\n" + "\n".join(line(r) for r in cells))
    console.print(text, no_wrap=True, highlight=False)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


@results_app.command("ls")
@guarded
def results_ls(
    ctx: typer.Context,
    study: Annotated[str | None, typer.Option(help="Only runs of this study.")] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(help="A condition: KEY=VALUE, KEY!=VALUE, KEY<=N, ... (config keys, summary metrics, status); repeatable.", show_default=False),
    ] = None,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many runs (0: all).")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
) -> None:
    """List runs, filtered."""
    from bench.store.status import check_status, check_study
    from bench.store.where import parse_where

    conditions = [parse_where(_text("The condition", w)) for w in where or []]
    if study:
        conditions.append({"study": _text("The study", study)})
    if status:
        conditions.append({"status": check_status(_text("The status", status))})
    query = {"$and": conditions} if len(conditions) > 1 else (conditions[0] if conditions else {})
    with _store(ctx, read_only=True) as store:
        if study:
            check_study(store, study)
        runs = store.find_runs(query, sort=[("finished_at", 1)], limit=limit)
    _print_runs(runs, fmt)


@results_app.command("query")
@guarded
def results_query(
    ctx: typer.Context,
    filter_json: Annotated[str, typer.Argument(metavar="FILTER", help="A MongoDB filter as JSON (the supported subset).")],
    limit: Annotated[int, typer.Option(help="At most this many runs (0: all).")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
) -> None:
    """Runs matching a MongoDB filter (same language on the embedded store and MongoDB)."""
    from bench.store import validate_filter

    try:
        query = json.loads(_text("The filter", filter_json))
    except json.JSONDecodeError as exc:
        raise BenchError(f"The filter is not valid JSON ({exc.msg} at character {exc.pos}): {filter_json!r}.") from None
    except RecursionError:
        raise BenchError(
            f"The filter is nested too deeply to read ({len(filter_json):,} characters); filters are nested at most "
            "32 levels, e.g. {\"$and\": [{\"config.norm\": \"gn\"}, {\"config.batch_size\": {\"$lte\": 8}}]}."
        ) from None
    if not isinstance(query, dict):
        raise BenchError(f"A filter is a JSON object such as '{{\"config.norm\": \"gn\"}}'; got {filter_json!r}.")
    validate_filter(query)
    with _store(ctx, read_only=True) as store:
        runs = store.find_runs(query, limit=limit)
    _print_runs(runs, fmt)


@results_app.command("show")
@guarded
def results_show(ctx: typer.Context, run_id: Annotated[str, typer.Argument(help="The run's id.")]) -> None:
    """A run's config, outcome, environment and per-epoch metrics."""
    _text("The run id", run_id)
    with _store(ctx, read_only=True) as store:
        run = store.get_run(run_id)
        if run is None:
            raise BenchError(f"No run with id {run_id!r} in {store.kind} store {store.location}. `bench results ls` lists the runs.")
        epochs = sorted(store.get_metrics(run_id), key=lambda doc: doc.get("epoch", 0))
    console.print(f"[bold]{run_id}[/] · {run.get('status')} · studies: {', '.join(run.get('study') or []) or '—'} · attempts {run.get('attempts')}")
    for title, section in (("config", run.get("config")), ("summary", run.get("summary")), ("env", run.get("env"))):
        if section:
            table = Table("key", "value", title=title, box=None, title_justify="left")
            for k, v in section.items():
                table.add_row(k, _fmt(v))
            console.print(table)
    where = {
        **({"node": ", ".join(f"{k} {v}" for k, v in run["node"].items())} if isinstance(run.get("node"), dict) else {}),
        **({"checkpoint": _checkpoint_line(run["checkpoint"])} if isinstance(run.get("checkpoint"), dict) else {}),
        **{f"artifact: {name}": str(path) for name, path in (run.get("artifacts") or {}).items()},
    }
    if where:
        table = Table("key", "value", title="where", box=None, title_justify="left")
        for k, v in where.items():
            table.add_row(k, escape(v))
        console.print(table)
    if run.get("history"):
        _print_table(run["history"], [c for c in dict.fromkeys(k for doc in run["history"] for k in doc) if c != "node"])
    if epochs:
        _print_table(epochs, [c for c in dict.fromkeys(k for doc in epochs for k in doc) if c not in ("_id", "run_id")])
    if run.get("error"):
        console.print("[red]error:[/]")
        console.print(escape(run["error"]))


def _checkpoint_line(checkpoint: dict[str, Any]) -> str:
    """Where a run's latest checkpoint is and where in training it was taken."""
    return f"{checkpoint.get('path')} (epoch {checkpoint.get('epoch')}, step {checkpoint.get('step')})"


# -- store ----------------------------------------------------------------------------


@store_app.command("info")
@guarded
def store_info(ctx: typer.Context) -> None:
    """Which store is in use, where, and what it holds."""
    with _store(ctx, read_only=True) as store:
        info = store.info()
    table = Table("key", "value", box=None)
    for k, v in info.items():
        table.add_row(k, json.dumps(v) if isinstance(v, dict) else str(v))
    console.print(table)


@store_app.command("status")
@guarded
def store_status(
    ctx: typer.Context,
    study: Annotated[str | None, typer.Option(help="Only this study.")] = None,
    stale_after: Annotated[float, typer.Option(help="Seconds without a heartbeat after which a running trial counts as stale.")] = STALE_AFTER,
) -> None:
    """Runs per study and status; running trials whose driver stopped beating show as stale."""
    from bench.store.base import RUN_STATUSES
    from bench.store.status import study_status

    with _store(ctx, read_only=True) as store:
        rows = study_status(store, _text("The study", study), stale_after)
    if not rows:
        console.print(f"No runs in the {store.kind} store {store.location}.")
        return
    extra = sorted({s for row in rows for s in row.counts} - set(RUN_STATUSES))
    statuses = [s for s in RUN_STATUSES if any(s in row.counts for row in rows)] + extra
    table = Table("study", *(s or "(no status)" for s in statuses), "stale", "total", box=None)
    for row in rows:
        table.add_row(row.study or "(none)", *(str(row.counts.get(s, 0)) for s in statuses), str(row.stale), str(row.total))
    console.print(table)
    if any(row.stale for row in rows):
        console.print(
            f"stale: running with no heartbeat for {stale_after:g} s; the next `bench grid` of the study marks them "
            "interrupted and runs them again."
        )


@store_app.command("reset")
@guarded
def store_reset(
    ctx: typer.Context,
    study: Annotated[str, typer.Option(help="The study whose runs to re-queue.")],
    status: Annotated[str, typer.Option(help="Re-queue the runs with this status: failed, interrupted, diverged or completed.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm re-queueing completed or diverged runs (their results are replaced when they run).")] = False,
) -> None:
    """Re-queue a study's runs with a given status (pending), so the next grid runs them."""
    from bench.store.base import FINISHED_STATUSES
    from bench.store.status import requeue

    if status in FINISHED_STATUSES and not yes:
        raise BenchError(f"Re-queueing {status} runs replaces their results when they run again; add --yes to confirm.")
    with _store(ctx) as store:
        n = requeue(store, _text("The study", study), status)
    console.print(f"{n} {status} runs of {study} re-queued (pending); `bench grid {study}` runs them.")


@store_app.command("sync")
@guarded
def store_sync(ctx: typer.Context) -> None:
    """Replay the writes journaled while MongoDB was unreachable."""
    try:
        with _store(ctx) as store:
            n = store.sync()
    except BenchError as exc:
        note = "" if "journal" in str(exc) else _journal_note(ctx.obj.store if ctx.obj else None)
        raise BenchError(f"{exc} {note}".strip()) from None
    if store.kind == "embedded":
        console.print(f"The embedded store {store.location} is written directly: nothing to sync.")
    else:
        console.print(f"{n} journaled writes replayed to {store.kind} {store.location}." if n else "Nothing journaled: the store is up to date.")


def _journal_note(uri: str | None) -> str:
    """How many writes wait in the journal of the MongoDB server ``uri`` names, and where
    (said when ``bench store sync`` cannot reach it); empty for other stores."""
    from bench.store.base import is_mongo_uri, mask_uri

    uri = uri or os.environ.get("BENCH_MONGO_URI", "").strip()
    if not uri or not is_mongo_uri(uri):
        return ""
    from bench.store.journal import Journal, journal_path
    from bench.store.mongo import _server_identity, database_from_uri

    database = database_from_uri(uri) or os.environ.get("BENCH_MONGO_DB", "").strip() or "bench"
    journal = Journal(journal_path(_server_identity(uri, mask_uri(uri)), database))
    if not journal.has_entries():
        return f"Nothing is journaled for it ({journal.path} is empty or absent): no write waits."
    return (f"{journal.pending()} journaled writes wait in {journal.path}; they are kept until a "
            "`bench store sync` reaches the server.")


@store_app.command("export")
@guarded
def store_export(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="Output file: .jsonl (or .jsonl.gz) for whole documents, .csv or .parquet for a table.")],
    study: Annotated[str | None, typer.Option(help="Only this study and its runs.")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="jsonl, csv or parquet (default: from the file name).")] = None,
    table: Annotated[str, typer.Option(help="For csv and parquet: runs, metrics or steps.")] = "runs",
) -> None:
    """Write the store (or one study) to a file: JSON Lines to move it, CSV or Parquet to analyse it."""
    from bench.store.transfer import export_jsonl, export_table, format_of

    from bench.store.status import check_study

    kind = format_of(path, fmt)
    with _store(ctx, read_only=True) as store:
        if study:
            check_study(store, _text("The study", study))
        if kind == "jsonl":
            counts = export_jsonl(store, path, study)
            console.print(f"{path}: " + ", ".join(f"{n} {name}" for name, n in counts.items()))
        else:
            console.print(f"{path}: {export_table(store, path, table, kind, study)} rows ({table})")


@store_app.command("import")
@guarded
def store_import(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="A JSON Lines export (.jsonl or .jsonl.gz) written by `bench store export`.")],
) -> None:
    """Add an export's studies, runs, metrics and steps to the store (upserts: importing twice changes nothing)."""
    from bench.store.transfer import import_jsonl

    with _store(ctx) as store:
        _print_transfer(import_jsonl(store, path), store)


@store_app.command("copy")
@guarded
def store_copy(
    ctx: typer.Context,
    to: Annotated[str, typer.Option("--to", help="The target store: a mongodb:// URI or an embedded store path.")],
    study: Annotated[str | None, typer.Option(help="Only this study and its runs.")] = None,
) -> None:
    """Copy the store (or one study) into another store, e.g. an embedded store to a MongoDB server."""
    from bench.store import opened_store
    from bench.store.transfer import copy_store

    with _store(ctx) as source, opened_store(to) as target:
        if target.kind == source.kind and target.location == source.location:
            raise BenchError(f"The target {target.location} is the store being copied; give another --to.")
        _print_transfer(copy_store(source, target, study), target)


def _print_transfer(counts: dict[str, int], target: Any) -> None:
    console.print(
        f"into {target.kind} {target.location}: {counts['studies']} studies, {counts['runs']} runs, "
        f"{counts['metrics']} metric documents, {counts['steps']} steps"
    )
    if counts["runs_kept"]:
        console.print(f"{counts['runs_kept']} runs already finished there were kept (the incoming copies are unfinished)")
    journal = getattr(target, "journal", None)
    if journal is not None and journal.has_entries():
        err_console.print(f"[yellow]The server became unreachable:[/] some writes wait in {journal.path}; run `bench store sync` when it is back.")


# -- zoo ------------------------------------------------------------------------------


ZOO_KINDS = ("norms", "convs", "activations", "optimizers", "schedules", "archs", "augments", "datasets")


def _registries() -> dict[str, Registry]:
    """``bench zoo`` kind → registry. The declarations are read from the zoo's source:
    listing them imports neither torch nor the zoo's modules."""
    from bench.zoo.registry import REGISTRIES

    by_kind = {f"{registry.kind}s": registry for registry in REGISTRIES.values()}
    return {kind: by_kind[kind] for kind in ZOO_KINDS}


@app.command()
@guarded
def zoo(
    kind: Annotated[str | None, typer.Argument(help=", ".join(ZOO_KINDS) + f", or {TRIAL_KIND} (the options every trial "
                                               "reads, the techniques that stack on any entry among them).")] = None,
    plot: Annotated[
        list[str] | None, typer.Option("--plot", help="schedules only: draw these schedules (repeatable) to --out.", show_default=False)
    ] = None,
    out: Annotated[str | None, typer.Option("--out", help="PNG file for --plot (default: schedule-NAME.png).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="--plot: epochs to draw.")] = 30,
    steps_per_epoch: Annotated[int, typer.Option("--steps-per-epoch", help="--plot: optimizer steps per epoch.")] = 50,
    sets: SetOption = None,
) -> None:
    """What studies can compare: every registered technique, its paper and the options it reads."""
    from bench.errors import UnknownNameError

    if plot:
        if kind != "schedules":
            raise BenchError(f"--plot draws learning-rate schedules: use `bench zoo schedules --plot NAME`; got kind {kind!r}.")
        _plot_schedules(plot, out, epochs, steps_per_epoch, sets or [])
        return
    from bench.zoo.plugins import load_installed

    load_installed()  # installed packages' techniques are listed too
    registries = _registries()
    if kind is None:
        for name, registry in registries.items():
            console.print(f"[bold]{name}[/] ({len(registry)}): {', '.join(registry.names())}")
        switches = [o.name for o in _trial_options() if o.when is None]
        console.print(f"[bold]{TRIAL_KIND}[/] ({len(switches)}): {', '.join(switches)}")
        console.print("`bench zoo KIND` describes each entry and the options it reads.")
        return
    if kind == TRIAL_KIND:
        console.print(_trial_table())
        return
    if kind not in registries:
        raise UnknownNameError("zoo kind", kind, registries, hint=f"`bench zoo {TRIAL_KIND}` lists the trial-level options.")
    console.print(_zoo_table(registries[kind]))


def _zoo_table(registry: Registry) -> Table:
    """One row per entry: its name, its description with the options it reads beneath, its paper."""
    table = Table("name", "description · options (name=default (unit, range): help)", "paper", box=None)
    for entry in registry.entries():
        options = "".join(f"\n  [dim]{escape(option.describe())}[/]" for option in entry.options)
        table.add_row(escape(entry.name), escape(entry.description) + options, escape(entry.paper))
    return table


TRIAL_KIND = "trial"  # `bench zoo trial`: the trial-level options (bench.spec.config.TRIAL_OPTIONS)


def _trial_options() -> tuple[Any, ...]:
    from bench.spec.config import TRIAL_OPTIONS

    return TRIAL_OPTIONS


def _trial_table() -> Table:
    """One row per trial-level option that no other switches on, those it switches on
    beneath it; the help of a technique's option names its paper."""
    options = _trial_options()
    table = Table("option", "default (unit, range): help · the options it switches on", box=None)
    for option in options:
        if option.when is not None:
            continue
        switched = [o for o in options if o.when is not None and o.condition()[0] == option.name]
        text = escape(option.describe().partition("=")[2]) + "".join(
            f"\n  [dim]{escape(o.describe())}[/]" + (f" [dim](with {escape(o.when)})[/]" if "=" in o.when else "")
            for o in switched
        )
        table.add_row(escape(option.name), text)
    return table


def _plot_schedules(names: list[str], out: str | None, epochs: int, steps_per_epoch: int, sets: list[str]) -> None:
    """Draws the named schedules, with the --set values, to a PNG file."""
    from pathlib import Path

    from bench.spec import parse_assignments
    from bench.zoo.registry import SCHEDULES
    from bench.zoo.schedule_plot import save_schedule_plot

    for name in names:
        SCHEDULES.check(name)
    if epochs < 1 or steps_per_epoch < 1:
        raise BenchError(f"--epochs and --steps-per-epoch must be ≥ 1; got {epochs} and {steps_per_epoch}.")
    options = {"epochs": epochs, **parse_assignments(sets), "lr_scaling": "none"}
    path = Path(out or f"schedule-{'-'.join(names)}.png")
    save_schedule_plot(names, options, steps_per_epoch, path)
    console.print(f"Wrote {path} ({', '.join(names)}; {epochs} epochs × {steps_per_epoch} steps).")


def main() -> None:
    app(prog_name="bench")


if __name__ == "__main__":
    main()

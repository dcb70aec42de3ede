"""How the result store scales: fill it with N runs × 50 epochs (and step buckets), then
time what a researcher does with it.

For each run count N the script builds a study whose grid expands to N trials (5 norms ×
8 batch sizes × 5 learning rates × N/200 seeds), writes every run as a grid would (one
upsert per run with its config, summary and environment; its 50 epochs as one batch), the
steps of ``--step-runs`` runs (20 per epoch, written epoch by epoch), then times:

* insert throughput: runs/s, metric documents/s (batched per run), single metric
  upserts/s (one call per epoch: epochs already stored, written again as a replay does;
  and a run's next epochs, as the Recorder writes them), steps/s;
* ``bench results ls`` with a filter, through the CLI in this process (an indexed config
  filter matching N/200 runs; a summary-metric filter with ``--limit 20``);
* loading one study's DataFrame (``bench.load_results``): runs, and per-epoch metrics;
* building the study's report (``bench.report.writer.write_report``), and apart from it
  the study's expansion (``StudySpec.labelled_pairs``: validating and hashing every trial,
  which the report needs before it reads anything).

Targets on a 2-core machine, embedded store, 100,000 runs: a study's DataFrame in under
1 s, its report in under 5 s, a filtered listing in under 0.5 s; the per-epoch DataFrame
of 10,000 runs in under 1 s. Figures are printed, not asserted; the last table has one
column per run count, so two runs of the script (before and after a change) compare line
by line. On a machine busy with other work, ``--cpu`` times by this process's CPU seconds
instead of the wall clock (the insert rates too), which the other work disturbs less.

    python benchmarks/store_scale.py                       # the growth table: 1,000, 10,000, 100,000 runs (minutes)
    python benchmarks/store_scale.py --runs 10000          # one size
    python benchmarks/store_scale.py --dir /tmp/scale --reuse  # keep the stores; later runs skip the filling
    python benchmarks/store_scale.py --runs 2000 --mongo-uri mongodb://localhost:27017  # a server
    python benchmarks/store_scale.py --cpu                 # CPU seconds of this process, not wall-clock ones

With ``--reuse`` a store file already in ``--dir`` holding the N runs is not filled again
(the insert figures are then left out); a file written by an older bench is upgraded in
place when it opens, and the time that took is printed (``open/upgrade (s)``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from bench.cli import app
from bench.provenance import utcnow
from bench.report.frame import load_results
from bench.report.writer import write_report
from bench.spec import load_spec
from bench.store import open_store

NORMS = ["bn", "gn", "ln", "in", "none"]
BATCHES = [2, 4, 8, 16, 32, 64, 128, 256]
LRS = [0.01, 0.02, 0.05, 0.1, 0.2]
CELLS = len(NORMS) * len(BATCHES) * len(LRS)  # trials per seed
STEPS_PER_EPOCH = 20

SPEC = """name: scale
description: Synthetic results for the store benchmark.
base: {{dataset: synthetic, arch: cnn, epochs: {epochs}}}
axes:
  norm: {norms}
  batch_size: {batches}
  lr: {lrs}
seeds: {seeds}
report: {{kind: pivot, rows: norm, columns: batch_size, metric: final_val_acc}}
"""


#: What a timing reads: the wall clock, or this process's CPU time (``--cpu``).
CLOCK: list[Callable[[], float]] = [time.perf_counter]


def clock() -> float:
    return CLOCK[0]()


def best_of(repeat: int, fn: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def cli(store: str, *args: str) -> str:
    result = CliRunner().invoke(app, ["--store", store, *args])
    if result.exit_code != 0:
        raise RuntimeError(f"bench {' '.join(args)} failed: {result.output}")
    return result.output


def fill(store: Any, trials: list, epochs: int, step_runs: int, rng: random.Random) -> dict[str, float]:
    """Writes every run, its epochs and (for the first step_runs runs) its steps."""
    env = {"host": "bench-scale", "torch": "2.x", "device": "cpu: x86_64", "python": "3.11"}
    now = utcnow()
    run_seconds = metric_seconds = 0.0
    for trial in trials:
        acc = rng.uniform(0.1, 0.99)
        fields = {
            "config": trial.to_dict(),
            "derived": {"effective_lr": trial.effective_lr},
            "status": "completed" if rng.random() > 0.02 else "diverged",
            "attempts": 1,
            "started_at": now,
            "heartbeat_at": now,
            "finished_at": now,
            "env": env,
            "summary": {"final_val_acc": acc, "best_val_acc": acc, "final_val_loss": 1 - acc, "epochs_done": epochs,
                        "steps": epochs * STEPS_PER_EPOCH, "train_seconds": 12.5, "samples_per_s": 4000.0},
        }
        start = clock()
        store.upsert_run(trial.trial_id, fields, study="scale")
        run_seconds += clock() - start
        docs = [{"run_id": trial.trial_id, "epoch": e, "train_loss": 2.0 / e, "train_acc": acc * e / epochs, "val_loss": 2.1 / e,
                 "val_acc": acc * e / epochs, "lr": 0.1, "grad_norm": 1.5, "epoch_seconds": 0.25, "samples_per_s": 4000.0}
                for e in range(1, epochs + 1)]
        start = clock()
        store.upsert_metrics(docs)
        metric_seconds += clock() - start
    sample = trials[: max(1, min(len(trials), 2000 // epochs))]
    start = clock()
    singles = 0
    for trial in sample:  # one upsert per epoch, of epochs already stored (a replay, as after an outage)
        for e in range(1, epochs + 1):
            store.upsert_metrics([{"run_id": trial.trial_id, "epoch": e, "val_acc": 0.5, "train_loss": 1.0 / e}])
            singles += 1
    single_seconds = clock() - start
    start = clock()
    for trial in sample:  # the Recorder's pattern: a run's next epoch, one upsert each
        for e in range(epochs + 1, 2 * epochs + 1):
            store.upsert_metrics([{"run_id": trial.trial_id, "epoch": e, "train_loss": 2.0 / e, "train_acc": 0.5, "val_loss": 2.1 / e,
                                   "val_acc": 0.5, "lr": 0.1, "grad_norm": 1.5, "epoch_seconds": 0.25, "samples_per_s": 4000.0}])
    next_seconds = clock() - start
    step_seconds, steps = 0.0, 0
    for trial in trials[:step_runs]:
        for e in range(epochs):
            records = [{"step": e * STEPS_PER_EPOCH + s, "loss": 1.0 / (1 + s), "acc": 0.5, "grad_norm": 1.2,
                        "first_grad_norm": 3.4, "lr": 0.1} for s in range(STEPS_PER_EPOCH)]
            start = clock()
            store.upsert_steps(trial.trial_id, records)
            step_seconds += clock() - start
            steps += len(records)
    return {
        "runs/s": len(trials) / run_seconds,
        "metric docs/s (batched per run)": len(trials) * epochs / metric_seconds,
        "metric docs/s (one per call)": singles / single_seconds,
        "metric docs/s (one per call, next epoch)": singles / next_seconds,
        "steps/s (20 per call)": steps / step_seconds if steps else math.nan,
    }


def measure(n: int, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    seeds = max(1, math.ceil(n / CELLS))
    spec_path = workdir / f"scale-{n}.yaml"
    spec_path.write_text(SPEC.format(epochs=args.epochs, norms=NORMS, batches=BATCHES, lrs=LRS, seeds=list(range(seeds))))
    spec = load_spec(str(spec_path))
    trials = spec.expand()
    if args.mongo_uri:
        location = args.mongo_uri.rstrip("/") + f"/bench_scale_{n}"
    else:
        location = str(workdir / f"scale-{n}.sqlite")
    reuse = args.reuse and not args.mongo_uri and Path(location).is_file()
    start = clock()
    store = open_store(location)
    opened = clock() - start
    try:
        figures: dict[str, float] = {"runs": len(trials)}
        if reuse and store.count_runs({"study": "scale"}) == len(trials):
            figures["open/upgrade (s)"] = opened
        else:
            start = clock()
            figures.update(fill(store, trials, args.epochs, min(args.step_runs, len(trials)), random.Random(0)))
            figures["fill seconds"] = clock() - start
        lr = LRS[2]
        listing = ["results", "ls", "--study", "scale", "--where", "norm=gn", "--where", "batch_size=8", "--where", f"lr={lr}"]
        rows = cli(location, *listing, "--format", "csv").strip().count("\n")
        figures["ls rows"] = rows
        figures["ls filtered (s)"] = best_of(args.repeat, lambda: cli(location, *listing))
        by_metric = ["results", "ls", "--where", "final_val_acc>=0.9", "--where", "norm=bn", "--limit", "20"]
        figures["ls by summary metric, limit 20 (s)"] = best_of(args.repeat, lambda: cli(location, *by_metric))
        figures["DataFrame of the study (s)"] = best_of(args.repeat, lambda: load_results(study="scale", store=store))
        figures["per-epoch DataFrame (s)"] = best_of(
            1 if n > 20_000 else args.repeat, lambda: load_results(study="scale", store=store, metrics=True)
        )
        figures["study expansion, in the report (s)"] = best_of(1, spec.labelled_pairs)
        reports = workdir / f"reports-{n}"
        with contextlib.redirect_stdout(io.StringIO()):
            figures["report (s)"] = best_of(args.repeat, lambda: write_report(spec, store, reports))
        if store.kind == "embedded":
            figures["store MB"] = sum(p.stat().st_size for p in workdir.glob(f"scale-{n}.sqlite*")) / 1e6
    finally:
        if args.mongo_uri and not args.reuse:
            store.client.drop_database(store.database)
        store.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="1000,10000,100000",
                        help="run counts, comma-separated (default 1000,10000,100000; 100,000 takes minutes to fill)")
    parser.add_argument("--epochs", type=int, default=50, help="epochs (metric documents) per run")
    parser.add_argument("--step-runs", type=int, default=200, help="runs that also get per-step buckets")
    parser.add_argument("--repeat", type=int, default=3, help="timings are the best of this many")
    parser.add_argument("--mongo-uri", help="a MongoDB server (database bench_scale_N, dropped after) instead of the embedded store")
    parser.add_argument("--dir", help="where the embedded store files go (default: a temporary directory, removed after)")
    parser.add_argument("--reuse", action="store_true", help="with --dir: time the stores already there instead of filling them again")
    parser.add_argument("--cpu", action="store_true", help="time by this process's CPU seconds instead of the wall clock")
    args = parser.parse_args()
    CLOCK[0] = time.process_time if args.cpu else time.perf_counter
    counts = [int(v) for v in args.runs.split(",") if v.strip()]
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict[str, float]] = {}
    try:
        for n in counts:
            print(f"--- {n:,} runs × {args.epochs} epochs ({'MongoDB' if args.mongo_uri else 'embedded store'})", flush=True)
            results[n] = measure(n, args, workdir)
            for key, value in results[n].items():
                print(f"{key:>40}: {value:,.3f}" if isinstance(value, float) else f"{key:>40}: {value:,}", flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    if results:
        ordered = sorted(results)
        keys = list(dict.fromkeys(k for n in ordered for k in results[n]))
        print(f"\nfigures by run count ({'CPU ' if args.cpu else ''}seconds for the timings)")
        print(f"{'':>40} " + " ".join(f"{n:>12,}" for n in ordered))
        for key in keys:
            print(f"{key:>40} " + " ".join(f"{results[n][key]:>12,.3f}" if key in results[n] else f"{'-':>12}" for n in ordered))
    if len(results) > 1:
        print("\ngrowth (time ratio per 10× runs; 10 = linear)")
        keys = [k for k in keys if k.endswith("(s)") and all(k in results[n] for n in ordered)]
        for key in keys:
            ratios = [results[b][key] / results[a][key] / (b / a) * 10 for a, b in zip(ordered, ordered[1:], strict=False) if results[a][key] > 0]
            if ratios:
                print(f"{key:>40}: ×{statistics.fmean(ratios):.1f} per 10× runs")


if __name__ == "__main__":
    main()

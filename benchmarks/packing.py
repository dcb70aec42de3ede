"""Several trials per device: what packing small trials does to throughput.

Runs the same small grid (``--trials`` trials of a small CNN, on a dataset that needs no
files) through Ray Tune once per packing, each in a fresh store, and prints the grid's
aggregate throughput (all trials' training samples / wall time of the grid, Ray start-up
excluded) and each trial's own samples/s. On a GPU machine the packings are fractions of a
GPU per trial (``--gpus-per-trial 1, 0.5, 0.25``: 1, 2, 4 trials share a device); on a CPU
machine, CPUs per trial.

    python benchmarks/packing.py --device cuda --fractions 1,0.5,0.25      # GPU machine
    python benchmarks/packing.py --fractions 2,1                             # CPU: cpus per trial
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cuda: fractions are GPUs per trial; cpu: CPUs per trial")
    parser.add_argument("--fractions", default=None, help="default: 1,0.5,0.25 (cuda) or 2,1 (cpu)")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args()

    import ray
    import torch
    import yaml

    from bench.grid import GridOptions
    from bench.grid.run import run_study
    from bench.spec import load_spec
    from bench.store import EmbeddedStore

    gpu = args.device.startswith("cuda")
    fractions = [float(f) for f in (args.fractions or ("1,0.5,0.25" if gpu else "2,1")).split(",")]
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    what = torch.cuda.get_device_name(0) if gpu else f"{os.cpu_count()} CPUs"
    print(f"{args.trials} trials of cnn width {args.width}, {args.dataset}, batch {args.batch_size}, "
          f"{args.epochs} epochs, on {what}")
    print(f"{'per trial':>10} {'at once':>8} {'grid s':>8} {'aggregate samples/s':>20} {'per-trial samples/s':>20}")
    try:
        for fraction in fractions:
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
                yaml.safe_dump({
                    "name": f"packing-{fraction:g}",
                    "base": {"dataset": args.dataset, "arch": "cnn", "width": args.width, "epochs": args.epochs,
                             "batch_size": args.batch_size},
                    "seeds": list(range(args.trials)),
                }, f)
            spec = load_spec(f.name)
            os.unlink(f.name)
            options = GridOptions(
                executor="ray", device=args.device, cpus_per_trial=1.0 if gpu else fraction,
                gpus_per_trial=fraction if gpu else 0.0,
            )
            with tempfile.TemporaryDirectory() as tmp, EmbeddedStore(Path(tmp) / "s.sqlite") as store:
                started = time.perf_counter()
                outcome = run_study(spec, store, options)
                wall = time.perf_counter() - started
                runs = store.find_runs({"status": "completed"})
            assert outcome.counts["completed"] == args.trials, outcome.counts
            samples = sum(r["summary"]["steps"] * args.batch_size for r in runs)
            own = statistics.median(r["summary"]["samples_per_s"] for r in runs)
            at_once = int(1 / fraction) if gpu else max(1, int((os.cpu_count() or 1) / fraction))
            print(f"{fraction:>10g} {at_once:>8} {wall:>8.1f} {samples / wall:>20.0f} {own:>20.0f}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()

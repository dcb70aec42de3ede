"""Start-up time of the commands a user runs most, and which heavy libraries they import.

Each command runs in a fresh interpreter (``python -m bench.cli ...``) against an empty
embedded store made in a temporary directory; the figure is the best of ``--repeats`` wall
times. The second table says whether torch, timm or torchvision were imported (the
interpreter is started with ``-X importtime``, whose log names every module it imports).
Target on a 2-core machine: the store and listing commands under 1.5 s, with none of the
three imported; ``bench zoo norms`` may import torch but not timm.

    python benchmarks/startup.py
    python benchmarks/startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "timm", "torchvision")
TARGET_S = 1.5

COMMANDS: list[tuple[str, ...]] = [
    ("--help",),
    ("grid", "--list"),
    ("results", "ls"),
    ("store", "status"),
    ("report", "tiny"),
    ("zoo", "norms"),
]

TINY = """\
name: tiny
description: a two-trial study for the start-up benchmark
base: {dataset: digits, epochs: 1}
axes: {norm: [bn, gn]}
report: {sections: [{kind: pivot, rows: norm, columns: batch_size}]}
"""


def run_once(args: tuple[str, ...], cwd: Path, env: dict[str, str]) -> tuple[float, set[str], int]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bench.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - started
    imported = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            module = line.rsplit("|", 1)[1].strip()
            top = module.split(".")[0]
            if top in HEAVY:
                imported.add(top)
    return seconds, imported, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "ablations").mkdir()
        (cwd / "ablations" / "tiny.yaml").write_text(TINY)
        env = {**os.environ, "BENCH_STORE": str(cwd / "results.sqlite"), "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("BENCH_MONGO_URI", None)
        create = "from bench.store import open_store; open_store(%r).close()" % str(cwd / "results.sqlite")
        subprocess.run([sys.executable, "-c", create], env=env, check=True)  # read commands need an existing store
        print(f"{'command':<22} {'best s':>7} {'exit':>5}  heavy imports   (target: < {TARGET_S} s, none of {', '.join(HEAVY)})")
        for command in COMMANDS:
            times, heavy, code = [], set(), 0
            for _ in range(args.repeats):
                seconds, imported, code = run_once(command, cwd, env)
                times.append(seconds)
                heavy |= imported
            label = "bench " + " ".join(command)
            print(f"{label:<22} {min(times):>7.2f} {code:>5}  {', '.join(sorted(heavy)) or '-'}")


if __name__ == "__main__":
    main()

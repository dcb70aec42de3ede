"""One trial inside its container: the Docker executor's worker.

    python3 -m bench.grid.docker_worker TRIAL_ID [--data-dir DIR] [--device cuda] [--keep-checkpoints]
    python3 -m bench.grid.docker_worker --check

The grid's driver (:mod:`bench.grid.docker_executor`, outside the container) has claimed
the trial in the store and keeps its heartbeat; it passes its driver id and the store
(``BENCH_STORE``: the embedded file, mounted at its own path; or ``BENCH_MONGO_URI``) in
the environment. The worker reads the trial's config from the store by id, checks that
the driver still holds it, and trains it with :func:`~bench.grid.local.run_recorded`, as
``bench train`` and the local executor do: each epoch, its steps, each checkpoint (under
``BENCH_CHECKPOINT_DIR``, mounted, so a later attempt resumes from it) and the node are
written to the store from here, as they come. The outcome goes back to the driver on the
log's last line (:data:`RESULT_MARK` and JSON), and the driver records it with the
attempt's history: a container that ends without that line (killed, out of memory, a
crash) fails its trial with the container's log.

SIGTERM (``docker stop``, or the driver's lifeline breaking: the driver was killed) stops
the trial at the next step boundary with a checkpoint, and the worker exits 143.

``--check`` finds the trainer's packages and the plugins' files, opens the store and writes
into the checkpoint directory, without importing torch: the driver runs it once before a
grid, so that an image that cannot train, or a store or directory the container cannot
reach, is one error before anything runs. Nothing here imports the Docker SDK.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import sys
import tempfile
import threading
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.grid.recorder import Recorder

if TYPE_CHECKING:
    from bench.spec import TrialConfig
    from bench.store import ResultStore
    from bench.trial import TrialResult

RESULT_MARK = "bench-docker-result: "  # the outcome's line in the container's log
ENV_DRIVER = "BENCH_DOCKER_DRIVER"  # the id of the grid's driver, which holds the claim
ENV_NODE = "BENCH_DOCKER_NODE"  # JSON: where the attempt runs (host, container, image)
ENV_PLUGINS = "BENCH_DOCKER_PLUGINS"  # JSON: the driver's plugins (mounted paths, or module names)
ENV_LIFELINE = "BENCH_DOCKER_LIFELINE"  # the driver's Unix socket; closed when the driver ends
EXIT_NOT_HELD = 75  # the driver no longer holds the trial: nothing was trained (EX_TEMPFAIL)
EXIT_ERROR = 2  # the store, the config or a plugin failed before training
EXIT_STOPPED = 143  # SIGTERM: stopped at a step boundary, checkpoint kept


class HeldRecorder(Recorder):
    """The container's recorder. The grid's driver holds the claim and beats the
    heartbeat; this one writes the trial's epochs, steps, checkpoints and node to the store,
    and leaves the outcome (status, summary, history) to the driver."""

    def __init__(self, store: ResultStore, driver: str, node: dict[str, Any]) -> None:
        super().__init__(store, "", 1)
        self.driver, self.node = driver, node

    def started(self, trial_id: str) -> bool:
        """True while the trial is ``running`` under this grid's driver (never a claim)."""
        run = self.store.get_run(trial_id) or {}
        held = run.get("status") == "running" and run.get("driver") == self.driver
        if held:
            self.active.add(trial_id)
        return held

    def ran_on(self, trial_id: str, node: dict[str, Any]) -> None:
        super().ran_on(trial_id, {**node, **self.node})  # the driver's host, not the container's

    def finished(self, trial_id: str, result: TrialResult) -> None:
        self.active.discard(trial_id)  # the driver records the outcome


def outcome(result: TrialResult) -> dict[str, Any]:
    """What the driver needs of a finished attempt, as JSON."""
    return {
        "status": result.status, "summary": result.summary, "error": result.error, "env": result.env,
        "resumed_from": result.resumed_from, "artifacts": result.artifacts,
    }


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # held by the trainer to the next step boundary, then raised


def _watch_driver() -> None:
    """Holds the driver's lifeline open; when the driver ends (even killed), the kernel
    closes it, and the trial stops as on ``docker stop``."""
    path = os.environ.get(ENV_LIFELINE)
    if not path:
        return
    line = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        line.connect(path)
    except OSError as exc:
        print(f"warning: no lifeline to the grid's driver ({path}: {exc}); the trial runs on if it ends", file=sys.stderr)
        return

    def watch() -> None:
        try:
            while line.recv(64):
                pass
        except OSError:
            pass
        print("The grid's driver has ended: stopping the trial at the next step, with a checkpoint.", file=sys.stderr)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="bench-lifeline", daemon=True).start()


def _load_plugins() -> None:
    from bench.zoo.plugins import load_plugins

    load_plugins(json.loads(os.environ.get(ENV_PLUGINS) or "[]"), origin="grid driver")


def _threads() -> None:
    """Torch threads: the CPUs the trial reserved (``OMP_NUM_THREADS``, set by the driver)."""
    import torch

    torch.set_num_threads(max(1, int(float(os.environ.get("OMP_NUM_THREADS") or 1))))


def trial_config(store: ResultStore, trial_id: str) -> TrialConfig:
    """The trial's config as its grid registered it."""
    from bench.spec.config import from_mapping

    run = store.get_run(trial_id)
    if not run or not isinstance(run.get("config"), dict):
        raise BenchError(f"The store {store.location} holds no config for trial {trial_id}.")
    config = from_mapping(run["config"])
    if config.trial_id != trial_id:
        raise BenchError(
            f"The stored config of {trial_id} has id {config.trial_id} here: this image's bench declares its options "
            "differently from the driver's. Build the image from the same code."
        )
    return config


def _epoch_line(metrics: dict[str, Any]) -> None:
    print(f"epoch {metrics.get('epoch')}: train loss {metrics.get('train_loss')}, val acc {metrics.get('val_acc')}",
          file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Trains the trial; prints its outcome for the driver."""
    from bench.grid.local import run_recorded
    from bench.store import opened_store

    _watch_driver()
    _load_plugins()
    _threads()
    with opened_store(None) as store:
        config = trial_config(store, args.trial_id)
        recorder = HeldRecorder(store, os.environ.get(ENV_DRIVER, ""), json.loads(os.environ.get(ENV_NODE) or "{}"))
        result = run_recorded(
            config, recorder, on_epoch=_epoch_line, data_dir=args.data_dir, device=args.device,
            keep_checkpoints=args.keep_checkpoints,
        )
    if result is None:
        print(f"Trial {args.trial_id} is no longer held by this grid's driver: not trained.", file=sys.stderr)
        return EXIT_NOT_HELD
    print(RESULT_MARK + json.dumps(outcome(result)), flush=True)
    return 0


def check() -> int:
    """What a trial needs, without training and without importing torch (seconds on a busy
    machine): the trainer's packages, the plugins' files, the store, the checkpoint directory."""
    from bench.store import opened_store

    missing = [name for name in ("torch", "torchvision", "timm") if importlib.util.find_spec(name) is None]
    if missing:
        raise BenchError(f"{', '.join(missing)} not installed in this image (python3 is {sys.executable}).")
    refs = json.loads(os.environ.get(ENV_PLUGINS) or "[]")
    absent = [ref for ref in refs if ref.startswith("/") and not os.path.exists(ref)]
    if absent:
        raise BenchError(f"The plugins {', '.join(absent)} are not mounted in the container.")
    with opened_store(None) as store:
        where = f"{store.kind} {store.location}"
    directory = os.environ.get("BENCH_CHECKPOINT_DIR") or ".bench/checkpoints"  # the driver always sets it
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".bench-check-"):
        pass
    print(f"bench {_version()} · python {sys.version.split()[0]} · store {where} · checkpoints {directory}", flush=True)
    return 0


def _version() -> str:
    import bench

    return bench.__version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.grid.docker_worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("trial_id", nargs="?")
    parser.add_argument("--check", action="store_true", help="import the trainer, open the store; train nothing")
    parser.add_argument("--data-dir")
    parser.add_argument("--device")
    parser.add_argument("--keep-checkpoints", action="store_true")
    args = parser.parse_args(argv)
    if not args.check and not args.trial_id:
        parser.error("give a trial id, or --check")
    signal.signal(signal.SIGTERM, _stop)  # PID 1 in a container ignores SIGTERM without a handler
    try:
        return check() if args.check else run(args)
    except KeyboardInterrupt:
        print("Stopped (SIGTERM); the trial's checkpoint is kept.", file=sys.stderr)
        return EXIT_STOPPED
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

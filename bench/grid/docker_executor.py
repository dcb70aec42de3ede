"""The ``docker`` executor: each trial in its own container, on the Docker SDK (PyPI ``docker``).

The driver (this process) claims each trial in the store and keeps its heartbeat through
the grid's :class:`~bench.grid.recorder.Recorder`, as the other executors do, then starts a
container of the declared image running :mod:`bench.grid.docker_worker` for that trial
id. The container opens the same store (the embedded file's directory mounted at its own
path, or the MongoDB URI passed in) and trains the trial with
:func:`~bench.grid.local.run_recorded`, writing its epochs, steps, checkpoints and node
there itself; its outcome comes back on the last line of its log and the driver records
it, with the attempt's history. A container that ends without an outcome (killed, out of
memory, a crash) fails its trial with the container's log as the error, and so does a
trial that fails inside it (its log, then the traceback). So resume, dedupe and two grids
sharing a store work as with the other executors: the claims, heartbeats and the checks
of an ended driver are the same.

Containers are labelled with their driver (``host:pid:token`` and its start time).
Finished ones are removed; on the way out (Ctrl-C, SIGTERM, an error) the running ones are
stopped (their trial checkpoints at the next step boundary) and removed. A driver killed
outright cannot do that: each container holds a lifeline to it (a Unix socket the kernel
closes when the driver dies) and stops itself the same way; the next grid on this host
removes the containers of drivers that have ended.

Nothing is guessed: the image is never pulled, and the mounts are the store, checkpoint,
journal and data directories at their own paths, the plugins' files (read-only), the
driver's lifeline, and the grid's ``--mount``s. The engine must therefore see this
machine's paths (a local engine: ``DOCKER_HOST`` or the default socket). Containers run
as the driver's user, so the files they write are the driver's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.grid.docker_worker import (
    ENV_DRIVER, ENV_LIFELINE, ENV_NODE, ENV_PLUGINS, EXIT_NOT_HELD, EXIT_STOPPED, RESULT_MARK,
)
from bench.store.base import driver_gone, process_start

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from bench.grid.options import GridOptions
    from bench.grid.recorder import Recorder
    from bench.spec import TrialConfig
    from bench.store import ResultStore
    from bench.trial import TrialResult

log = logging.getLogger(__name__)

WORKER = ["python3", "-m", "bench.grid.docker_worker"]  # the entry point run in the image
LABEL_DRIVER = "bench.driver"  # host:pid:token of the grid's driver
LABEL_START = "bench.driver_start"  # the driver process's start time (tells a reused pid)
LABEL_TRIAL = "bench.trial"
LABEL_STUDY = "bench.study"
CONNECT_TIMEOUT = 10  # seconds for the engine to answer at all
API_TIMEOUT = 120  # seconds for one API call once it has
STOP_GRACE = 30  # seconds a stopped container has to reach a step boundary and checkpoint
CHECK_TIMEOUT = 300  # seconds the image's check may take (imports torch on a busy machine)
POLL_EVERY = 0.5  # seconds between looks at the running containers
LOG_LINES = 200  # lines of a failed container's log kept in the run's error
MEMORY_RE = re.compile(r"\d+(\.\d+)?[bkmg]?", re.I)
ENV_GPUS = "BENCH_DOCKER_GPUS"  # the engine's GPUs the executor hands out (e.g. 0,1,2,3)
LIFELINE_PREFIX = "bench-lifeline-"  # the driver's lifeline directory, in the temporary directory


# -- options ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    """One bind mount: a path of this machine at ``target`` in every container."""

    source: str
    target: str
    read_only: bool = False

    def bind(self) -> str:
        return f"{self.source}:{self.target}:{'ro' if self.read_only else 'rw'}"


def parse_mount(text: str) -> Mount:
    """``SOURCE:TARGET[:ro|rw]``: the source must exist here, the target be absolute."""
    parts = text.split(":")
    mode = parts[2] if len(parts) == 3 else "rw"
    if len(parts) not in (2, 3) or not parts[0] or not parts[1] or mode not in ("ro", "rw"):
        raise BenchError(
            f"--mount {text!r}: write SOURCE:TARGET, SOURCE:TARGET:ro or SOURCE:TARGET:rw (a path of this machine, "
            "the absolute path it has in every trial's container, read-only or not)."
        )
    source = Path(parts[0]).expanduser().resolve()
    if not source.exists():
        raise BenchError(f"--mount {text!r}: {source} does not exist on this machine, so no container can mount it.")
    if not PurePosixPath(parts[1]).is_absolute():
        raise BenchError(f"--mount {text!r}: the target {parts[1]!r} must be an absolute path inside the container.")
    return Mount(str(source), parts[1], mode == "ro")


def check_options(options: GridOptions) -> None:
    """The docker options alone (no engine): the image is named, mounts and memory are
    well formed, GPUs per trial are whole or a share 1/k of one. Other executors take none."""
    given = [name for name, value in (("--image", options.image), ("--mount", options.mounts),
                                      ("--memory-per-trial", options.memory_per_trial),
                                      ("--network", options.network)) if value]
    if options.executor != "docker":
        if given:
            raise BenchError(f"{', '.join(given)} apply to --executor docker only (this grid runs on {options.executor}).")
        return
    if not options.image:
        raise BenchError(
            "--executor docker needs --image IMAGE (or BENCH_DOCKER_IMAGE): the image each trial's container runs, "
            "with bench installed and python3 on its PATH. docker/build-image.sh builds the project's image offline; "
            "docs/DOCKER.md has the details."
        )
    for text in options.mounts:
        parse_mount(text)
    if options.memory_per_trial and not MEMORY_RE.fullmatch(options.memory_per_trial):
        raise BenchError(f"--memory-per-trial {options.memory_per_trial!r}: give bytes or a size such as 512m or 4g.")
    gpu_share(options.gpus_per_trial)


def gpu_share(gpus: float | None) -> tuple[int, int]:
    """(GPUs each container gets, containers per GPU): a whole number of GPUs per trial,
    or a share 1/k of one (k containers on the same GPU); (0, 0) without GPUs."""
    if not gpus:
        return 0, 0
    if gpus >= 1 and gpus == int(gpus):
        return int(gpus), 1
    k = round(1 / gpus)
    if gpus < 1 and math.isclose(k * gpus, 1.0):
        return 1, k
    raise BenchError(
        f"--gpus-per-trial {gpus:g}: a container gets whole GPUs (1, 2, ...) or a share 1/k of one (0.5, 0.25, ...)."
    )


# -- the engine --------------------------------------------------------------------------


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def connect() -> DockerClient:
    """A client of the engine at ``DOCKER_HOST`` (else the default socket) that answered."""
    try:
        import docker
    except ImportError:
        raise BenchError(
            "--executor docker runs trials with the Docker SDK for Python, which is not installed here: "
            "pip install docker (or pip install 'ablation-bench[docker]')."
        ) from None
    try:
        client = docker.from_env(timeout=CONNECT_TIMEOUT)
        client.ping()
    except docker.errors.DockerException as exc:
        raise BenchError(
            f"No Docker engine answers at {engine_address()} ({_first_line(exc)}). Start one (dockerd, or the Docker "
            "service) or point DOCKER_HOST at it (`docker info` asks the same engine); nothing was run."
        ) from None
    client.api.timeout = API_TIMEOUT
    return client


def check_engine(options: GridOptions) -> None:
    """Before anything is written: the options, an engine that answers, the image on it,
    GPUs for the trials that ask for them. Containers left by grids of this host that have
    ended are removed."""
    check_options(options)
    client = connect()
    try:
        check_image(client, options.image or "")
        gpu_slots(options.gpus_per_trial)
        removed = remove_orphans(client)
        if removed:
            log.warning("Removed %d container(s) left by a grid of this machine that has ended.", removed)
    finally:
        client.close()


def check_image(client: DockerClient, image: str) -> None:
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise BenchError(
            f"The image {image!r} is not on the Docker engine at {engine_address()}; trials never pull images. Build it "
            f"first (docker/build-image.sh {image}, or docker build -t {image} .), or name an image `docker images` lists."
        ) from None


def remove_orphans(client: DockerClient) -> int:
    """Removes the containers of drivers of this host that have ended (killed, or stopped
    before they could clean up); the containers of live grids are theirs."""
    removed = 0
    for info in client.api.containers(all=True, filters={"label": LABEL_DRIVER}):
        labels = info.get("Labels") or {}
        if driver_gone(labels.get(LABEL_DRIVER), labels.get(LABEL_START) or None):
            _remove_lifeline(client, info["Id"])
            _remove(client, info["Id"])
            removed += 1
    return removed


def _remove_lifeline(client: DockerClient, container_id: str) -> None:
    """The lifeline directory an ended driver left in the temporary directory."""
    import docker

    try:
        env = client.api.inspect_container(container_id)["Config"].get("Env") or []
    except docker.errors.APIError:
        return
    for entry in env:
        name, _, value = entry.partition("=")
        if name == ENV_LIFELINE and Path(value).parent.name.startswith(LIFELINE_PREFIX):
            shutil.rmtree(Path(value).parent, ignore_errors=True)


def _remove(client: DockerClient, container_id: str) -> None:
    import docker

    try:
        client.api.remove_container(container_id, force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        log.warning("Could not remove the container %s: %s", container_id[:12], _first_line(exc))


def gpu_inventory() -> list[str]:
    """The GPUs the engine may hand out: ``$BENCH_DOCKER_GPUS`` (``0,1``), else those
    ``nvidia-smi`` lists on this machine (the engine's: the executor needs a local engine)."""
    declared = os.environ.get(ENV_GPUS, "").strip()
    if declared:
        return [g.strip() for g in declared.split(",") if g.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def gpu_slots(gpus_per_trial: float | None) -> list[list[str]] | None:
    """The device ids each running container may take, one list per container that can
    run at once; None when trials take no GPU."""
    each, per_gpu = gpu_share(gpus_per_trial)
    if not each:
        return None
    gpus = gpu_inventory()
    slots = [gpus[i:i + each] for i in range(0, len(gpus) - each + 1, each)] * per_gpu
    if not slots:
        raise BenchError(
            f"--gpus-per-trial {gpus_per_trial:g} asks for GPUs, but this machine has {len(gpus) or 'no'} GPU(s) to give "
            f"(nvidia-smi; or name the engine's GPUs with {ENV_GPUS}=0,1,...). Containers get GPUs through the NVIDIA "
            "Container Toolkit."
        )
    return slots


# -- what every container of a grid gets ---------------------------------------------------


@dataclass
class Settings:
    """The parts of every trial's container that do not depend on the trial."""

    image: str
    mounts: list[Mount]
    environment: dict[str, str]
    network: str
    user: str
    nano_cpus: int
    memory: str | None
    worker_args: list[str] = field(default_factory=list)

    def create_args(self, gpus: list[str] | None = None) -> dict[str, Any]:
        """Keyword arguments of ``containers.run`` for a container taking ``gpus``."""
        args: dict[str, Any] = {
            "image": self.image, "entrypoint": WORKER, "environment": dict(self.environment),
            "volumes": [m.bind() for m in self.mounts], "network_mode": self.network,
            "user": self.user, "nano_cpus": self.nano_cpus, "detach": True,
        }
        if self.memory:
            args.update(mem_limit=self.memory, memswap_limit=self.memory)  # no swap beyond the limit
        if gpus:
            from docker.types import DeviceRequest

            args["device_requests"] = [DeviceRequest(device_ids=list(gpus), capabilities=[["gpu"]])]
        return args


def settings(options: GridOptions, store: ResultStore, lifeline: str | None = None) -> Settings:
    """What every container of the grid gets: the store, checkpoint, journal and data
    directories and the plugins at their own paths, the grid's mounts, the CPUs and memory
    of a trial, this user, and the network (``none`` with the embedded store, ``host`` with
    MongoDB, unless ``options.network``)."""
    from bench.trial.checkpoint import checkpoint_dir

    env, mounts = store_access(store)
    checkpoints = checkpoint_dir()
    checkpoints.mkdir(parents=True, exist_ok=True)
    data = data_directory(options)
    env.update(BENCH_CHECKPOINT_DIR=str(checkpoints), BENCH_DATA_DIR=str(data), HOME="/tmp", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS=str(max(1, int(options.cpus_per_trial))))
    mounts.append(Mount(str(checkpoints), str(checkpoints)))
    if data.is_dir():
        mounts.append(Mount(str(data), str(data), read_only=True))
    env[ENV_PLUGINS], plugin_mounts = plugin_access()
    mounts += plugin_mounts
    if lifeline:
        env[ENV_LIFELINE] = lifeline
        mounts.append(Mount(str(Path(lifeline).parent), str(Path(lifeline).parent), read_only=True))
    mounts += [parse_mount(text) for text in options.mounts]
    worker = ["--data-dir", str(data)] + (["--device", options.device] if options.device else [])
    return Settings(
        image=options.image or "", mounts=merged(mounts), environment=env,
        network=options.network or ("host" if store.kind == "mongodb" else "none"),
        user=f"{os.getuid()}:{os.getgid()}", nano_cpus=int(options.cpus_per_trial * 1e9),
        memory=options.memory_per_trial,
        worker_args=worker + (["--keep-checkpoints"] if options.keep_checkpoints else []),
    )


def store_access(store: ResultStore) -> tuple[dict[str, str], list[Mount]]:
    """How a container opens this store: the embedded file's directory mounted at its own
    path, or the MongoDB URI; and the store's write journal, where it is not beside the file."""
    journal = Path(store.journal.path).parent
    journal.mkdir(parents=True, exist_ok=True)
    if store.kind == "embedded":
        path = Path(store.path)  # type: ignore[attr-defined]
        env = {"BENCH_STORE": str(path), "BENCH_MONGO_URI": ""}  # an image's own MongoDB URI would win
        mounts = [Mount(str(path.parent), str(path.parent))]
        if os.environ.get("BENCH_JOURNAL_DIR", "").strip():
            env["BENCH_JOURNAL_DIR"] = str(journal)
            mounts.append(Mount(str(journal), str(journal)))
        return env, mounts
    uri = getattr(store, "_uri", None)
    if not uri:
        raise BenchError(
            f"The store {store.location} was opened from a client object, not a URI, so no container can open it. "
            "Open it with a mongodb:// URI (--mongo-uri or BENCH_MONGO_URI)."
        )
    return {"BENCH_MONGO_URI": uri, "BENCH_JOURNAL_DIR": str(journal)}, [Mount(str(journal), str(journal))]


def data_directory(options: GridOptions) -> Path:
    """The data directory the driver checked: ``--data-dir``, else the default."""
    if options.data_dir:
        return Path(options.data_dir).expanduser().resolve()
    from bench.zoo.datasets import default_data_dir

    return default_data_dir().expanduser().resolve()


def plugin_access() -> tuple[str, list[Mount]]:
    """The driver's plugins for the worker (their paths, or module names) and their files,
    mounted read-only at their own paths."""
    from bench.zoo.plugins import loaded

    plugins = loaded()
    refs = [p.path or p.module for p in plugins]
    return json.dumps(refs), [Mount(p.path, p.path, read_only=True) for p in plugins if p.path]


def merged(mounts: list[Mount]) -> list[Mount]:
    """One mount per target: the same source twice is mounted once (writable if either
    is); two sources at one target are refused."""
    by_target: dict[str, Mount] = {}
    for mount in mounts:
        seen = by_target.get(mount.target)
        if seen is not None and seen.source != mount.source:
            raise BenchError(
                f"Two mounts at {mount.target} in the containers: {seen.source} and {mount.source}. "
                "Give the --mount another target."
            )
        by_target[mount.target] = Mount(mount.source, mount.target, mount.read_only and (seen is None or seen.read_only))
    return list(by_target.values())


def labels(driver: str, driver_start: str | None, **more: str) -> dict[str, str]:
    return {LABEL_DRIVER: driver, LABEL_START: driver_start or "", **more}


# -- before the first trial ----------------------------------------------------------------


def check_image_runs(options: GridOptions, store: ResultStore) -> None:
    """One container of the image, with every mount and setting a trial gets, finds the
    trainer's packages, opens the store and writes to the checkpoint directory, before
    anything is written: an image without bench, a store the container cannot reach, a
    directory it cannot write, or GPUs the engine cannot give are one error here."""
    client = connect()
    try:
        status, output = _check(client, options, store)
    finally:
        client.close()
    if status != 0:
        raise BenchError(
            f"A container of {options.image!r} cannot run a trial here: `{' '.join(WORKER)} --check` exited with "
            f"status {status}. The image needs bench (and torch) importable by python3 on its PATH, and the store, "
            f"checkpoint and data directories reachable. Its log:\n{output.strip()}"
        )


def _check(client: DockerClient, options: GridOptions, store: ResultStore) -> tuple[int | None, str]:
    """Runs the worker's ``--check`` in a container of the image: its exit status and log."""
    import docker

    slots = gpu_slots(options.gpus_per_trial)
    args = settings(options, store).create_args(slots[0] if slots else None)
    driver = f"{socket.gethostname()}:{os.getpid()}:check"
    try:
        container = client.containers.run(command=["--check"], labels=labels(driver, process_start(os.getpid())), **args)
    except docker.errors.APIError as exc:
        raise BenchError(f"The Docker engine would not start a container of {options.image!r}: {_first_line(exc)}.") from None
    try:
        return container.wait(timeout=CHECK_TIMEOUT).get("StatusCode"), _log(container)
    except Exception as exc:  # noqa: BLE001 - a check that hangs or breaks is an error like any
        raise BenchError(f"The image {options.image!r} did not finish its check in {CHECK_TIMEOUT} s ({_first_line(exc)}).") from None
    finally:
        _remove(client, container.id)


# -- the executor ------------------------------------------------------------------------------


def run_in_containers(todo: list[TrialConfig], recorder: Recorder, options: GridOptions) -> None:
    """Runs the trials, each in its own container, at most ``options.max_concurrent`` at
    once (default: the engine's CPUs over ``cpus_per_trial``, and the GPUs' slots)."""
    import docker
    import requests

    client = connect()
    try:
        with Lifeline() as lifeline:
            Launcher(client, recorder, options, lifeline.path).run(todo)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise BenchError(
            f"The Docker engine at {engine_address()} stopped answering ({_first_line(exc)}). The trials still running "
            "are marked interrupted; run the same command again once the engine is back: they resume from their "
            "checkpoints."
        ) from None
    finally:
        client.close()


@dataclass
class Started:
    """A trial's running container."""

    trial_id: str
    container: Container
    gpus: list[str] | None


class Launcher:
    """Starts claimed trials' containers up to the limit, records each as it exits,
    and stops the others on the way out."""

    def __init__(self, client: DockerClient, recorder: Recorder, options: GridOptions, lifeline: str) -> None:
        self.client, self.recorder, self.image = client, recorder, options.image or ""
        self.settings = settings(options, recorder.store, lifeline)
        slots = gpu_slots(options.gpus_per_trial)
        self.gpus: deque[list[str]] | None = deque(slots) if slots is not None else None
        cpus = client.info().get("NCPU") or os.cpu_count() or 1
        self.limit = options.max_concurrent or max(1, math.floor(cpus / options.cpus_per_trial))
        self.running: dict[str, Started] = {}
        self.host = socket.gethostname()

    def run(self, todo: list[TrialConfig]) -> None:
        queue = deque(todo)
        try:
            while queue or self.running:
                self._fill(queue)
                if self.running:
                    time.sleep(POLL_EVERY)
                    self._reap()
        finally:
            self._stop_all()

    def _free(self) -> bool:
        return len(self.running) < self.limit and (self.gpus is None or bool(self.gpus))

    def _fill(self, queue: deque[TrialConfig]) -> None:
        while queue and self._free():
            config = queue.popleft()
            if self.recorder.started(config.trial_id):  # refused: another grid holds it (counted as skipped)
                self._start(config.trial_id)

    def _start(self, trial_id: str) -> None:
        import docker

        gpus = self.gpus.popleft() if self.gpus is not None else None
        name = f"bench-{trial_id}-{self.recorder.driver.rsplit(':', 1)[-1]}"
        node = {"hostname": self.host, "container": name, "image": self.image}
        environment = {**self.settings.environment, ENV_DRIVER: self.recorder.driver, ENV_NODE: json.dumps(node)}
        args = {**self.settings.create_args(gpus), "environment": environment}
        try:
            container = self.client.containers.run(
                command=[trial_id, *self.settings.worker_args], name=name, **args,
                labels=labels(self.recorder.driver, self.recorder.driver_start, **{LABEL_TRIAL: trial_id, LABEL_STUDY: self.recorder.study}),
            )
        except docker.errors.APIError as exc:
            self._give_back(gpus)
            self.recorder.crashed(trial_id, f"The Docker engine would not start the trial's container {name}: {_first_line(exc)}")
            return
        self.recorder.ran_on(trial_id, node)
        self.running[trial_id] = Started(trial_id, container, gpus)

    def _give_back(self, gpus: list[str] | None) -> None:
        if self.gpus is not None and gpus is not None:
            self.gpus.append(gpus)

    def _reap(self) -> None:
        """Records the trials whose containers have exited."""
        states = {
            info["Id"]: info.get("State")
            for info in self.client.api.containers(all=True, filters={"label": f"{LABEL_DRIVER}={self.recorder.driver}"})
        }
        for trial_id, started in list(self.running.items()):
            if states.get(started.container.id) not in ("created", "running", "restarting", "paused"):
                self._finish(started)

    def _finish(self, started: Started, stopping: bool = False) -> None:
        """Records the trial of an exited container (its outcome, or its crash with the
        log), then removes the container. While ``stopping`` a container without an outcome
        is left to :meth:`~bench.grid.recorder.Recorder.interrupt_unfinished`."""
        self.running.pop(started.trial_id, None)
        self._give_back(started.gpus)
        try:
            state = self.client.api.inspect_container(started.container.id)["State"]
            output = _log(started.container)
        except Exception as exc:  # noqa: BLE001 - a container gone from the engine is a crash like any
            state, output = {"ExitCode": None, "Error": _first_line(exc)}, ""
        result = parse_outcome(output)
        if result is not None:
            if result.status == "failed":
                result.error = f"{container_log(started.container.name, output)}\n\n{result.error or ''}".strip()
            self.recorder.finished(started.trial_id, result)
        elif not stopping:
            self.recorder.crashed(started.trial_id, crash_report(started.container.name, self.image, state, output))
        _remove(self.client, started.container.id)

    def _stop_all(self) -> None:
        """Stops the containers still running (each trial checkpoints at its next step
        boundary), records those that finished meanwhile, removes them all."""
        if not self.running:
            return
        stoppers = [threading.Thread(target=_stop, args=(s.container,), daemon=True) for s in self.running.values()]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join(STOP_GRACE + 30)
        for started in list(self.running.values()):
            try:
                self._finish(started, stopping=True)
            except Exception as exc:  # noqa: BLE001 - the next grid removes what is left
                log.warning("Could not clean up the container of %s: %s", started.trial_id, _first_line(exc))


def _stop(container: Container) -> None:
    try:
        container.stop(timeout=STOP_GRACE)
    except Exception as exc:  # noqa: BLE001 - it ended already, or the engine is gone: the next grid removes it
        log.debug("stopping %s: %s", container.name, exc)


# -- a container's outcome and log -------------------------------------------------------------


def parse_outcome(output: str) -> TrialResult | None:
    """The outcome the worker printed last, or None when it printed none."""
    from bench.trial import TrialResult

    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_MARK):
            try:
                return TrialResult(**json.loads(line[len(RESULT_MARK):]))
            except (ValueError, TypeError):
                return None
    return None


def container_log(name: str, output: str, lines: int = LOG_LINES) -> str:
    """The last ``lines`` of a container's log (its outcome line left out), headed."""
    kept = [line for line in output.splitlines() if not line.startswith(RESULT_MARK)][-lines:]
    if not kept:
        return f"The container {name} wrote no log."
    return f"Log of the container {name} (last {len(kept)} lines):\n" + "\n".join(kept)


def crash_report(name: str, image: str, state: dict[str, Any], output: str) -> str:
    """The error of a trial whose container ended without an outcome: its log, then why
    (the last line, which the run's history keeps)."""
    code = state.get("ExitCode")
    if state.get("OOMKilled"):
        why = f"killed at its memory limit (out of memory, exit status {code})"
    elif code == EXIT_STOPPED or code == 137:
        why = f"stopped from outside (exit status {code})"
    elif code == EXIT_NOT_HELD:
        why = "refused to train: the grid's driver no longer held the trial"
    elif code is None:
        why = f"lost ({state.get('Error') or 'the engine no longer knows it'})"
    else:
        why = f"exited with status {code}"
    return f"{container_log(name, output)}\n\nThe trial's container {name} (image {image}) {why}, without an outcome."


def _log(container: Container) -> str:
    return container.logs(stdout=True, stderr=True).decode("utf-8", "replace")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- the lifeline ----------------------------------------------------------------------------------


class Lifeline:
    """A Unix socket that every container of the grid connects to and holds open. Nothing
    is ever sent: when the driver process ends, however it ends, the kernel closes its side
    and each worker stops its trial. Connections the containers closed are let go."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix=LIFELINE_PREFIX)
        self.path = str(Path(self.directory) / "driver.sock")
        self._selector = selectors.DefaultSelector()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="bench-lifeline", daemon=True)

    def __enter__(self) -> Lifeline:
        os.chmod(self.directory, 0o755)  # containers run as this user; the directory is only entered
        self._server.bind(self.path)
        self._server.listen(128)
        self._server.setblocking(False)
        self._selector.register(self._server, selectors.EVENT_READ)
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._closing.is_set():
            for key, _ in self._selector.select(timeout=0.5):
                sock = key.fileobj
                if sock is self._server:
                    conn, _ = self._server.accept()
                    self._selector.register(conn, selectors.EVENT_READ)
                elif not _readable(sock):  # type: ignore[arg-type]
                    self._selector.unregister(sock)
                    sock.close()  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._thread.join(5)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _readable(sock: socket.socket) -> bool:
    """False once the peer has closed (a container ended)."""
    try:
        return bool(sock.recv(64))
    except OSError:
        return False

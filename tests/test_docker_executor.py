"""The Docker executor: its options and their mistakes, and, against a real engine,
``bench grid --executor docker`` running each trial in its own container, which writes its
metrics to the store under the driver's claim. Two grids at once split the work; a trial
that crashes inside its container is ``failed`` with the container's log; a grid stopped
(SIGTERM) or killed (SIGKILL) leaves no container running and the same command resumes it
from its checkpoint.

The engine is the one at ``DOCKER_HOST`` (``.ci/run`` starts one); without one the engine
tests skip and say why. The containers run the trainer of this checkout: the image is a
small Debian made by debootstrap (``docker/make-base-image.sh``) with this virtual
environment's ``bin`` on ``PATH``, the checkout, the virtual environment and its Python
mounted read-only. Its root file system is kept as a tarball under ``$BENCH_DOCKER_CACHE``
(default ``~/.cache/bench/docker``), so that the next engine imports it in seconds instead
of bootstrapping Debian again.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import BenchError, StoreError
from bench.grid.docker_executor import (
    Mount, check_image_runs, crash_report, gpu_slots, merged, parse_outcome, settings,
)
from bench.grid.docker_worker import RESULT_MARK
from bench.grid.options import GridOptions
from bench.store import open_store

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = "bench-test-base:bookworm"
TEST_IMAGE = "bench-test:venv"
BASE_PACKAGES = "python3"  # the shared libraries this Python and the wheels load
MAKE_BASE = ROOT / "docker" / "make-base-image.sh"


def engine_or_reason():
    """(client, "") for an engine that answers, else (None, why not)."""
    try:
        import docker
    except ImportError:
        return None, "the Docker SDK is not installed (pip install docker)"
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no engine here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, f"no Docker engine answers at {where} ({first}); .ci/run starts one"
    client.api.timeout = 300
    return client, ""


def cache_dir() -> Path:
    return Path(os.environ.get("BENCH_DOCKER_CACHE") or Path.home() / ".cache" / "bench" / "docker")


@functools.cache
def base_image(client) -> str:
    """The debootstrapped base: on the engine already, imported from the cached tarball, or
    made now (root and debootstrap needed; skipped otherwise)."""
    import docker

    try:
        client.images.get(BASE_IMAGE)
        return BASE_IMAGE
    except docker.errors.ImageNotFound:
        pass
    tarball = cache_dir() / f"bookworm-{BASE_PACKAGES.replace(',', '-')}.tar"
    if tarball.is_file():
        repository, tag = BASE_IMAGE.split(":")
        client.api.import_image(src=str(tarball), repository=repository, tag=tag, changes=['CMD ["/bin/bash"]'])
        return BASE_IMAGE
    if os.geteuid() != 0 or not (shutil.which("debootstrap") or shutil.which("mmdebstrap")):
        pytest.skip("making the test base image needs root and debootstrap (apt-get install debootstrap)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PACKAGES": BASE_PACKAGES, "ROOTFS_TAR": str(tarball) + ".part"}
    proc = subprocess.run(["bash", str(MAKE_BASE), BASE_IMAGE], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        Path(env["ROOTFS_TAR"]).unlink(missing_ok=True)
        pytest.fail(f"make-base-image.sh failed:\n{proc.stdout}\n{proc.stderr}")
    os.replace(env["ROOTFS_TAR"], tarball)
    return BASE_IMAGE


def venv_mounts() -> list[str]:
    """The checkout, this virtual environment and the Python it was made from, read-only at
    their own paths (nested ones left out)."""
    paths = sorted({ROOT, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in paths:
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return [f"{p}:{p}:ro" for p in kept]


@functools.cache
def trainer_image(client) -> str:
    """The base with this virtual environment's bin first on PATH (python3 is its Python)."""
    base = base_image(client)
    path = f"{Path(sys.prefix) / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    dockerfile = f"FROM {base}\nENV PATH={path} PYTHONDONTWRITEBYTECODE=1\n"
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=TEST_IMAGE, network_mode="none", rm=True)
    return TEST_IMAGE


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def engine():
    """The Docker engine at DOCKER_HOST; the test is skipped, with the reason, without one."""
    client, why = engine_or_reason()
    if client is None:
        pytest.skip(why)
    yield client
    client.close()


@pytest.fixture(scope="session")
def image(engine) -> str:
    return trainer_image(engine)


# --------------------------------------------------------------------------- mistakes, no engine needed

runner = CliRunner()

TINY = """\
name: tiny-docker
base: {dataset: digits, arch: mlp, norm: none, width: 16, epochs: 1, batch_size: 32, train_subset: 256}
axes: {lr: [0.01, 0.05]}
"""


def refused(*args: str, expect: str) -> str:
    """The grid command refuses: exit status 1, one paragraph, no traceback."""
    result = runner.invoke(app, list(args))
    output = result.output
    assert result.exit_code == 1, output
    assert "Traceback" not in output and isinstance(result.exception, SystemExit), output
    assert expect in " ".join(output.split()), output
    return output


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-docker.yaml"
    path.write_text(TINY)
    return path


@pytest.mark.parametrize("args, expect", [
    ([], "--executor docker needs --image IMAGE"),
    (["--image", "x", "--mount", "/nonexistent-dir:/data"], "/nonexistent-dir does not exist on this machine"),
    (["--image", "x", "--mount", "/tmp:data"], "must be an absolute path inside the container"),
    (["--image", "x", "--mount", "/tmp:/data:rx"], "write SOURCE:TARGET"),
    (["--image", "x", "--memory-per-trial", "lots"], "give bytes or a size such as 512m or 4g"),
    (["--image", "x", "--gpus-per-trial", "0.3"], "whole GPUs (1, 2, ...) or a share 1/k"),
])
def test_docker_options_are_checked_before_anything_runs(spec, tmp_path, args, expect):
    store = tmp_path / "nothing.sqlite"
    refused("--store", str(store), "grid", str(spec), "--executor", "docker", *args, expect=expect)
    assert not store.exists()


def test_docker_options_with_another_executor_are_refused(spec):
    refused("grid", str(spec), "--executor", "local", "--image", "x", expect="apply to --executor docker only")


def test_no_engine_is_one_paragraph(spec, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    store = tmp_path / "nothing.sqlite"
    refused("--store", str(store), "grid", str(spec), "--executor", "docker", "--image", "x",
            expect=f"No Docker engine answers at unix://{tmp_path}/no-engine.sock")
    assert not store.exists()


def test_gpus_are_handed_out_by_device_id(monkeypatch):
    monkeypatch.setenv("BENCH_DOCKER_GPUS", "0,1")
    assert gpu_slots(1) == [["0"], ["1"]]
    assert gpu_slots(2) == [["0", "1"]]
    assert gpu_slots(0.5) == [["0"], ["1"], ["0"], ["1"]]
    assert gpu_slots(None) is None and gpu_slots(0) is None
    with pytest.raises(BenchError, match="asks for GPUs, but this machine has 2 GPU"):
        gpu_slots(3)
    monkeypatch.setenv("BENCH_DOCKER_GPUS", "")
    monkeypatch.setenv("PATH", "")  # no nvidia-smi
    with pytest.raises(BenchError, match="has no GPU"):
        gpu_slots(1)


def test_a_container_gets_what_a_trial_reserves(tmp_path, monkeypatch):
    """Limits, GPUs by device id, the store and checkpoint directories at their own paths,
    the data directory read-only, this user, no network with the embedded store."""
    (tmp_path / "data").mkdir()
    options = GridOptions("docker", cpus_per_trial=2, image="img", mounts=[f"{tmp_path}:/extra:ro"],
                          memory_per_trial="2g", data_dir=str(tmp_path / "data"))
    with open_store(tmp_path / "s" / "results.sqlite") as store:
        got = settings(options, store, lifeline=str(tmp_path / "l" / "driver.sock"))
        args = got.create_args(["1"])
    assert args["nano_cpus"] == 2_000_000_000 and args["mem_limit"] == args["memswap_limit"] == "2g"
    assert args["device_requests"][0]["DeviceIDs"] == ["1"] and args["device_requests"][0]["Capabilities"] == [["gpu"]]
    assert args["network_mode"] == "none" and args["user"] == f"{os.getuid()}:{os.getgid()}"
    assert args["entrypoint"] == ["python3", "-m", "bench.grid.docker_worker"]
    binds = set(args["volumes"])
    assert f"{tmp_path / 's'}:{tmp_path / 's'}:rw" in binds
    assert f"{tmp_path / 'checkpoints'}:{tmp_path / 'checkpoints'}:rw" in binds  # BENCH_CHECKPOINT_DIR (conftest)
    assert f"{tmp_path / 'data'}:{tmp_path / 'data'}:ro" in binds
    assert f"{tmp_path}:/extra:ro" in binds and f"{tmp_path / 'l'}:{tmp_path / 'l'}:ro" in binds
    env = args["environment"]
    assert env["BENCH_STORE"] == str(tmp_path / "s" / "results.sqlite") and env["BENCH_MONGO_URI"] == ""
    assert env["OMP_NUM_THREADS"] == "2" and got.worker_args[:2] == ["--data-dir", str(tmp_path / "data")]


def test_two_sources_at_one_target_are_refused(tmp_path):
    with pytest.raises(BenchError, match="Two mounts at /x"):
        merged([Mount("/a", "/x"), Mount("/b", "/x")])
    assert merged([Mount("/a", "/x", True), Mount("/a", "/x")]) == [Mount("/a", "/x", False)]


def test_a_crash_keeps_the_log_and_says_why_last():
    output = "epoch 1: ...\nboom\n"
    text = crash_report("bench-1", "img", {"ExitCode": 137, "OOMKilled": True}, output)
    assert "boom" in text and text.splitlines()[-1].endswith("killed at its memory limit (out of memory, exit status 137), without an outcome.")
    assert parse_outcome(output) is None
    done = parse_outcome(output + RESULT_MARK + json.dumps({"status": "completed", "summary": {"x": float("nan")}}) + "\n")
    assert done.status == "completed" and math.isnan(done.summary["x"])


# --------------------------------------------------------------------------- the engine


@pytest.mark.docker
def test_the_base_image_runs_this_trainer(engine, image, tmp_path):
    """The image check a grid makes before it writes anything: the trainer imports, the
    store opens and the checkpoint directory takes a file, inside a container."""
    options = GridOptions("docker", image=image, mounts=venv_mounts())
    with open_store(tmp_path / "results.sqlite") as store:
        check_image_runs(options, store)
    assert not engine.containers.list(all=True, filters={"label": "bench.driver"})


@pytest.mark.docker
def test_an_image_without_bench_is_one_error(engine, tmp_path):
    options = GridOptions("docker", image=base_image(engine))  # no virtual environment mounted
    with open_store(tmp_path / "results.sqlite") as store, pytest.raises(BenchError) as caught:
        check_image_runs(options, store)
    assert "cannot run a trial here" in str(caught.value) and "No module named" in str(caught.value)


@pytest.mark.docker
def test_a_missing_image_is_one_paragraph(engine, spec, tmp_path):
    store = tmp_path / "nothing.sqlite"
    refused("--store", str(store), "grid", str(spec), "--executor", "docker", "--image", "bench-no-such:image",
            expect="The image 'bench-no-such:image' is not on the Docker engine")
    assert not store.exists()


# --------------------------------------------------------------------------- grids on the engine

BENCH = str(Path(sys.executable).parent / "bench")
LABEL = "bench.driver"


def spec_file(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def grid(spec: Path, image: str, *extra: str, log: Path) -> subprocess.Popen:
    """``bench grid SPEC --executor docker`` in its own process (the test's store)."""
    mounts = [arg for m in venv_mounts() for arg in ("--mount", m)]
    return subprocess.Popen(
        [BENCH, "grid", str(spec), "--executor", "docker", "--image", image, *mounts, "--no-report", *extra],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> tuple[int, str]:
    code = proc.wait(timeout)
    return code, log.read_text()


def runs(study: str) -> dict[str, dict]:
    """The study's runs by id ({} before the grid has made its store)."""
    try:
        with open_store(None, read_only=True) as store:
            return {r["_id"]: r for r in store.find_runs({"study": study})}
    except StoreError:
        return {}


def epochs(run_id: str) -> list[int]:
    with open_store(None, read_only=True) as store:
        return sorted(m["epoch"] for m in store.find_metrics([run_id]))


def containers(client, **filters) -> list:
    """The containers of bench grids on the engine."""
    return client.containers.list(all=True, filters={"label": LABEL, **filters})


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.5)


CRASH_PLUGIN = '''\
"""A norm that crashes the trial using it, inside its container (never on the meta device,
where the driver checks the model)."""
import os
import sys

from torch import nn

from bench.zoo.registry import NORMS, Option


class Crash(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how

    def forward(self, x):
        if x.device.type != "meta":
            print(f"crashnorm: about to {self.how}", file=sys.stderr, flush=True)
            if self.how == "exit":
                os._exit(3)
            raise RuntimeError("crashnorm raised inside the container")
        return x


@NORMS.register("crashnorm", "Crashes the trial (a test of the Docker executor).",
                options=(Option("crash_how", str, "exit", "exit: the process ends at once; raise: an exception",
                                choices=("exit", "raise")),))
def crashnorm(num_channels, dims, *, crash_how):
    return Crash(crash_how)
'''


@pytest.mark.docker
def test_two_grids_at_once_land_every_result_once(engine, image, tmp_path):
    """The same study started twice at once: each trial is trained once, in its own
    container, by one of the two grids, which write every result, epoch and node to the
    store. Two trials crash inside their containers (a plugin, mounted read-only, runs
    there): one process dies without an outcome, one trial raises; both are ``failed``
    with the container's log in the run's error."""
    (tmp_path / "crashnorm.py").write_text(CRASH_PLUGIN)
    spec = spec_file(tmp_path, "docker-pair", """\
        name: docker-pair
        plugins: [crashnorm.py]
        base: {dataset: digits, arch: mlp, width: 16, epochs: 2, batch_size: 32, train_subset: 256}
        variants:
          slow: {norm: none, lr: 0.01}
          fast: {norm: none, lr: 0.1}
          exit: {norm: crashnorm, crash_how: exit}
          raise: {norm: crashnorm, crash_how: raise}
    """)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [grid(spec, image, "--max-concurrent", "1", log=log) for log in logs]
    outputs = [finish(proc, log) for proc, log in zip(procs, logs)]
    assert {code for code, _ in outputs} <= {0, 1} and "Traceback" not in str(outputs), outputs
    done = runs("docker-pair")
    assert len(done) == 4 and all(run["attempts"] == 1 for run in done.values()), done  # none trained twice
    counts = [re.search(r"done: (\d+) completed, (\d+) diverged, (\d+) failed", out) for _, out in outputs]
    assert all(counts) and [sum(int(m[i]) for m in counts) for i in (1, 3)] == [2, 2], outputs  # split, none twice
    by_norm = {(run["config"]["norm"], run["config"].get("crash_how")): (run_id, run) for run_id, run in done.items()}
    for run_id, run in (by_norm[k] for k in by_norm if k[0] == "none"):
        assert run["status"] == "completed" and epochs(run_id) == [1, 2], run
        assert run["node"]["container"].startswith(f"bench-{run_id}-") and run["node"]["image"] == image
        assert run["env"]["torch"] and run["summary"]["final_val_acc"] is not None
        assert [h["outcome"] for h in run["history"]] == ["completed"]
    exited, raised = by_norm[("crashnorm", "exit")][1], by_norm[("crashnorm", "raise")][1]
    assert exited["status"] == raised["status"] == "failed"
    assert "crashnorm: about to exit" in exited["error"]
    assert exited["error"].splitlines()[-1].endswith("exited with status 3, without an outcome."), exited["error"]
    assert exited["history"][-1]["error"] == exited["error"].splitlines()[-1]
    assert "crashnorm: about to raise" in raised["error"] and "Log of the container" in raised["error"]
    assert raised["error"].splitlines()[-1] == "RuntimeError: crashnorm raised inside the container"
    assert not containers(engine)


@pytest.mark.docker
def test_a_stopped_or_killed_grid_leaves_no_container_and_resumes(engine, image, tmp_path):
    """SIGTERM: the grid stops its container (the trial checkpoints), removes it, marks the
    trial interrupted and exits 143. SIGKILL: the container's lifeline breaks and it stops
    itself. Each time the same command resumes the trial from its checkpoint, and the last
    run completes it with every epoch in the store.

    An epoch takes well under a second, and each signal is sent after an epoch is seen in
    the store: the epochs left after it (over 20) must outlast a loaded machine's delay in
    seeing it and signalling, or the trial ends before it is stopped."""
    epochs_total = 24
    spec = spec_file(tmp_path, "docker-resume", f"""\
        name: docker-resume
        base: {{dataset: digits, arch: mlp, norm: none, width: 32, epochs: {epochs_total}, batch_size: 2, train_subset: 1024}}
    """)
    first = grid(spec, image, log=tmp_path / "1.log")
    wait_for(lambda: runs("docker-resume") and epochs(next(iter(runs("docker-resume")))), 240, "the first epoch")
    run_id = next(iter(runs("docker-resume")))
    first.send_signal(signal.SIGTERM)
    code, output = finish(first, tmp_path / "1.log", 120)
    assert code == 143, output
    assert not containers(engine), "the grid removes its containers on the way out"
    run = runs("docker-resume")[run_id]
    assert run["status"] == "interrupted" and run["checkpoint"]["path"], run
    stopped_at = run["checkpoint"]["epoch"]

    second = grid(spec, image, log=tmp_path / "2.log")
    wait_for(lambda: len(epochs(run_id)) > max(stopped_at, 1), 240, "an epoch of the resumed trial")
    lifeline = next(e for e in containers(engine)[0].attrs["Config"]["Env"] if e.startswith("BENCH_DOCKER_LIFELINE="))
    second.kill()
    second.wait(30)
    wait_for(lambda: not containers(engine, status="running"), 60, "the killed grid's container to stop itself")

    mounts = [arg for m in venv_mounts() for arg in ("--mount", m)]
    result = CliRunner().invoke(app, ["grid", str(spec), "--executor", "docker", "--image", image, *mounts, "--no-report"])
    code, output = result.exit_code, result.output
    assert code == 0, output
    assert "left running by a grid of this machine that has ended" in output, output
    run = runs("docker-resume")[run_id]
    assert run["status"] == "completed" and run["summary"]["epochs_done"] == epochs_total, run
    assert epochs(run_id) == list(range(1, epochs_total + 1))
    outcomes = [(h["outcome"], h.get("resumed_from")) for h in run["history"]]
    assert outcomes[0][0] == "interrupted" and outcomes[-1][0] == "completed" and outcomes[-1][1], outcomes
    assert run["checkpoint"] is None
    assert not containers(engine), "the next grid removed the killed grid's container"
    assert not Path(lifeline.partition("=")[2]).parent.exists(), "and the killed grid's lifeline directory"



"""The Docker engine the container tests use, and what they share: the engine (``DOCKER_HOST``, which ``.ci/run`` starts) and a
small base image made by debootstrap, in which a container runs the trainer of this
checkout with this virtual environment and its Python mounted read-only.

The base image is made once per engine (``docker/make-base-image.sh``); its root file
system is kept as a tarball under ``$BENCH_DOCKER_CACHE`` (default ``~/.cache/bench/docker``)
so that the next engine imports it in seconds instead of bootstrapping Debian again.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import BenchError
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


def test_gpus_without_gpus_is_one_paragraph(monkeypatch):
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

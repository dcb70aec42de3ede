"""The project's image for real: built offline by docker/build-image.sh, it runs the quick
study, the Docker executor runs trials in it, and compose starts its Ray services.

Opt-in (minutes and gigabytes): BENCH_DOCKER_BUILD_TESTS=1. BENCH_DOCKER_IMAGE names an
image built already, and the build is then skipped. The compose test starts only the
services built locally (ray-head, ray-worker): the mongo service needs the mongo image
from a registry, so the driver uses the embedded store.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.store import open_store

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"

pytestmark = [
    pytest.mark.docker_build,
    pytest.mark.skipif(not os.environ.get("BENCH_DOCKER_BUILD_TESTS"),
                       reason="builds the project's image (minutes, GBs); BENCH_DOCKER_BUILD_TESTS=1 runs it"),
]


@pytest.fixture(scope="module")
def engine():
    """The engine at DOCKER_HOST (skipped, with the reason, without one)."""
    docker = pytest.importorskip("docker", reason="the Docker SDK is not installed")
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"no Docker engine answers at {os.environ.get('DOCKER_HOST') or 'the default socket'}: {exc}")
    client.api.timeout = 1800
    yield client
    client.close()


@pytest.fixture(scope="module")
def built(engine) -> str:
    """The image of docker/build-image.sh (BENCH_DOCKER_IMAGE: one built already)."""
    name = os.environ.get("BENCH_DOCKER_IMAGE") or "bench:local"
    if not os.environ.get("BENCH_DOCKER_IMAGE"):
        started = time.monotonic()
        proc = subprocess.run(["bash", str(ROOT / "docker" / "build-image.sh"), name], capture_output=True, text=True,
                              timeout=3 * 3600)
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
        print(f"built {name} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    engine.images.get(name)
    return name


def test_the_image_runs_the_quick_study(engine, built):
    output = engine.containers.run(built, ["grid", "norm-vs-batch", "--quick"], network_mode="none", shm_size="2g",
                                   remove=True, stdout=True, stderr=True).decode()
    assert "done: 10 completed, 0 diverged, 0 failed" in output, output


def test_the_docker_executor_runs_trials_in_the_image(engine, built, tmp_path):
    spec = tmp_path / "in-image.yaml"
    spec.write_text(textwrap.dedent("""\
        name: in-image
        base: {dataset: digits, arch: mlp, norm: none, width: 16, epochs: 2, batch_size: 32, train_subset: 256}
        axes: {lr: [0.01, 0.1]}
    """))
    bench = str(Path(sys.executable).parent / "bench")
    proc = subprocess.run([bench, "grid", str(spec), "--executor", "docker", "--image", built, "--no-report"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open_store(None, read_only=True) as store:
        runs = store.find_runs({"study": "in-image"})
    assert len(runs) == 2 and all(r["status"] == "completed" and r["node"]["image"] == built for r in runs), runs


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_compose_starts_the_ray_services_and_runs_the_quick_study(engine, built):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose plugin and no docker-compose")
    project = f"benchtest{os.getpid()}"
    env = {**os.environ, "BENCH_IMAGE": built, "MONGO_ROOT_PASSWORD": "unused", "RAY_DASHBOARD_PORT": str(_free_port())}
    base = [*cli, "-p", project, "-f", str(COMPOSE)]

    def compose(*args: str, timeout: float = 600) -> str:
        proc = subprocess.run([*base, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def health(service: str) -> str | None:
        found = engine.containers.list(filters={"label": [f"com.docker.compose.project={project}",
                                                          f"com.docker.compose.service={service}"]})
        return found[0].attrs["State"].get("Health", {}).get("Status") if found else None

    try:
        compose("up", "-d", "--no-deps", "ray-head")
        deadline = time.monotonic() + 300
        while health("ray-head") != "healthy":
            assert time.monotonic() < deadline, f"ray-head not healthy: {health('ray-head')}"
            time.sleep(2)
        compose("up", "-d", "--no-deps", "ray-worker")
        deadline = time.monotonic() + 300
        while compose("exec", "-T", "ray-head", "ray", "status").count("node_") < 2:
            assert time.monotonic() < deadline, "the worker never joined the head"
            time.sleep(3)
        output = compose("exec", "-T", "ray-head", "bench", "--store", "/results/compose.sqlite", "grid",
                         "norm-vs-batch", "--quick", "--address", "auto", "--no-report", timeout=1800)
        assert "done: 10 completed, 0 diverged, 0 failed" in output, output
    finally:
        subprocess.run([*base, "down", "-v", "--timeout", "10"], cwd=ROOT, env=env, capture_output=True, timeout=300)

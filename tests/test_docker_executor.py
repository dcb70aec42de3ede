"""The Docker executor against a real engine: ``bench grid --executor docker`` runs each
trial in its own container, which writes its metrics to the store under the driver's
claim. Two grids at once split the work; a trial that crashes inside its container is
``failed`` with the container's log; a grid stopped (SIGTERM) or killed (SIGKILL) leaves
no container running and the same command resumes it from its checkpoint.

The containers run the trainer of this checkout: the image is a small debootstrapped
Debian (tests/test_docker_engine.py), with this virtual environment and its Python
mounted read-only. Skipped, with the reason, where no engine answers (``.ci/run`` starts
one).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import StoreError
from bench.store import open_store
from test_docker_engine import engine, image, venv_mounts  # noqa: F401 - fixtures

pytestmark = pytest.mark.docker

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


def test_two_grids_at_once_land_every_result_once(engine, image, tmp_path):  # noqa: F811
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


def test_a_stopped_or_killed_grid_leaves_no_container_and_resumes(engine, image, tmp_path):  # noqa: F811
    """SIGTERM: the grid stops its container (the trial checkpoints), removes it, marks the
    trial interrupted and exits 143. SIGKILL: the container's lifeline breaks and it stops
    itself. Each time the same command resumes the trial from its checkpoint, and the last
    run completes it with every epoch in the store."""
    spec = spec_file(tmp_path, "docker-resume", """\
        name: docker-resume
        base: {dataset: digits, arch: mlp, norm: none, width: 32, epochs: 6, batch_size: 2, train_subset: 1024}
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
    second.kill()
    second.wait(30)
    wait_for(lambda: not containers(engine, status="running"), 60, "the killed grid's container to stop itself")

    mounts = [arg for m in venv_mounts() for arg in ("--mount", m)]
    result = CliRunner().invoke(app, ["grid", str(spec), "--executor", "docker", "--image", image, *mounts, "--no-report"])
    code, output = result.exit_code, result.output
    assert code == 0, output
    assert "left running by a grid of this machine that has ended" in output, output
    run = runs("docker-resume")[run_id]
    assert run["status"] == "completed" and run["summary"]["epochs_done"] == 6, run
    assert epochs(run_id) == [1, 2, 3, 4, 5, 6]
    outcomes = [(h["outcome"], h.get("resumed_from")) for h in run["history"]]
    assert outcomes[0][0] == "interrupted" and outcomes[-1][0] == "completed" and outcomes[-1][1], outcomes
    assert run["checkpoint"] is None
    assert not containers(engine), "the next grid removed the killed grid's container"



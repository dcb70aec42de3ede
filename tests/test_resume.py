"""Crash and resume: heartbeats, abandoned and live trials, kill -9 of a grid driver,
and the `bench store status` / `bench store reset` commands."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.grid import Recorder, plan, register
from bench.spec import load_spec
from bench.store import EmbeddedStore
from bench.store.base import stale_before
from bench.trial import TrialResult

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
OLD = "2020-01-01T00:00:00+00:00"

SPEC = """
    name: resume
    base: {dataset: synthetic, arch: cnn, width: 8, epochs: 1, batch_size: 8}
    axes:
      norm: [bn, gn]
    seeds: [0, 1, 2]
"""


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    path = tmp_path / "resume.yaml"
    path.write_text(textwrap.dedent(SPEC))
    return path


def _result() -> TrialResult:
    return TrialResult(status="completed", summary={"final_val_acc": 0.5}, env={"host": "h"})


def test_plan_skips_finished_and_live_trials_and_reruns_abandoned_ones(spec_path: Path, tmp_path: Path) -> None:
    spec = load_spec(str(spec_path))
    ids = [t.trial_id for t in spec.expand()]
    fresh = stale_before(0)  # now
    with EmbeddedStore(tmp_path / "s.sqlite") as store:
        store.upsert_run(ids[0], {"status": "completed", "summary": {"final_val_acc": 0.9}})
        store.upsert_run(ids[1], {"status": "running", "driver": "elsewhere", "heartbeat_at": fresh})
        store.upsert_run(ids[2], {"status": "running", "driver": "killed", "heartbeat_at": OLD})
        store.upsert_run(ids[3], {"status": "failed", "error": "boom"})
        grid_plan = plan(spec, store)
        assert [t.trial_id for t in grid_plan.cached] == [ids[0]]
        assert [t.trial_id for t in grid_plan.live] == [ids[1]]
        assert [t.trial_id for t in grid_plan.stale] == [ids[2]]
        assert [t.trial_id for t in grid_plan.todo] == ids[2:]
        register(grid_plan, store)
        statuses = {r["_id"]: r["status"] for r in store.find_runs()}
        assert [statuses[i] for i in ids] == ["completed", "running", "interrupted", "failed", "pending", "pending"]
        assert all(store.get_run(i)["study"] == ["resume"] for i in ids)
        assert store.get_run(ids[1])["heartbeat_at"] == fresh  # the live trial is left alone
        assert [t.trial_id for t in plan(spec, store, stale_after=0).stale] == [ids[1]]  # 0: every running trial is abandoned


def test_the_recorder_beats_in_the_background_and_stops(tmp_path: Path) -> None:
    beats = threading.Event()

    class Spy(EmbeddedStore):
        def upsert_run(self, run_id: str, fields: dict, *, study: str | None = None) -> None:
            super().upsert_run(run_id, fields, study=study)
            if set(fields) == {"heartbeat_at"}:
                beats.set()

    with Spy(tmp_path / "s.sqlite") as store:
        recorder = Recorder(store, "s", 1, heartbeat_every=0.01)
        assert recorder.started("t")
        thread = recorder._beater
        assert thread is not None and thread.daemon
        assert beats.wait(timeout=10)
        recorder.finished("t", _result())
        thread.join(timeout=10)
        assert not thread.is_alive() and recorder._beater is None
        assert store.get_run("t")["status"] == "completed"


def test_a_trial_held_by_a_live_grid_is_skipped(tmp_path: Path) -> None:
    with EmbeddedStore(tmp_path / "s.sqlite") as store:
        store.upsert_run("t", {"status": "running", "driver": "other", "heartbeat_at": stale_before(-3600), "attempts": 1})
        recorder = Recorder(store, "s", 1, heartbeat_every=3600)
        assert not recorder.started("t")
        recorder.epoch("t", {"epoch": 1, "val_acc": 0.1})
        recorder.finished("t", _result())
        assert recorder.counts["skipped"] == 1 and recorder.skipped == ["t"]
        run = store.get_run("t")
        assert (run["status"], run["driver"], run["attempts"]) == ("running", "other", 1)
        assert store.get_metrics("t") == []


def test_interrupting_marks_only_this_drivers_trials(tmp_path: Path) -> None:
    with EmbeddedStore(tmp_path / "s.sqlite") as store:
        mine = Recorder(store, "s", 2, heartbeat_every=3600)
        assert mine.started("a") and mine.started("b")
        store.upsert_run("b", {"driver": "someone-else"})  # taken over meanwhile
        assert mine.interrupt_unfinished() == 2
        assert store.get_run("a")["status"] == "interrupted"
        assert store.get_run("b")["status"] == "running"


def _counts(path: Path) -> dict[str, int]:
    with EmbeddedStore(path) as store:
        return {status: store.count_runs({"status": status}) for status in ("pending", "running", "completed")}


def _grid_until_the_middle(spec_path: Path, store_path: Path, tmp_path: Path) -> subprocess.Popen:
    """A grid driver in a subprocess, returned once 2 trials completed and 1 runs."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "bench.cli", "--store", str(store_path), "grid", str(spec_path),
               "--executor", "local", "--no-report"]
    driver = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while True:
        if driver.poll() is not None:
            raise AssertionError(f"the grid ended before it could be stopped: {driver.stderr.read().decode()}")
        if time.monotonic() > deadline:
            driver.kill()
            raise AssertionError("the grid never reached the middle")
        if store_path.exists():
            counts = _counts(store_path)
            if counts["completed"] >= 2 and counts["running"] == 1:
                return driver
        time.sleep(0.02)


def _stop(driver: subprocess.Popen, sig: int) -> int:
    try:
        driver.send_signal(sig)
        return driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


def test_kill_9_in_the_middle_of_a_grid_then_resume_at_once(spec_path: Path, tmp_path: Path) -> None:
    store_path = tmp_path / "grid.sqlite"
    _stop(_grid_until_the_middle(spec_path, store_path, tmp_path), signal.SIGKILL)
    with EmbeddedStore(store_path) as store:
        finished_before = {r["_id"]: r["finished_at"] for r in store.find_runs({"status": "completed"})}
        (victim,) = store.find_runs({"status": "running"})
    assert len(finished_before) >= 2
    assert victim["driver_start"]  # the claim records when the driver's process started

    # The killed driver ran on this machine and its process is gone: the trial is abandoned now,
    # without waiting for its heartbeat to go stale and without --stale-after 0.
    result = runner.invoke(app, ["--store", str(store_path), "grid", str(spec_path), "--executor", "local", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "1 trials were left running by a grid of this machine that has ended" in result.output
    assert "another live grid" not in result.output
    with EmbeddedStore(store_path) as store:
        runs = store.find_runs({"study": "resume"})
        assert len(runs) == 6 and {r["status"] for r in runs} == {"completed"}
        assert {r["_id"]: r["attempts"] for r in runs} == {r["_id"]: 2 if r["_id"] == victim["_id"] else 1 for r in runs}
        for run_id, finished_at in finished_before.items():  # nothing completed was lost or re-run
            assert store.get_run(run_id)["finished_at"] == finished_at
        metrics = store.find_metrics([r["_id"] for r in runs])
        assert sorted((m["run_id"], m["epoch"]) for m in metrics) == sorted((r["_id"], 1) for r in runs)
        assert store.info()["metrics"] == 6


def test_sigterm_marks_the_running_trial_interrupted_and_exits_143(spec_path: Path, tmp_path: Path) -> None:
    store_path = tmp_path / "grid.sqlite"
    assert _stop(_grid_until_the_middle(spec_path, store_path, tmp_path), signal.SIGTERM) == 143
    with EmbeddedStore(store_path) as store:
        assert store.count_runs({"status": "running"}) == 0
        (stopped,) = store.find_runs({"status": "interrupted"})
        assert stopped["history"][-1]["outcome"] == "interrupted"
    result = runner.invoke(app, ["--store", str(store_path), "grid", str(spec_path), "--executor", "local", "--no-report"])
    assert result.exit_code == 0, result.output
    assert _counts(store_path) == {"pending": 0, "running": 0, "completed": 6}


def test_a_trial_held_by_a_live_driver_of_another_host_is_still_skipped(spec_path: Path, tmp_path: Path) -> None:
    spec = load_spec(str(spec_path))
    ids = [t.trial_id for t in spec.expand()]
    with EmbeddedStore(tmp_path / "s.sqlite") as store:
        store.upsert_run(ids[0], {"status": "running", "driver": "elsewhere:1:abc", "heartbeat_at": stale_before(0)})
        store.upsert_run(ids[1], {"status": "running", "driver": f"{socket.gethostname()}:{os.getpid()}:abc",
                                  "heartbeat_at": stale_before(0)})  # this very process: alive
        grid_plan = plan(spec, store)
        assert {t.trial_id for t in grid_plan.live} == {ids[0], ids[1]} and grid_plan.gone == {}


def test_store_status_and_reset(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with EmbeddedStore(path) as store:
        for i, status in enumerate(["completed", "completed", "failed", "failed", "running", "running", "pending"]):
            store.upsert_run(f"r{i}", {"status": status, "heartbeat_at": OLD if i == 4 else stale_before(-3600)}, study="s")
        store.upsert_run("x", {"status": "failed"}, study="other")
        store.upsert_run("r0", {}, study="other")
    base = ["--store", str(path), "store"]
    result = runner.invoke(app, [*base, "status"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines() if line.split()}
    assert rows["study"] == ["pending", "running", "completed", "failed", "stale", "total"]
    assert rows["s"] == ["1", "2", "2", "2", "1", "7"] and rows["other"] == ["0", "0", "1", "1", "0", "2"]
    assert "stale: running with no heartbeat" in result.output

    result = runner.invoke(app, [*base, "reset", "--study", "s", "--status", "failed"])
    assert result.exit_code == 0 and "2 failed runs of s re-queued" in result.output
    with EmbeddedStore(path) as store:
        assert store.count_runs({"study": "s", "status": "pending"}) == 3 and store.get_run("r2")["error"] is None
        assert store.get_run("x")["status"] == "failed"  # another study's runs are left alone
    result = runner.invoke(app, [*base, "reset", "--study", "s", "--status", "completed"])
    assert result.exit_code == 1 and "--yes" in result.output
    result = runner.invoke(app, [*base, "reset", "--study", "s", "--status", "completed", "--yes"])
    assert result.exit_code == 0 and "2 completed runs of s re-queued" in result.output
    result = runner.invoke(app, [*base, "reset", "--study", "s", "--status", "running"])
    assert result.exit_code == 1 and "live grid" in " ".join(result.output.split())
    result = runner.invoke(app, [*base, "status", "--study", "nope"])
    assert result.exit_code == 1 and "No runs of study 'nope'" in result.output


def test_grid_refuses_a_negative_stale_after(spec_path: Path) -> None:
    result = runner.invoke(app, ["grid", str(spec_path), "--executor", "local", "--stale-after", "-1"])
    assert result.exit_code == 1 and "--stale-after must be" in result.output

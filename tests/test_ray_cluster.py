"""The cluster path, on a real two-node Ray cluster simulated on this machine
(``ray.cluster_utils.Cluster``): trials spread over both nodes, each run records its node,
every result lands; losing the worker node mid-trial retries its trial on the head, from
its last checkpoint, with bit-identical results; kept weights are artifacts."""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench.grid import GridOptions
from bench.grid.run import run_study
from bench.spec import load_spec
from bench.errors import StoreError
from bench.store import EmbeddedStore

pytestmark = pytest.mark.ray

TIMING = {"epoch_seconds", "train_seconds", "samples_per_s", "peak_mem_mb", "wall_seconds"}
EPOCHS = 8
SPEC = f"""
    name: cluster
    base: {{dataset: digits, arch: cnn, width: 16, epochs: {EPOCHS}, batch_size: 32}}
    axes:
      norm: [bn, gn]
"""


def _training(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in TIMING}


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    # Quick failure detection, so a removed node is declared dead in about a second.
    system = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 2}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": system})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_two_nodes_spread_the_grid_and_a_lost_node_s_trial_resumes_on_the_head(cluster, tmp_path: Path) -> None:
    cluster, worker = cluster
    spec_path = tmp_path / "cluster.yaml"
    spec_path.write_text(textwrap.dedent(SPEC))
    spec = load_spec(str(spec_path))
    store_path = tmp_path / "cluster.sqlite"
    killed: dict[str, Any] = {}

    def kill_the_worker_mid_trial() -> None:
        """Removes the worker node once its trial has checkpointed epoch 2 (and not finished)."""
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            try:
                with EmbeddedStore(store_path, read_only=True) as store:
                    runs = store.find_runs({"study": "cluster"})
            except StoreError:  # not created yet
                runs = []
            if True:
                    for run in runs:
                        on_worker = (run.get("node") or {}).get("node_id") == worker.node_id
                        at = (run.get("checkpoint") or {}).get("epoch") or 0
                        if on_worker and at >= 3 and run["status"] == "running":
                            cluster.remove_node(worker, allow_graceful=False)
                            killed.update(run=run["_id"], epoch=at)
                            return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_worker_mid_trial, daemon=True)
    killer.start()
    options = GridOptions(executor="ray", address=cluster.address, retries=1)
    with EmbeddedStore(store_path) as store:
        outcome = run_study(spec, store, options)
        killer.join(timeout=5)
        assert killed, "the worker's trial finished before the node could be removed"
        assert outcome.counts["completed"] == 2 and outcome.counts["done"] == 2 and not outcome.write_errors
        runs = {r["_id"]: r for r in store.find_runs({"study": "cluster"})}
        metrics = {i: sorted(store.get_metrics(i), key=lambda m: m["epoch"]) for i in runs}
        steps_of = {i: store.find_steps([i]) for i in runs}

    assert {r["status"] for r in runs.values()} == {"completed"}
    victim = runs[killed["run"]]
    lost, resumed = victim["history"][-2:]
    assert lost["outcome"] == "lost" and lost["node"]["node_id"] == worker.node_id
    head = cluster.head_node.node_id
    assert resumed["outcome"] == "completed" and resumed["node"]["node_id"] == head
    assert killed["epoch"] <= resumed["resumed_from"] <= EPOCHS  # from its last checkpoint, not from epoch 1
    assert victim["node"]["node_id"] == head and victim["checkpoint"] is None
    other = next(r for i, r in runs.items() if i != killed["run"])
    assert [h["outcome"] for h in other["history"]] == ["completed"]
    assert {r["history"][0]["node"]["node_id"] for r in runs.values()} == {head, worker.node_id}  # both nodes used
    for run_id in runs:  # every epoch once, nothing lost or duplicated
        assert [m["epoch"] for m in metrics[run_id]] == list(range(1, EPOCHS + 1))

    # The resumed trial's results are those of an uninterrupted run, epoch by epoch.
    reference_store = tmp_path / "reference.sqlite"
    with EmbeddedStore(reference_store) as store:
        run_study(spec, store, GridOptions(executor="local"))
        for run_id in runs:
            want = sorted(store.get_metrics(run_id), key=lambda m: m["epoch"])
            assert [_training(m) for m in metrics[run_id]] == [_training(m) for m in want]
            assert _training(runs[run_id]["summary"]) == _training(store.get_run(run_id)["summary"])
    print(
        f"\nnodes: head {head[:8]}, worker {worker.node_id[:8]}; worker removed at checkpoint epoch {killed['epoch']} "
        f"of {killed['run']}; retried on the head from epoch {resumed['resumed_from']}; all {EPOCHS} epochs identical"
    )


class RefusingStore(EmbeddedStore):
    """A store where another grid claims ``taken`` between this grid's plan and its start."""

    taken = ""

    def claim_run(self, run_id: str, fields: dict, **kwargs: Any) -> bool:
        if run_id == self.taken:
            return False
        return super().claim_run(run_id, fields, **kwargs)


def test_a_trial_claimed_by_another_grid_meanwhile_does_not_train_on_ray(tmp_path: Path, monkeypatch) -> None:
    import bench.grid.ray_executor as adapter

    spec_path = tmp_path / "cluster.yaml"
    spec_path.write_text(textwrap.dedent(SPEC).replace(f"epochs: {EPOCHS}", "epochs: 2"))
    spec = load_spec(str(spec_path))
    taken, free = (t.trial_id for t in spec.expand())
    reported: dict[str, list[str]] = {}
    forward = adapter.StoreCallback.on_trial_result

    def seen(self, iteration, trials, trial, result, **info):  # what each trial reported to Tune
        reported.setdefault(trial.config["trial_id"], []).append(result.get("event"))
        return forward(self, iteration, trials, trial, result, **info)

    monkeypatch.setattr(adapter.StoreCallback, "on_trial_result", seen)
    with RefusingStore(tmp_path / "s.sqlite") as store:
        store.taken = taken
        outcome = run_study(spec, store, GridOptions(executor="ray"))
        assert outcome.counts["skipped"] == 1 and outcome.counts["completed"] == 1
        assert store.get_metrics(taken) == [] and len(store.get_metrics(free)) == 2
    assert reported[taken] == ["start"]  # stopped where it said where it runs: it never trained
    assert reported[free] == ["start", "epoch", "checkpoint", "epoch", "checkpoint", "final"]


def test_a_ray_grid_stopped_mid_trial_resumes_in_the_next_grid_from_its_checkpoint(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    spec_path = tmp_path / "cluster.yaml"
    spec_path.write_text(textwrap.dedent(SPEC).replace("norm: [bn, gn]", "norm: [bn]"))
    (trial,) = load_spec(str(spec_path)).expand()
    store_path = tmp_path / "s.sqlite"
    command = [sys.executable, "-m", "bench.cli", "--store", str(store_path), "grid", str(spec_path), "--no-report"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    driver = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, at = time.monotonic() + 180, 0
        while at < 3 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.1)
            try:
                with EmbeddedStore(store_path, read_only=True) as store:
                    at = ((store.get_run(trial.trial_id) or {}).get("checkpoint") or {}).get("epoch") or 0
            except StoreError:
                pass
        assert at >= 3, "the trial never checkpointed epoch 2"
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=60) == 143
    finally:
        if driver.poll() is None:
            driver.kill()
    with EmbeddedStore(store_path) as store:
        stopped = store.get_run(trial.trial_id)
        assert stopped["status"] == "interrupted" and stopped["checkpoint"]["epoch"] >= 3
        outcome = run_study(load_spec(str(spec_path)), store, GridOptions(executor="ray"))
        run = store.get_run(trial.trial_id)
        assert outcome.counts["completed"] == 1
        assert run["history"][-1]["outcome"] == "completed"
        assert run["history"][-1]["resumed_from"] >= stopped["checkpoint"]["epoch"]
        assert [m["epoch"] for m in sorted(store.get_metrics(trial.trial_id), key=lambda m: m["epoch"])] == list(
            range(1, EPOCHS + 1)
        )


def test_kept_weights_on_ray_are_the_run_s_artifact(tmp_path: Path) -> None:
    import torch

    spec_path = tmp_path / "cluster.yaml"
    spec_path.write_text(textwrap.dedent(SPEC).replace(f"epochs: {EPOCHS}", "epochs: 2").replace("[bn, gn]", "[gn]"))
    (trial,) = load_spec(str(spec_path)).expand()
    with EmbeddedStore(tmp_path / "s.sqlite") as store:
        outcome = run_study(load_spec(str(spec_path)), store, GridOptions(executor="ray", keep_checkpoints=True))
        run = store.get_run(trial.trial_id)
    assert outcome.counts["completed"] == 1 and run["checkpoint"] is None
    weights = torch.load(run["artifacts"]["weights"], weights_only=True)
    assert any(k.endswith("weight") for k in weights)
    assert not list((tmp_path / "ray").rglob("state.pt"))  # the state checkpoints went

"""The Ray adapter's wiring, without starting Ray: resources, concurrency, retries, cluster
address, claims, and the callback that forwards trial events to the store."""

from __future__ import annotations

import signal

import pytest

import bench.grid.ray_executor as adapter
from bench.errors import BenchError
from bench.grid import GridOptions, Recorder
from bench.spec import TrialConfig


class FakeTuner:
    seen: dict = {}

    def __init__(self, trainable, *, param_space, tune_config, run_config):
        FakeTuner.seen = {"trainable": trainable, "space": param_space, "tune": tune_config, "run": run_config}

    def fit(self):
        return None


class NullStore:
    kind, location = "null", "-"

    def find_runs(self, filter, **kwargs):
        return []


@pytest.fixture
def no_ray(monkeypatch):
    calls = {}
    monkeypatch.setattr(adapter, "connect", lambda address, runtime_env=None: calls.setdefault("address", address) or True)
    monkeypatch.setattr(adapter, "check_nodes_have_data", lambda datasets, data_dir: calls.setdefault("nodes", datasets))
    monkeypatch.setattr(adapter, "check_nodes_share_storage", lambda storage: calls.setdefault("storage", storage))
    monkeypatch.setattr(adapter.ray, "shutdown", lambda: calls.setdefault("shutdown", True))
    monkeypatch.setattr(adapter.ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(adapter.tune, "Tuner", FakeTuner)
    return calls


def test_resources_concurrency_retries_and_address_reach_ray(no_ray, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    trials = [TrialConfig(dataset="synthetic", seed=s) for s in range(3)]
    options = GridOptions(cpus_per_trial=2, gpus_per_trial=0.25, max_concurrent=3, address="10.0.0.5:6379", retries=3)
    adapter.run_with_tune(trials, Recorder(NullStore(), "s", 3), options)
    assert no_ray["address"] == "10.0.0.5:6379" and no_ray["shutdown"]
    assert no_ray["nodes"] == ["synthetic"]  # on a cluster, every node is checked for the data first
    assert no_ray["storage"] == adapter.ray_storage()  # and for Tune's storage
    request = FakeTuner.seen["trainable"]._resources
    assert request.bundles == [{"CPU": 2.0, "GPU": 0.25}]
    assert FakeTuner.seen["tune"].max_concurrent_trials == 3
    assert FakeTuner.seen["run"].failure_config.max_failures == 3
    assert FakeTuner.seen["space"]["trial_id"] == {"grid_search": [t.trial_id for t in trials]}


def test_a_local_runtime_checks_no_nodes(no_ray, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    adapter.run_with_tune([TrialConfig(dataset="synthetic")], Recorder(NullStore(), "s", 1), GridOptions())
    assert no_ray["address"] is None and "nodes" not in no_ray


def test_ctrl_c_raises_again_after_the_grid(no_ray, monkeypatch):
    """Tune leaves its SIGINT handler installed after a run; the adapter puts the caller's back."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(FakeTuner, "fit", lambda self: signal.signal(signal.SIGINT, lambda *a: None))
    adapter.run_with_tune([TrialConfig(dataset="synthetic")], Recorder(NullStore(), "s", 1), GridOptions())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_ray_storage_is_bench_ray_dir_absolute_or_a_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_RAY_DIR", "s3://bucket/bench")
    assert adapter.ray_storage() == "s3://bucket/bench"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_RAY_DIR", "ray-here")
    assert adapter.ray_storage() == str(tmp_path / "ray-here")


def test_a_trial_whose_claim_was_refused_is_stopped_at_its_first_report(tmp_path):
    from bench.store import EmbeddedStore
    from bench.store.base import stale_before

    with EmbeddedStore(tmp_path / "s.sqlite") as store:
        store.upsert_run("theirs", {"status": "running", "driver": "other:1:x", "heartbeat_at": stale_before(0)})
        recorder = Recorder(store, "s", 2, heartbeat_every=3600)
        gate = adapter.ClaimGate(recorder)
        assert recorder.started("mine") and not recorder.started("theirs")
        assert gate("t1", {"event": "start", "run_id": "theirs"}) is True
        assert gate("t2", {"event": "start", "run_id": "mine"}) is False
        assert gate("t2", {"event": "epoch", "metrics": {}}) is False
        recorder.interrupt_unfinished()


def test_callback_forwards_events_and_survives_pickling():
    import pickle

    class Store:
        kind, location = "mem", "-"

        def __init__(self):
            self.runs, self.metrics, self.steps = {}, [], []

        def get_run(self, run_id):
            return self.runs.get(run_id)

        def upsert_run(self, run_id, fields, study=None):
            self.runs.setdefault(run_id, {}).update(fields)

        def claim_run(self, run_id, fields, *, driver, stale_before, skip_finished=True):
            run = self.runs.setdefault(run_id, {})
            run.update(fields, status="running", driver=driver, attempts=run.get("attempts", 0) + 1)
            return True

        def upsert_metrics(self, docs):
            self.metrics += docs

        def upsert_steps(self, run_id, steps):
            self.steps += [(run_id, s) for s in steps]

    class Trial:
        config = {"trial_id": "abc"}

    store = Store()
    recorder = Recorder(store, "s", 1)
    callback = adapter.StoreCallback(recorder)
    callback.on_trial_start(0, [], Trial())
    callback.on_trial_result(0, [], Trial(), {"event": "steps", "steps": [{"step": 0, "loss": 2.3}, {"step": 1, "loss": 2.2}]})
    callback.on_trial_result(0, [], Trial(), {"event": "epoch", "metrics": {"epoch": 1, "val_acc": 0.5}})
    callback.on_trial_result(0, [], Trial(), {"event": "final", "status": "completed", "summary": {"x": 1}, "error": None, "env": {}})
    assert store.metrics == [{"run_id": "abc", "epoch": 1, "val_acc": 0.5}]
    assert store.steps == [("abc", {"step": 0, "loss": 2.3}), ("abc", {"step": 1, "loss": 2.2})]
    assert store.runs["abc"]["status"] == "completed" and store.runs["abc"]["attempts"] == 1
    assert recorder.counts["completed"] == 1 and not recorder.active
    # Tune pickles its run config; the copy drops the driver-only recorder
    assert pickle.loads(pickle.dumps(callback)).recorder is None


@pytest.mark.parametrize("cluster, expected", [({"CPU": 8.0}, {"CPU": 1.0}), ({"CPU": 8.0, "GPU": 2.0}, {"CPU": 1.0, "GPU": 0.25})])
def test_gpus_per_trial_by_default_shares_a_gpu_when_the_cluster_has_one(no_ray, monkeypatch, cluster, expected):
    monkeypatch.setattr(adapter.ray, "cluster_resources", lambda: cluster)
    adapter.run_with_tune([TrialConfig(dataset="synthetic")], Recorder(NullStore(), "s", 1), GridOptions())
    assert FakeTuner.seen["trainable"]._resources.bundles == [expected]
    adapter.run_with_tune([TrialConfig(dataset="synthetic")], Recorder(NullStore(), "s", 1), GridOptions(gpus_per_trial=1))
    assert FakeTuner.seen["trainable"]._resources.bundles == [{"CPU": 1.0, "GPU": 1.0}]
